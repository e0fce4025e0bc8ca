"""Layer tars: crafted hostile tarballs are refused, whiteouts are converted both ways.

Unpacking sets owners, makes 0:0 whiteout devices and trusted.* xattrs: root only."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from isobox.images import layers
from isobox.images.layers import BadArchive, Limits

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="unpacking sets owners and makes whiteout devices")


def make_tar(*entries: tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            if isinstance(entry, tuple):
                info, data = entry
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(entry)
    return buf.getvalue()


def entry(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", mode: int = 0o644,
          data: bytes | None = None, dev: tuple[int, int] = (0, 0)) -> tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, mode
    info.devmajor, info.devminor = dev
    return (info, data) if data is not None else info


@pytest.fixture
def target(tmp_path: Path) -> Path:
    (tmp_path / "outside").mkdir()
    layer = tmp_path / "layer"
    layer.mkdir()
    return layer


def unpack(data: bytes, target: Path, limits: Limits | None = None) -> str:
    return layers.unpack(io.BytesIO(data), target, limits)


def assert_nothing_outside(target: Path) -> None:
    assert os.listdir(target.parent / "outside") == []
    assert sorted(os.listdir(target.parent)) == ["layer", "outside"]


def test_a_plain_layer_unpacks_with_owners_modes_and_its_digest(target: Path) -> None:
    suid = entry("bin/tool", data=b"x", mode=0o4755)
    assert isinstance(suid, tuple)
    suid[0].uid = suid[0].gid = 1000
    data = make_tar(entry("bin/", tarfile.DIRTYPE, mode=0o755), suid, entry("bin/sh", tarfile.SYMTYPE, "/bin/tool"),
                    entry("bin/hard", tarfile.LNKTYPE, "bin/tool"), entry("run/fifo", tarfile.FIFOTYPE))
    digest = unpack(data, target)
    assert digest == "sha256:" + hashlib.sha256(data).hexdigest()
    st = os.lstat(target / "bin" / "tool")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1000, 0o4755)
    assert os.readlink(target / "bin" / "sh") == "/bin/tool"  # absolute: resolved inside the container
    assert os.lstat(target / "bin" / "hard").st_ino == st.st_ino
    assert stat.S_ISFIFO(os.lstat(target / "run" / "fifo").st_mode)


@pytest.mark.parametrize("name", ["../evil", "a/../../evil", "/etc/evil", "./../evil"])
def test_names_that_leave_the_root_are_refused(target: Path, name: str) -> None:
    with pytest.raises(BadArchive):
        unpack(make_tar(entry(name, data=b"x")), target)
    assert_nothing_outside(target)


def test_a_relative_symlink_climbing_out_is_refused(target: Path) -> None:
    with pytest.raises(BadArchive, match="outside the image root"):
        unpack(make_tar(entry("a/b", tarfile.SYMTYPE, "../../outside")), target)
    # one level up from a/ is still the root: fine
    unpack(make_tar(entry("a/b", tarfile.SYMTYPE, "../etc/passwd")), target)


def test_nothing_is_written_through_a_symlink(target: Path) -> None:
    outside = target.parent / "outside"
    data = make_tar(entry("esc", tarfile.SYMTYPE, str(outside)), entry("esc/pwned", data=b"x"))
    with pytest.raises(BadArchive, match="symlink"):
        unpack(data, target)
    assert_nothing_outside(target)


def test_a_symlink_replaced_by_a_directory_entry_is_not_followed(target: Path) -> None:
    outside = target.parent / "outside"
    data = make_tar(entry("esc", tarfile.SYMTYPE, str(outside)), entry("esc", tarfile.DIRTYPE, mode=0o777))
    unpack(data, target)
    assert (target / "esc").is_dir() and not (target / "esc").is_symlink()
    assert stat.S_IMODE(outside.stat().st_mode) != 0o777
    assert_nothing_outside(target)


@pytest.mark.parametrize("link", ["../outside/x", "/etc/passwd", "missing"])
def test_hard_links_must_name_a_file_earlier_in_the_layer(target: Path, link: str) -> None:
    with pytest.raises(BadArchive):
        unpack(make_tar(entry("h", tarfile.LNKTYPE, link)), target)
    assert_nothing_outside(target)


@pytest.mark.parametrize(("kind", "dev"), [(tarfile.CHRTYPE, (1, 3)), (tarfile.BLKTYPE, (8, 0))])
def test_device_nodes_are_refused(target: Path, kind: bytes, dev: tuple[int, int]) -> None:
    with pytest.raises(BadArchive, match="device"):
        unpack(make_tar(entry("dev/x", kind, dev=dev)), target)


def test_absurd_sizes_are_refused(target: Path) -> None:
    with pytest.raises(BadArchive, match="claims"):
        unpack(make_tar(entry("big", data=b"x" * 2048)), target, Limits(entry_bytes=1024))
    with pytest.raises(BadArchive, match="room"):
        unpack(make_tar(entry("a", data=b"x" * 600), entry("b", data=b"x" * 600)), target,
               Limits(total_bytes=1000))
    with pytest.raises(BadArchive, match="entries"):
        unpack(make_tar(entry("a", data=b""), entry("b", data=b"")), target, Limits(entries=1))


def test_a_header_claiming_more_than_the_disk_holds_is_refused(target: Path) -> None:
    # A header that claims 1 PiB: refused from the header, before a byte is written.
    info = tarfile.TarInfo("huge")
    info.size = 1 << 50
    header = info.tobuf(tarfile.PAX_FORMAT)
    with pytest.raises(BadArchive):
        unpack(header + b"\0" * 1024, target)
    assert not (target / "huge").exists()


def test_truncated_and_garbage_tars_are_refused(target: Path) -> None:
    data = make_tar(entry("f", data=b"y" * 10000))
    with pytest.raises(BadArchive):
        unpack(data[:3000], target)
    with pytest.raises(BadArchive):
        unpack(b"not a tar at all" * 64, target)


def test_a_corrupt_gzip_is_refused(target: Path) -> None:
    data = bytearray(gzip.compress(make_tar(entry("f", data=os.urandom(5000)))))
    data[len(data) // 2] ^= 0xFF
    stream, kind = layers.open_maybe_compressed(io.BytesIO(bytes(data)))
    assert kind == "gzip"
    with pytest.raises(BadArchive):
        layers.unpack(stream, target)


def test_oci_whiteouts_become_overlayfs_whiteouts_and_back(target: Path, tmp_path: Path) -> None:
    data = make_tar(entry("etc/", tarfile.DIRTYPE, mode=0o755), entry("etc/.wh.group", data=b""),
                    entry("opt/", tarfile.DIRTYPE, mode=0o755), entry("opt/.wh..wh..opq", data=b""),
                    entry("opt/new", data=b"n"))
    unpack(data, target)
    st = os.lstat(target / "etc" / "group")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert os.getxattr(target / "opt", layers.OPAQUE_XATTR) == b"y"
    assert not (target / "etc" / ".wh.group").exists()

    out = io.BytesIO()
    diff_id = layers.pack(target, out)
    assert diff_id == "sha256:" + hashlib.sha256(out.getvalue()).hexdigest()
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
        names = {m.name: m for m in tar.getmembers()}
    assert "etc/.wh.group" in names and names["etc/.wh.group"].isreg()
    assert "opt/.wh..wh..opq" in names and "opt/new" in names
    assert "etc/group" not in names

    again = tmp_path / "again"
    again.mkdir()
    assert layers.unpack(io.BytesIO(out.getvalue()), again) == diff_id


def test_pack_is_reproducible_with_clamped_times(target: Path) -> None:
    (target / "a").write_text("a")
    (target / "d").mkdir()
    first, second = io.BytesIO(), io.BytesIO()
    layers.pack(target, first, mtime=0)
    os.utime(target / "a", (12345, 12345))
    layers.pack(target, second, mtime=0)
    assert first.getvalue() == second.getvalue()


def test_clean_name() -> None:
    assert layers.clean_name("./a//b/./c") == "a/b/c"
    assert layers.clean_name("./") == ""
    for bad in ("/a", "a/../../b", "..", "a\x00b", ""):
        with pytest.raises(BadArchive):
            layers.clean_name(bad)
