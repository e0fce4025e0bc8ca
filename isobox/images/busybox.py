"""The busybox image, made from Debian's busybox-static with no network.

The root filesystem is the static binary at /bin/busybox, one symlink per applet at the path
``busybox --list-full`` gives it, a minimal /etc (root, nobody and an unprivileged ``user``)
and the empty directories a container runtime mounts over.  Nothing depends on the clock, so
the same busybox binary always gives the same layer and the same image id.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from isobox.errors import RuntimeFailure
from isobox.images.store import ImageConfig

BUSYBOX = Path("/bin/busybox")
HINT_INSTALL = "apt-get install busybox-static"

PASSWD = """\
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
user:x:1000:1000::/home/user:/bin/sh
"""
GROUP = """\
root:x:0:
tty:x:5:
user:x:1000:
nogroup:x:65534:
"""

# (path, mode, uid, gid): directories the image has besides those the applets need.
DIRECTORIES = (
    ("bin", 0o755, 0, 0),
    ("dev", 0o755, 0, 0),
    ("etc", 0o755, 0, 0),
    ("home", 0o755, 0, 0),
    ("home/user", 0o755, 1000, 1000),
    ("proc", 0o555, 0, 0),
    ("root", 0o700, 0, 0),
    ("run", 0o755, 0, 0),
    ("sbin", 0o755, 0, 0),
    ("sys", 0o555, 0, 0),
    ("tmp", 0o1777, 0, 0),
    ("usr", 0o755, 0, 0),
    ("usr/bin", 0o755, 0, 0),
    ("usr/sbin", 0o755, 0, 0),
    ("var", 0o755, 0, 0),
    ("var/tmp", 0o1777, 0, 0),
)
# (path, content): small files, mode 0644.  hosts and resolv.conf are mount points for the runtime.
FILES = (
    ("etc/passwd", PASSWD),
    ("etc/group", GROUP),
    ("etc/hosts", ""),
    ("etc/resolv.conf", ""),
)

_APPLET_PATH = re.compile(r"(?:usr/)?s?bin/[A-Za-z0-9_.\[\]+-]+")


def find_binary(path: Path = BUSYBOX) -> Path:
    if not path.is_file():
        raise RuntimeFailure(f"{path} not found: the busybox image is made from busybox-static", hint=HINT_INSTALL)
    return path


def version(binary: Path) -> str:
    """The banner's first line, e.g. ``BusyBox v1.35.0 (Debian 1:1.35.0-4+deb12u1+b1) multi-call binary.``"""
    out = _run(binary, [])
    return out.splitlines()[0].strip() if out else "BusyBox"


def applets(binary: Path) -> list[str]:
    """The applets' install paths, relative (``bin/sh``, ``usr/bin/[``), minus the binary itself.

    ``linuxrc`` is left out: it is the initrd's init, meaningless in a container root."""
    found = []
    for line in _run(binary, ["--list-full"]).splitlines():
        rel = line.strip()
        if not rel or rel == "bin/busybox" or rel == "linuxrc":
            continue
        if not _APPLET_PATH.fullmatch(rel) or ".." in rel:
            raise RuntimeFailure(f"{binary} --list-full gave an unexpected applet path: {rel!r}")
        found.append(rel)
    if "bin/sh" not in found:
        raise RuntimeFailure(f"{binary} has no sh applet", hint=HINT_INSTALL)
    return sorted(set(found))


def populate(root: Path, binary: Path, progress: Callable[[str], None]) -> ImageConfig:
    """Fill the empty directory ``root`` with the busybox root filesystem; return the image config."""
    banner = version(binary)
    progress(f"using {binary}: {banner}")
    progress("creating directories")
    os.chmod(root, 0o755)
    _own(root, 0, 0)
    for rel, mode, uid, gid in DIRECTORIES:
        _mkdir(root / rel, mode, uid, gid)

    progress(f"copying {binary} ({binary.stat().st_size / (1 << 20):.1f} MiB)")
    target = root / "bin" / "busybox"
    shutil.copyfile(binary, target)
    os.chmod(target, 0o755)
    _own(target, 0, 0)

    names = applets(binary)
    progress(f"linking {len(names)} applets to /bin/busybox")
    for rel in names:
        link = root / rel
        if not link.parent.is_dir():
            _mkdir(link.parent, 0o755, 0, 0)
        os.symlink("/bin/busybox", link)
        _own(link, 0, 0)

    progress("writing /etc: passwd, group, hosts, resolv.conf")
    for rel, content in FILES:
        path = root / rel
        path.write_text(content)
        os.chmod(path, 0o644)
        _own(path, 0, 0)

    match = re.search(r"v(\d+(?:\.\d+)+)", banner)
    labels = {"org.opencontainers.image.title": "busybox", "org.opencontainers.image.description": banner}
    if match:
        labels["org.opencontainers.image.version"] = match.group(1)
    return ImageConfig(cmd=("sh",), labels=labels)


def _mkdir(path: Path, mode: int, uid: int, gid: int) -> None:
    path.mkdir(exist_ok=True)
    os.chmod(path, mode)  # mkdir's mode goes through the umask; chmod does not
    _own(path, uid, gid)


def _own(path: Path, uid: int, gid: int) -> None:
    # Only root can give files away; an unprivileged build keeps its own ids (and gets another image id).
    if os.geteuid() == 0:
        os.lchown(path, uid, gid)


def _run(binary: Path, args: list[str]) -> str:
    try:
        done = subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeFailure(f"cannot run {binary}: {exc}", hint=HINT_INSTALL) from exc
    return done.stdout
