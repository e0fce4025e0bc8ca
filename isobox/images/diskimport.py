"""``image import-disk``: a foreign disk image (raw or qcow2) or an ISO as a VM-only image.

The file is probed (``qemu-img info --output json``; an ISO by its ISO9660 ``CD001`` signature
at 0x8001), refused when it is not a self-contained disk (a qcow2 with a backing file or an
external data file would make the store depend on a file outside it), then brought into the
store's staging directory: raw and qcow2 through ``qemu-img convert -O qcow2`` (which also reads
the whole image, so a corrupt qcow2 fails here), ISOs copied as they are.  The result is one
content-addressed blob, listed as the manifest's only "layer" with an isobox media type, so that
prune and rm treat it like any other blob; the image has no unpacked layers and a ``disk`` entry
in its row.  ``ImageStore.store_disk`` renames it into place under the store's lock.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from isobox.errors import InvalidArgument, RuntimeFailure
from isobox.images.store import Image, ImageStore, Progress

ISO_MAGIC_OFFSET = 0x8001
ISO_MAGIC = b"CD001"
MT_DISK_QCOW2 = "application/vnd.isobox.disk.qcow2"
MT_DISK_ISO = "application/vnd.isobox.disk.iso9660"
# Files qemu-img calls "raw" that are certainly no disk: archives, executables, compressed data.
NOT_A_DISK = ((0, b"\x1f\x8b"), (0, b"\xfd7zXZ\x00"), (0, b"BZh"), (0, b"(\xb5/\xfd"), (0, b"PK\x03\x04"),
              (0, b"\x7fELF"), (257, b"ustar"))
SUPPORTED = ("raw", "qcow2")


def probe(path: Path) -> dict[str, Any]:
    """``{"kind": "iso"|"disk", "format": ..., "virtual_size": ...}``, or InvalidArgument."""
    try:
        st = path.stat()
        with open(path, "rb") as f:
            head = f.read(ISO_MAGIC_OFFSET + len(ISO_MAGIC))
    except FileNotFoundError:
        raise InvalidArgument(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InvalidArgument(f"{path}: is a directory, not a disk image") from None
    except OSError as exc:
        raise InvalidArgument(f"{path}: cannot read it: {exc.strerror}") from None
    if not path.is_file():
        raise InvalidArgument(f"{path}: not a regular file")
    if st.st_size == 0:
        raise InvalidArgument(f"{path}: empty file, not a disk image")
    if head[ISO_MAGIC_OFFSET:ISO_MAGIC_OFFSET + len(ISO_MAGIC)] == ISO_MAGIC:
        return {"kind": "iso", "format": "iso9660", "virtual_size": st.st_size}
    info = _qemu_img_info(path)
    fmt = str(info.get("format") or "")
    if info.get("backing-filename") or info.get("full-backing-filename"):
        raise InvalidArgument(f"{path}: a {fmt} image with a backing file ({info.get('backing-filename')}) "
                              "is not self-contained",
                              hint="flatten it first: qemu-img convert -O qcow2 FILE flat.qcow2")
    data = (info.get("format-specific") or {}).get("data") or {}
    if data.get("data-file"):
        raise InvalidArgument(f"{path}: a qcow2 image with an external data file is not self-contained",
                              hint="flatten it first: qemu-img convert -O qcow2 FILE flat.qcow2")
    if data.get("corrupt"):
        raise InvalidArgument(f"{path}: qemu-img reports the qcow2 image as corrupt",
                              hint="check it with: qemu-img check FILE")
    if fmt not in SUPPORTED:
        raise InvalidArgument(f"{path}: {fmt or 'unknown'} images are not supported, only raw, qcow2 and ISO",
                              hint="convert it: qemu-img convert -O qcow2 FILE disk.qcow2")
    if fmt == "raw":
        if any(head[off:off + len(magic)] == magic for off, magic in NOT_A_DISK):
            raise InvalidArgument(f"{path}: not a disk image (an archive, executable or compressed file)")
        if st.st_size % 512:
            raise InvalidArgument(f"{path}: not a disk image: {st.st_size} bytes is not a whole number of "
                                  "512-byte sectors")
    size = int(info.get("virtual-size") or 0)
    if size <= 0:
        raise InvalidArgument(f"{path}: not a disk image (no virtual size)")
    return {"kind": "disk", "format": fmt, "virtual_size": size}


def import_disk(store: ImageStore, source: Path, name: str, progress: Progress) -> Image:
    """Register ``source`` under the reference ``name`` as a VM-only image."""
    source = Path(os.path.abspath(source))
    facts = probe(source)
    progress(f"{facts['kind']} image, {facts['format']}, virtual size {facts['virtual_size']} bytes")
    with store.staging() as stage:
        target = stage / "disk"
        if facts["kind"] == "iso":
            progress("copying the ISO into the store")
            shutil.copyfile(source, target)
            media_type = MT_DISK_ISO
        else:
            progress(f"converting {facts['format']} to qcow2")
            done = subprocess.run(["qemu-img", "convert", "-q", "-f", facts["format"], "-O", "qcow2",
                                   str(source), str(target)], capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise InvalidArgument(f"{source}: cannot read the {facts['format']} image: "
                                      f"{_last_line(done.stderr)}", hint="check it with: qemu-img check FILE")
            media_type = MT_DISK_QCOW2
        disk = {**facts, "stored_format": "qcow2" if facts["kind"] == "disk" else "iso9660",
                "source": str(source), "media_type": media_type}
        return store.store_disk(target, disk, name, progress)


def _qemu_img_info(path: Path) -> dict[str, Any]:
    if shutil.which("qemu-img") is None:
        raise RuntimeFailure("importing disk images needs qemu-img", hint="apt-get install qemu-utils")
    done = subprocess.run(["qemu-img", "info", "--output", "json", str(path)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise InvalidArgument(f"{path}: not a readable disk image: {_last_line(done.stderr)}")
    try:
        info = json.loads(done.stdout)
    except ValueError:
        raise InvalidArgument(f"{path}: qemu-img info gave no answer about it") from None
    if not isinstance(info, dict):
        raise InvalidArgument(f"{path}: qemu-img info gave no answer about it")
    return info


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][-300:] if lines else "unknown error"
