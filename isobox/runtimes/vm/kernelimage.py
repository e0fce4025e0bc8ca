"""The guest kernel as QEMU loads it, and what QEMU gives back once the guest has booted.

Debian ships the kernel as a bzImage: a decompressor with the compressed kernel as its payload.
QEMU reads a bzImage whole onto its heap for fw_cfg and keeps it there for a reset (~14 MiB of
anonymous memory per VM, which nothing can reclaim without swap), and under TCG the guest then
spends ~0.4 s unpacking it.  Debian's cloud kernel is also an ELF with Xen's PVH entry note,
which QEMU's microvm boots directly: we unpack the payload once into the cache (``pvh_elf``).
QEMU then maps that file and copies its segments into guest RAM at reset; the mapping's pages
are clean page cache, which ``release`` hands back once the guest runs (QEMU reads them again
on a reset).  The initramfs, which QEMU maps as well, goes the same way.
"""

from __future__ import annotations

import bz2
import lzma
import os
import struct
import subprocess
import zlib
from pathlib import Path

from isobox.errors import RuntimeFailure
from isobox.runtimes.container import syscalls as sc

_HDRS = b"HdrS"  # the x86 boot protocol's setup header magic, at 0x202
XEN_ELFNOTE_PHYS32_ENTRY = 18  # the PVH entry point (xen/include/public/elfnote.h)

# Payload compressions the kernel's own decompressors know, by their first bytes.
_MAGICS = (
    (b"\x1f\x8b", "gzip"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x02\x21\x4c\x18", "lz4"),  # LZ4's legacy frame, what the kernel writes
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"BZh", "bzip2"),
    (b"\x5d\x00\x00", "lzma"),
)


def payload(bzimage: bytes) -> tuple[str, bytes]:
    """(compression, compressed kernel) of a bzImage; RuntimeFailure if it is none."""
    if len(bzimage) < 0x250 or bzimage[0x202:0x206] != _HDRS:
        raise RuntimeFailure("not a bzImage (no setup header)")
    setup_sects = bzimage[0x1F1] or 4  # 0 means 4, as the boot protocol says
    offset, length = struct.unpack_from("<II", bzimage, 0x248)
    start = (setup_sects + 1) * 512 + offset
    data = bzimage[start:start + length]
    if not length or len(data) != length:
        raise RuntimeFailure("bzImage payload out of range")
    for magic, name in _MAGICS:
        if data.startswith(magic):
            return name, data
    raise RuntimeFailure(f"unknown bzImage payload compression (starts {data[:6].hex()})")


def decompress(kind: str, data: bytes) -> bytes:
    if kind == "gzip":
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)  # ignores the size trailer
    if kind in ("xz", "lzma"):
        return lzma.LZMADecompressor(lzma.FORMAT_XZ if kind == "xz" else lzma.FORMAT_ALONE).decompress(data)
    if kind == "bzip2":
        return bz2.BZ2Decompressor().decompress(data)
    tool = {"lz4": "lz4", "zstd": "zstd"}[kind]
    try:
        done = subprocess.run([tool, "-dc"], input=data, capture_output=True, check=False)
    except FileNotFoundError:
        raise RuntimeFailure(f"{tool} not found", hint="scripts/setup.sh installs it") from None
    if done.returncode != 0 and not done.stdout:
        raise RuntimeFailure(f"{tool} could not unpack the kernel: {done.stderr.decode(errors='replace')[-200:]}")
    return done.stdout  # (the kernel's lz4 stream may end in padding that lz4 complains about)


def _segments(elf: bytes) -> list[tuple[int, int, int]]:
    """(p_type, p_offset, p_filesz) of a 64-bit little-endian ELF's program headers."""
    if len(elf) < 64 or elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        return []
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    if phentsize < 56 or phoff + phnum * phentsize > len(elf):
        return []
    out = []
    for i in range(phnum):
        p_type, _flags, p_offset, _vaddr, _paddr, p_filesz = struct.unpack_from("<IIQQQQ", elf, phoff + i * phentsize)
        out.append((p_type, p_offset, p_filesz))
    return out


def pvh_entry(elf: bytes) -> int | None:
    """The PVH entry point of a 64-bit little-endian ELF kernel, or None: not such an ELF, no
    PVH note, or a segment beyond the end (a truncated unpack)."""
    segments = _segments(elf)
    if any(p_offset + p_filesz > len(elf) for _type, p_offset, p_filesz in segments):
        return None
    for p_type, p_offset, p_filesz in segments:
        if p_type != 4:  # PT_NOTE
            continue
        pos, end = p_offset, min(p_offset + p_filesz, len(elf))
        while pos + 12 <= end:
            namesz, descsz, n_type = struct.unpack_from("<III", elf, pos)
            name = elf[pos + 12:pos + 12 + namesz].rstrip(b"\0")
            desc_at = pos + 12 + (namesz + 3) // 4 * 4
            if name == b"Xen" and n_type == XEN_ELFNOTE_PHYS32_ENTRY and descsz >= 4:
                return int(struct.unpack_from("<I", elf, desc_at)[0])
            pos = desc_at + (descsz + 3) // 4 * 4
    return None


_NO_PVH: set[Path] = set()  # bzImages found unable to boot by PVH: not unpacked again per VM


def pvh_elf(bzimage: Path, cache: Path, version: str) -> Path | None:
    """The kernel of ``bzimage`` unpacked into ``cache`` (once) if it can boot through PVH,
    else None: then QEMU boots the bzImage itself."""
    out = cache / f"vmlinux-{version}"
    if out.exists():
        return out
    if bzimage in _NO_PVH:
        return None
    try:
        elf = decompress(*payload(bzimage.read_bytes()))
    except (RuntimeFailure, OSError, lzma.LZMAError, zlib.error):
        elf = b""
    if pvh_entry(elf) is None:
        _NO_PVH.add(bzimage)
        return None
    tmp = cache / f"vmlinux-{version}.tmp"
    tmp.write_bytes(elf)
    os.rename(tmp, out)
    return out


def release(pid: int, paths: list[str]) -> int:
    """Reclaim the pages of QEMU's (``pid``) mappings of ``paths``: clean page cache it needs
    again only on a reset.  Pages another process maps too are left (the kernel skips them).
    Returns the bytes advised; OSError if the kernel refuses."""
    ranges = []
    with open(f"/proc/{pid}/maps") as fh:
        for line in fh:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].rstrip("\n") in paths:
                lo, hi = (int(x, 16) for x in fields[0].split("-"))
                ranges.append((lo, hi - lo))
    return sc.pageout(pid, ranges) if ranges else 0
