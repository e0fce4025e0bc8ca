"""The OCI bundle runsc runs: ``config.json`` written from the WorkloadSpec and the image.

The root is the image's layers under an overlay with the workload's own upper directory, as
for a container; the monitor mounts it in a private mount namespace (``monitor.py``), so it
vanishes with the sandbox and can never leak onto the host.  Users are resolved against the
image's passwd and group files, read from the layers (a symlinked file is not followed: it
could point anywhere on the host).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from isobox.errors import EXIT_CANNOT_INVOKE, EXIT_NOT_FOUND
from isobox.runtimes.container.config import DEFAULT_PATH, MASKED_PATHS, READONLY_PATHS, ProcessConfig
from isobox.runtimes.container.process import Identity, resolve_identity
from isobox.spec import WorkloadSpec

OCI_VERSION = "1.0.2"
CPU_PERIOD_US = 100_000


def _image_path(dirs: list[str], path: str) -> str | None:
    """The topmost copy of ``path`` among ``dirs`` (upper first), if a regular file or link."""
    rel = path.lstrip("/")
    for top in dirs:
        candidate = os.path.join(top, rel)
        if os.path.lexists(candidate):
            return candidate
    return None


def layer_reader(dirs: list[str]) -> Any:
    def read_db(path: str) -> list[list[str]]:
        found = _image_path(dirs, path)
        if found is None or os.path.islink(found):
            return []
        try:
            with open(found, encoding="utf-8", errors="replace") as fh:
                return [ln.rstrip("\n").split(":") for ln in fh if ln.strip() and not ln.startswith("#")]
        except OSError:
            return []

    return read_db


def identity(dirs: list[str], user: str) -> Identity:
    return resolve_identity(user, layer_reader(dirs))


def check_executable(dirs: list[str], argv0: str, env: dict[str, str]) -> tuple[int, str] | None:
    """Docker's 127/126 for a command the image does not have, before a sandbox is started
    (runsc would only fail with its own 128 and a long message)."""
    if "/" in argv0:
        candidates = [argv0 if argv0.startswith("/") else "/" + argv0]
    else:
        candidates = [os.path.join(d, argv0) for d in env.get("PATH", DEFAULT_PATH).split(":") if d]
    for candidate in candidates:
        found = _image_path(dirs, candidate)
        if found is None:
            continue
        try:
            mode = os.lstat(found).st_mode
        except OSError:
            continue
        if stat.S_ISLNK(mode):
            return None  # resolved inside the sandbox
        if stat.S_ISREG(mode) and mode & 0o111:
            return None
        if "/" in argv0:
            return EXIT_CANNOT_INVOKE, f'exec: "{argv0}": permission denied'
    where = "in $PATH" if "/" not in argv0 else ""
    return EXIT_NOT_FOUND, f'exec: "{argv0}": executable file not found {where}'.rstrip()


def _caps(names: list[str]) -> list[str]:
    return [f"CAP_{name}" for name in names]


def config(spec: WorkloadSpec, proc: ProcessConfig, ident: Identity, hostname: str, rootfs: str) -> dict[str, Any]:
    caps = _caps(proc.caps)
    # Docker's semantics: a non-root user keeps the bounding set but holds no effective caps.
    held = caps if ident.uid == 0 else []
    env = {"PATH": DEFAULT_PATH, "HOME": ident.home, "HOSTNAME": hostname, **proc.env}
    if proc.tty:
        env.setdefault("TERM", "xterm")
    process: dict[str, Any] = {
        "terminal": proc.tty,
        "user": {"uid": ident.uid, "gid": ident.gid,
                 "additionalGids": [g for g in ident.groups if g != ident.gid]},
        "args": proc.argv,
        "env": [f"{k}={v}" for k, v in env.items()],
        "cwd": proc.cwd,
        "capabilities": {"bounding": caps, "effective": held, "permitted": held, "inheritable": [],
                         "ambient": []},
        "noNewPrivileges": proc.no_new_privs,
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1048576, "soft": 1048576}],
    }
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime",
                                                                              "mode=755", "size=65536k"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
    ]
    for volume in spec.mounts:
        options = ["rbind", "ro" if volume.readonly else "rw"]
        mounts.append({"destination": volume.target, "type": "bind", "source": volume.source,
                       "options": options})
    return {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": rootfs, "readonly": spec.read_only},
        "hostname": hostname,
        "mounts": mounts,
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
            "resources": _resources(spec),
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
        },
    }


def _resources(spec: WorkloadSpec) -> dict[str, Any]:
    """For the record (and for runsc's view of its limits): isobox's own cgroup enforces them."""
    res = spec.resources
    out: dict[str, Any] = {}
    if res.memory:
        out["memory"] = {"limit": res.memory}
    if res.cpus:
        out["cpu"] = {"quota": round(res.cpus * CPU_PERIOD_US), "period": CPU_PERIOD_US}
    if res.pids_limit:
        out["pids"] = {"limit": res.pids_limit}
    return out


def write(bundle: Path, cfg: dict[str, Any]) -> None:
    bundle.mkdir(parents=True, exist_ok=True)
    tmp = bundle / "config.json.tmp"
    tmp.write_text(json.dumps(cfg, indent=1))
    os.replace(tmp, bundle / "config.json")
