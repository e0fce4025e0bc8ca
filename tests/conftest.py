"""Shared fixtures: a private isobox (state root, run root, cgroup parent, daemon) per session.

Integration tests drive the real CLI against a real daemon; nothing is mocked.  Roots live
under a short /tmp path because attach sockets must fit sockaddr_un.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

VENV_BIN = Path(sys.executable).parent


def require(*tools: str) -> None:
    """Fail, not skip, when a tool that scripts/setup.sh installs is missing: a broken set-up
    must not pass as a green run with tests quietly left out."""
    missing = [t for t in tools if shutil.which(t) is None and not Path(t).exists()]
    assert not missing, f"missing {', '.join(missing)}: scripts/setup.sh installs it; run it"


@dataclass
class Isobox:
    base: Path
    env: dict[str, str]

    @property
    def root(self) -> Path:
        return Path(self.env["ISOBOX_ROOT"])

    @property
    def run_root(self) -> Path:
        return Path(self.env["ISOBOX_RUN"])

    @property
    def cgroup_parent(self) -> str:
        return self.env["ISOBOX_CGROUP_PARENT"]

    def cli(self, *args: str, input: bytes | str | None = None, timeout: float = 120,
            check: bool = False) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(VENV_BIN / "isobox"), *args], env=self.env, capture_output=True, timeout=timeout,
            input=input.decode() if isinstance(input, bytes) else input, text=True,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"isobox {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
        return proc


def _make_env(base: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        ISOBOX_ROOT=str(base / "root"),
        ISOBOX_RUN=str(base / "run"),
        ISOBOX_CGROUP_PARENT=f"isobox-test-{base.name}",
    )
    env.pop("ISOBOX_SOCKET", None)
    return env


def _socket_up(path: Path) -> bool:
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        sock.close()


@pytest.fixture(scope="session")
def isobox() -> Iterator[Isobox]:
    """A running private daemon with the busybox image built."""
    if os.geteuid() != 0:
        pytest.skip("integration tests need root (namespaces, cgroups, mounts)")
    base = Path(f"/tmp/ibx-{secrets.token_hex(4)}")
    base.mkdir(mode=0o700)
    env = _make_env(base)
    log = open(base / "isoboxd.log", "ab")  # noqa: SIM115
    daemon = subprocess.Popen([str(VENV_BIN / "isoboxd")], env=env, stdout=log, stderr=log,
                              start_new_session=True)
    box = Isobox(base, env)
    deadline = time.monotonic() + 30
    while not _socket_up(box.run_root / "isobox.sock"):
        if daemon.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"isoboxd did not start: {(base / 'isoboxd.log').read_text()[-2000:]}")
        time.sleep(0.05)
    box.cli("image", "build", "busybox", check=True, timeout=300)
    box.daemon = daemon  # type: ignore[attr-defined]
    try:
        yield box
    finally:
        box.cli("rm", "-f", *[line for line in box.cli("ps", "-aq").stdout.split() if line])
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(15)
        except subprocess.TimeoutExpired:
            daemon.kill()
        log.close()
        _remove_cgroup_parent(box.cgroup_parent)
        shutil.rmtree(base, ignore_errors=True)


def _remove_cgroup_parent(parent: str) -> None:
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        path = hierarchy / parent
        if path.is_dir():
            for child in sorted(path.rglob("*"), reverse=True):
                if child.is_dir():
                    child.rmdir()
            path.rmdir()
