"""VM root disks: a read-only ext4 base per image, built once, and a qcow2 overlay per VM.

The base is ``mkfs.ext4 -d`` of the image's merged layers (an overlayfs mount of them, read
only, so whiteouts are applied by the kernel exactly as a container sees them), on a sparse
file with room to grow: the overlay is what a VM writes to, the base is never opened writable.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from isobox import paths
from isobox.errors import RuntimeFailure
from isobox.images.store import Image

HEADROOM = 1 << 30  # free space in every base filesystem (sparse: costs nothing until written)


def disks_dir() -> Path:
    return paths.state_root() / "vmdisks"


def base_path(image: Image) -> Path:
    return disks_dir() / f"{image.id.removeprefix('sha256:')[:32]}.ext4"


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeFailure(f"{argv[0]} failed: {done.stderr.strip()[-400:]}")


def _tree_size(root: Path) -> int:
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        total += 4096 * (len(dirnames) + 1)
        for name in filenames:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size + 4096
    return total


@contextlib.contextmanager
def _merged(image: Image) -> Iterator[Path]:
    """The image's layers as one read-only tree."""
    if len(image.layers) == 1:
        yield image.layers[0]
        return
    with tempfile.TemporaryDirectory(dir=disks_dir()) as tmp:
        lower = ":".join(str(p) for p in reversed(image.layers))
        _run(["mount", "-t", "overlay", "overlay", "-o", f"ro,lowerdir={lower}", tmp])
        try:
            yield Path(tmp)
        finally:
            _run(["umount", tmp])


def ensure_base(image: Image) -> Path:
    """The image's ext4 base disk, built on first use (under a lock: concurrent runs share it)."""
    path = base_path(image)
    if path.exists():
        return path
    disks_dir().mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(disks_dir() / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            return path
        tmp = path.with_suffix(".tmp")
        with _merged(image) as tree:
            size = _tree_size(tree) * 2 + HEADROOM
            with open(tmp, "wb") as fh:
                fh.truncate(size)
            try:
                _run(["mkfs.ext4", "-q", "-F", "-L", "isobox-root", "-E", "root_owner=0:0",
                      "-d", str(tree), str(tmp)])
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        os.chmod(tmp, 0o400)
        os.rename(tmp, path)
    return path


def _overlay_template(base: Path, backing_format: str) -> Path:
    """An empty overlay of ``base``, made once: a copy of it (~0.6 ms) is a new VM's root disk
    without a run of qemu-img (~15 ms) on the way to its boot.  Named for the base (``collect``
    removes it with it) and the base file's identity, so a rebuilt base never gets an old one."""
    st = base.stat()
    stamp = hashlib.sha256(f"{backing_format}\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    template = disks_dir() / "overlays" / f"{base.stem}-{stamp.hexdigest()[:16]}.qcow2"
    if not template.exists():
        template.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = template.with_name(f"{template.name}.{os.getpid()}.tmp")
        try:
            _run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", backing_format, "-b", str(base), str(tmp)])
            os.rename(tmp, template)
        finally:
            tmp.unlink(missing_ok=True)
    return template


def create_overlay(base: Path, overlay: Path, backing_format: str = "raw") -> None:
    """A qcow2 whose backing file is the base: the VM's writable root disk."""
    overlay.unlink(missing_ok=True)
    if base.parent != disks_dir():  # an imported disk (firmware boot): not worth a template
        _run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", backing_format, "-b", str(base), str(overlay)])
        return
    shutil.copyfile(_overlay_template(base, backing_format), overlay)
    os.chmod(overlay, 0o600)


def collect(image_ids: set[str]) -> None:
    """Remove the bases (and their overlay templates) of images that are gone: ``image rm``
    and ``image prune`` leave no VM disk behind."""
    root = disks_dir()
    if not root.is_dir():
        return
    keep = {i.removeprefix("sha256:")[:32] for i in image_ids}
    with open(root / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for base in root.glob("*.ext4"):
            if base.stem not in keep:
                base.unlink(missing_ok=True)
        for template in root.glob("overlays/*.qcow2"):
            if template.name.split("-", 1)[0] not in keep:
                template.unlink(missing_ok=True)


def convert_to_qcow2(source: Path, target: Path, source_format: str = "raw") -> None:
    """A qcow2 copy of ``source`` (same virtual size), made under a temporary name."""
    tmp = target.with_name(target.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        _run(["qemu-img", "convert", "-q", "-f", source_format, "-O", "qcow2", str(source), str(tmp)])
        os.chmod(tmp, 0o600)
        os.rename(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def create_blank(disk: Path, size: str) -> None:
    """An empty qcow2 of ``size`` (qemu-img's syntax, e.g. ``16G``): allocated as it is written."""
    disk.unlink(missing_ok=True)
    _run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), size])


def remove_bases() -> None:
    shutil.rmtree(disks_dir(), ignore_errors=True)
