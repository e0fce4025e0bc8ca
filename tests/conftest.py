"""Shared fixtures: a private isobox (state root, run root, cgroup parent, daemon) per session.

Integration tests drive the real CLI against a real daemon; nothing is mocked.  Roots live
under a short /tmp path because attach sockets must fit sockaddr_un.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from isobox.runtimes.container import syscalls as sc

VENV_BIN = Path(sys.executable).parent


TEST_NETNS = f"ibxtest-{os.getpid()}"
TEST_NETNS_PATH = f"/run/netns/{TEST_NETNS}"


def pytest_configure(config: pytest.Config) -> None:
    """The session's daemon lives in a network namespace of its own (``ISOBOX_NETNS``): the
    bridges, nftables table and DNS servers tests make are that namespace's, and go with it.
    (The tests themselves stay in the host's: image builds fetch Debian packages from there.)"""
    if os.geteuid() != 0:
        return
    subprocess.run(["ip", "netns", "add", TEST_NETNS], check=True)
    subprocess.run(["ip", "-n", TEST_NETNS, "link", "set", "lo", "up"], check=True)


def pytest_unconfigure(config: pytest.Config) -> None:
    if os.path.exists(TEST_NETNS_PATH):
        subprocess.run(["ip", "netns", "delete", TEST_NETNS], check=False)


T = TypeVar("T")


def in_netns(path: str, fn: Callable[[], T]) -> T:
    """``fn()`` in a thread that joined the network namespace at ``path`` (sockets it makes stay
    there); the test process itself never moves."""
    result: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                sc.setns(fd, sc.CLONE_NEWNET)
            finally:
                os.close(fd)
            result.append(fn())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


@contextlib.contextmanager
def private_netns(tag: str) -> Iterator[str]:
    """A network namespace for a second daemon (``ISOBOX_NETNS``): a daemon owns its namespace's
    isobox bridges and nftables table, so two must never share one."""
    name = f"ibx{tag}-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    try:
        yield f"/run/netns/{name}"
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def stop_dns(run_root: Path) -> None:
    """The networks' dnsmasq processes outlive daemons by design; a test's go with its roots."""
    from isobox.net import dns

    dns.stop_all(run_root)


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
    env["ISOBOX_NETNS"] = TEST_NETNS_PATH
    return env


def _socket_up(path: Path) -> bool:
    """The daemon answers /_ping: a connect alone also succeeds on the listening socket of a
    daemon just killed -9 whose exit the kernel has not finished."""
    from isobox.cli.client import ping

    return ping(str(path))


@pytest.fixture(scope="session")
def isobox() -> Iterator[Isobox]:
    """A running private daemon with the busybox image built."""
    if os.geteuid() != 0:
        pytest.skip("integration tests need root (namespaces, cgroups, mounts)")
    base = Path(f"/tmp/ibx-{secrets.token_hex(4)}")
    base.mkdir(mode=0o711)  # traversable: each network's dnsmasq (user nobody) reads its hosts file below
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
        stop_dns(box.run_root)
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


def _stop_autostarted(run_root: Path) -> None:
    """A daemon the CLI started by itself (after a test killed the one it started) is not among
    the fixture's processes: stop the one the pid file names, if it still serves these roots."""
    try:
        pid = int((run_root / "isobox.pid").read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return
    if str(run_root).encode() not in cmdline:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.fixture
def own_daemon(isobox: Isobox, tmp_path: Path) -> Iterator[Isobox]:
    """A second daemon on its own roots that this test may kill -9."""
    env = dict(isobox.env)
    base = f"/tmp/ibx-own-{os.getpid()}"
    env.update(ISOBOX_ROOT=f"{base}/root", ISOBOX_RUN=f"{base}/run",
               ISOBOX_CGROUP_PARENT=isobox.cgroup_parent + "-own")
    netns = private_netns("own")
    env["ISOBOX_NETNS"] = netns.__enter__()
    box = Isobox(isobox.base, env)
    procs: list[subprocess.Popen] = []

    def start() -> subprocess.Popen:
        log = open(tmp_path / "isoboxd.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen([str(VENV_BIN / "isoboxd")], env=env, stdout=log, stderr=log,
                                start_new_session=True)
        deadline = time.monotonic() + 30
        while not _socket_up(box.run_root / "isobox.sock"):
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "isoboxd.log").read_text()
            time.sleep(0.05)
        procs.append(proc)
        return proc

    box.start_daemon = start  # type: ignore[attr-defined]
    start()
    box.cli("image", "build", "busybox", check=True)
    yield box
    box.cli("rm", "-f", *box.cli("ps", "-aq").stdout.split())
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(15)
    _stop_autostarted(box.run_root)
    import shutil

    _remove_cgroup_parent(env["ISOBOX_CGROUP_PARENT"])
    stop_dns(box.run_root)
    netns.__exit__(None, None, None)
    shutil.rmtree(base, ignore_errors=True)
