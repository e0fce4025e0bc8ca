"""Finding ``runsc``, what it can do on this host, and its command lines.

The platform (how the Sentry intercepts the workload's system calls) is chosen once per runsc
version and cached under the run root: systrap, then kvm, then ptrace, whichever this runsc
knows and actually starts a sandbox here.  KVM is skipped without a probe on PVM hosts (their
/dev/kvm only runs PVM guests; runsc's kvm platform hangs there) -- a probe is bounded anyway.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from isobox import paths
from isobox.errors import InvalidArgument

INSTALL_HINT = "apt-get install runsc"
PLATFORM_ORDER = ("systrap", "kvm", "ptrace")
PROBE_TIMEOUT = 8.0


def binary() -> str | None:
    return os.environ.get("ISOBOX_RUNSC") or shutil.which("runsc")


def require() -> str:
    found = binary()
    if found is None:
        raise InvalidArgument("the gvisor isolation level needs runsc, which is not installed",
                              hint=INSTALL_HINT)
    return found


@functools.cache
def version(path: str) -> str:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    first = out.splitlines()[0] if out else ""
    return first.removeprefix("runsc version ").strip() or "unknown"


def known_platforms(path: str) -> list[str]:
    """The platforms this runsc build names in its ``-platform`` flag's help."""
    try:
        done = subprocess.run([path, "flags"], capture_output=True, text=True, timeout=10)
        text = done.stdout + done.stderr  # this runsc prints its flags to stderr
    except (OSError, subprocess.TimeoutExpired):
        text = ""
    match = re.search(r"-platform string\s*\n\s*(.*)", text)
    names = re.findall(r"\b(systrap|kvm|ptrace)\b", match.group(1)) if match else []
    return [p for p in PLATFORM_ORDER if p in names] or ["ptrace"]


def root_dir() -> Path:
    """runsc's ``--root``: its state files, under isobox's run root."""
    return paths.run_root() / "runsc"


@dataclass
class PlatformChoice:
    platform: str
    tried: dict[str, str]  # platform -> "ok" or why not

    def to_dict(self) -> dict[str, object]:
        return {"platform": self.platform, "tried": self.tried}


def _kvm_unusable() -> str | None:
    if not os.path.exists("/dev/kvm"):
        return "no /dev/kvm"
    if os.path.isdir("/sys/module/kvm_pvm"):
        return "/dev/kvm is PVM (kvm_pvm): it runs PVM guests only"
    return None


def probe(path: str, platform: str) -> str:
    """Start a throwaway sandbox (``runsc do true``) on ``platform``: "ok" or the reason not."""
    argv = [path, "--root", str(root_dir() / "probe"), "--network=none", f"--platform={platform}",
            "--ignore-cgroups", "do", "/bin/true"]
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True, cwd="/")
    except OSError as exc:
        return f"cannot run runsc: {exc.strerror}"
    try:
        _, err = proc.communicate(timeout=PROBE_TIMEOUT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return f"a sandbox did not start within {PROBE_TIMEOUT:.0f} s"
    if proc.returncode != 0:
        lines = err.decode(errors="replace").strip().splitlines()
        return lines[-1][:200] if lines else f"exit code {proc.returncode}"
    return "ok"


def choose_platform(path: str) -> PlatformChoice:
    """The best platform that works here (cached per runsc version; ISOBOX_RUNSC_PLATFORM forces one)."""
    forced = os.environ.get("ISOBOX_RUNSC_PLATFORM")
    if forced:
        return PlatformChoice(forced, {forced: "forced by ISOBOX_RUNSC_PLATFORM"})
    cache = root_dir() / "platform.json"
    ver = version(path)
    with contextlib.suppress(OSError, ValueError, KeyError):
        data = json.loads(cache.read_text())
        if data["version"] == ver and data["binary"] == path:
            return PlatformChoice(str(data["platform"]), dict(data["tried"]))
    tried: dict[str, str] = {}
    chosen = "ptrace"
    for platform in known_platforms(path):
        why = _kvm_unusable() if platform == "kvm" else None
        tried[platform] = why or probe(path, platform)
        if tried[platform] == "ok":
            chosen = platform
            break
    root_dir().mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(OSError):
        cache.write_text(json.dumps({"version": ver, "binary": path, "platform": chosen, "tried": tried}))
    shutil.rmtree(root_dir() / "probe", ignore_errors=True)
    return PlatformChoice(chosen, tried)


def global_flags(path: str, platform: str, network: str) -> list[str]:
    """Flags before the subcommand, the same for run, exec, kill and delete of one sandbox."""
    # isobox puts the whole sandbox (runsc, Sentry, gofer) into its own cgroup before exec:
    # the limits and stats are the container level's, on v1 and v2 alike.
    net = "none" if network == "none" else "sandbox"
    return [path, "--root", str(root_dir()), f"--platform={platform}", f"--network={net}", "--ignore-cgroups"]


def kill(path: str, container_id: str, sig: int) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([path, "--root", str(root_dir()), "kill", container_id, str(sig)],
                          capture_output=True, timeout=30)


def delete(path: str, container_id: str, root: str | None = None) -> None:
    """``runsc delete --force`` and whatever state files it leaves (idempotent)."""
    state = Path(root) if root else root_dir()
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        subprocess.run([path, "--root", str(state), "delete", "--force", container_id],
                       capture_output=True, timeout=30)
    with contextlib.suppress(OSError):
        for entry in state.iterdir():
            if container_id in entry.name:
                with contextlib.suppress(OSError):
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
