"""The guest kernel unpacked for a PVH boot (no root, no QEMU): bzImage payloads and ELF notes."""

from __future__ import annotations

import gzip
import lzma
import struct
from pathlib import Path

import pytest

from isobox.errors import RuntimeFailure
from isobox.runtimes.vm import kernelimage

ENTRY = 0x1000850


def note(name: bytes, n_type: int, desc: bytes) -> bytes:
    pad = lambda b: b + b"\0" * (-len(b) % 4)  # noqa: E731
    return struct.pack("<III", len(name), len(desc), n_type) + pad(name) + pad(desc)


def elf(notes: bytes) -> bytes:
    """A 64-bit little-endian ELF with one PT_NOTE segment holding ``notes``."""
    header = (b"\x7fELF\x02\x01\x01" + b"\0" * 9
              + struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0x1000000, 64, 0, 0, 64, 56, 1, 0, 0, 0))
    phdr = struct.pack("<IIQQQQQQ", 4, 4, 120, 0, 0, len(notes), len(notes), 4)
    return header + phdr + notes


def bzimage(payload: bytes, setup_sects: int = 3) -> bytes:
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    setup[0x202:0x206] = b"HdrS"
    offset = 100  # where the payload starts after the setup code, as the header says
    struct.pack_into("<II", setup, 0x248, offset, len(payload))
    return bytes(setup) + b"\x90" * offset + payload + b"\0" * 4


PVH_ELF = elf(note(b"GNU", 3, b"\x11" * 20) + note(b"Xen", 6, b"linux\0") + note(b"Xen", 18, struct.pack("<Q", ENTRY)))


def test_a_gzip_payload_unpacks_to_the_elf_with_its_pvh_entry() -> None:
    kind, data = kernelimage.payload(bzimage(gzip.compress(PVH_ELF)))
    assert kind == "gzip"
    unpacked = kernelimage.decompress(kind, data)
    assert unpacked == PVH_ELF
    assert kernelimage.pvh_entry(unpacked) == ENTRY


def test_an_xz_payload_and_the_default_setup_size() -> None:
    image = bzimage(lzma.compress(PVH_ELF, format=lzma.FORMAT_XZ), setup_sects=4)
    image = image[:0x1F1] + b"\0" + image[0x1F2:]  # 0 means 4 sectors (boot protocol)
    assert kernelimage.decompress(*kernelimage.payload(image)) == PVH_ELF


def test_an_elf_without_the_pvh_note_has_no_entry() -> None:
    assert kernelimage.pvh_entry(elf(note(b"Xen", 6, b"linux\0"))) is None
    assert kernelimage.pvh_entry(b"MZ not an elf" + b"\0" * 64) is None


def test_a_truncated_unpack_is_no_kernel() -> None:
    # A gzip stream cut short unpacks to a prefix without an error: its segments run past the end.
    assert kernelimage.pvh_entry(PVH_ELF[:-1]) is None
    cut = gzip.compress(PVH_ELF)[:-30]
    assert kernelimage.pvh_entry(kernelimage.decompress("gzip", cut)) is None


@pytest.mark.parametrize("image", [b"", b"\0" * 4096, bzimage(b"PK\x03\x04 zip is no kernel compression")])
def test_what_is_no_bzimage_is_refused(image: bytes) -> None:
    with pytest.raises(RuntimeFailure):
        kernelimage.payload(image)


def test_pvh_elf_unpacks_once_and_falls_back_when_the_kernel_cannot(tmp_path: Path) -> None:
    good = tmp_path / "vmlinuz-good"
    good.write_bytes(bzimage(gzip.compress(PVH_ELF)))
    out = kernelimage.pvh_elf(good, tmp_path, "6.1-good")
    assert out == tmp_path / "vmlinux-6.1-good" and out.read_bytes() == PVH_ELF
    good.write_bytes(b"changed")  # the cached file is keyed by version: not unpacked again
    assert kernelimage.pvh_elf(good, tmp_path, "6.1-good") == out

    no_pvh = tmp_path / "vmlinuz-old"
    no_pvh.write_bytes(bzimage(gzip.compress(elf(note(b"GNU", 3, b"\0" * 20)))))
    assert kernelimage.pvh_elf(no_pvh, tmp_path, "4.9-old") is None
    corrupt = tmp_path / "vmlinuz-corrupt"
    corrupt.write_bytes(bzimage(b"\x1f\x8b" + b"garbage" * 10))
    assert kernelimage.pvh_elf(corrupt, tmp_path, "x-corrupt") is None
    assert sorted(p.name for p in tmp_path.glob("vmlinux-*")) == ["vmlinux-6.1-good"]
    # A kernel found unable is not unpacked again on the next VM start (a package's files do not
    # change under a version): even a good one put at its path now is not looked at.
    corrupt.write_bytes(bzimage(gzip.compress(PVH_ELF)))
    assert kernelimage.pvh_elf(corrupt, tmp_path, "x-corrupt") is None
