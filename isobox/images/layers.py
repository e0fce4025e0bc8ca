"""Layer tars in and out of unpacked layer directories, safely.

Unpacking (``unpack``) is the one place where bytes from an archive become files on this host,
so it trusts nothing in the tar:

- names are normalised and refused when absolute, when they climb out with ``..``, or when
  a parent directory on the way is a symlink (nothing is ever written through a link);
- symlinks whose relative target climbs above the layer root are refused (absolute targets are
  fine: they resolve inside the container's root, never on the host, since nothing here follows
  them); hard links must name an entry already in the same layer;
- block and character devices are refused, except the 0:0 character device that is overlayfs's
  own whiteout; FIFOs are allowed (images ship them);
- sizes are bounded: per entry, per layer (default the free space of the store's filesystem),
  and the entry count.

Whiteouts are converted when unpacking, not applied: each layer is unpacked once, on its own,
and overlayfs does the stacking.  OCI ``.wh.NAME`` becomes overlayfs's whiteout (a 0:0 character
device ``NAME``) and ``.wh..wh..opq`` becomes the ``trusted.overlay.opaque=y`` xattr on its
directory; overlayfs honours both in every lower layer.  ``pack`` does the reverse when a
container's upper directory (or a staged build) becomes a layer tar.

Not carried yet: extended attributes other than the opaque marker (PAX ``SCHILY.xattr.*``, e.g.
file capabilities set with setcap) are dropped on unpack and not written by ``pack``.
"""

from __future__ import annotations

import hashlib
import io
import os
import posixpath
import shutil
import stat
import tarfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

from isobox.errors import InvalidArgument

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"

MAX_ENTRY_BYTES = 16 << 30     # one file in a layer
MAX_ENTRIES = 2_000_000         # entries in one layer
MAX_NAME = 4096


class BadArchive(InvalidArgument):
    """An archive or layer tar isobox refuses: corrupt, truncated or hostile."""


@dataclass(frozen=True)
class Limits:
    entry_bytes: int = MAX_ENTRY_BYTES
    total_bytes: int | None = None  # None: the free space of the target's filesystem
    entries: int = MAX_ENTRIES


class HashingReader(io.RawIOBase):
    """A read-only stream that hashes what passes through it (the diff_id of a layer)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self.sha256 = hashlib.sha256()
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._raw.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.sha256.update(data)
        self.count += n
        return n

    def drain(self) -> None:
        """Read to the end, so the digest covers the trailing padding tar readers skip."""
        while self.read(1 << 20):
            pass

    @property
    def digest(self) -> str:
        return "sha256:" + self.sha256.hexdigest()


def open_maybe_compressed(raw: BinaryIO) -> tuple[IO[bytes], str]:
    """The decompressed stream of ``raw`` and its compression ("" or "gzip")."""
    head = raw.read(4)
    raw.seek(0)
    if head[:2] == b"\x1f\x8b":
        import gzip

        return gzip.GzipFile(fileobj=raw, mode="rb"), "gzip"  # type: ignore[return-value]
    if head == b"\x28\xb5\x2f\xfd":
        raise BadArchive("zstd-compressed layers are not supported yet",
                         hint="save the image uncompressed or with gzip (podman save --format oci-archive)")
    return raw, ""


def clean_name(name: str) -> str:
    """The entry's path relative to the layer root, or BadArchive if it would leave it."""
    if not name or len(name) > MAX_NAME or "\x00" in name:
        raise BadArchive(f"layer entry with a bad name: {name[:80]!r}")
    if name.startswith("/"):
        raise BadArchive(f"layer entry with an absolute path: {name!r}")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise BadArchive(f"layer entry climbing out with '..': {name!r}")
    return "/".join(parts)


def unpack(stream: IO[bytes], target: Path, limits: Limits | None = None) -> str:
    """Unpack the (uncompressed) layer tar ``stream`` into the empty directory ``target``.

    Returns the diff_id: sha256 of the tar bytes.  Raises BadArchive for anything hostile or
    damaged; the caller then throws ``target`` away."""
    limits = limits or Limits()
    budget = limits.total_bytes if limits.total_bytes is not None else _free_bytes(target)
    hashing = HashingReader(stream)
    reader = io.BufferedReader(hashing, 1 << 20)
    dir_times: list[tuple[str, float]] = []
    written = 0
    try:
        with tarfile.open(fileobj=reader, mode="r|", errorlevel=2) as tar:
            for count, member in enumerate(tar, 1):
                if count > limits.entries:
                    raise BadArchive(f"layer has more than {limits.entries} entries")
                if member.size > limits.entry_bytes:
                    raise BadArchive(f"layer entry {member.name!r} claims {member.size} bytes, "
                                     f"more than the {limits.entry_bytes >> 30} GiB allowed")
                written += member.size
                if written > budget:
                    raise BadArchive(f"layer needs more than {budget >> 20} MiB, more than there is room for")
                _extract(tar, member, target, dir_times)
            reader.read()  # the end-of-archive blocks and padding belong to the digest
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise
        raise BadArchive(f"layer tar is corrupt or truncated: {exc}") from exc
    for rel, mtime in reversed(dir_times):
        os.utime(os.path.join(target, rel) if rel else target, (mtime, mtime), follow_symlinks=False)
    return hashing.digest


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo, root: Path,
             dir_times: list[tuple[str, float]]) -> None:
    rel = clean_name(member.name)
    parent_rel, _, base = rel.rpartition("/")
    if base.startswith(WHITEOUT_PREFIX):
        _whiteout(root, parent_rel, base, member)
        return
    if not rel:
        if member.isdir():
            _set_meta(str(root), member)
            dir_times.append(("", member.mtime))
            return
        raise BadArchive(f"layer root entry {member.name!r} is not a directory")
    parent = _ensure_parent(root, parent_rel)
    path = os.path.join(parent, base)
    if member.isdir():
        if not os.path.isdir(path) or os.path.islink(path):
            _remove(path)
            os.mkdir(path, 0o700)
        _set_meta(path, member)
        dir_times.append((rel, member.mtime))
        return
    _remove(path)
    if member.isreg():
        source = tar.extractfile(member)
        assert source is not None
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
    elif member.issym():
        _check_symlink(rel, member.linkname)
        os.symlink(member.linkname, path)
    elif member.islnk():
        link_rel = clean_name(member.linkname)
        source_path = os.path.join(_ensure_parent(root, link_rel.rpartition("/")[0], create=False),
                                   link_rel.rpartition("/")[2])
        st = os.lstat(source_path) if os.path.lexists(source_path) else None
        if st is None or stat.S_ISDIR(st.st_mode):
            raise BadArchive(f"hard link {member.name!r} points at {member.linkname!r}, not a file earlier in the layer")
        os.link(source_path, path, follow_symlinks=False)
        return  # a hard link shares the inode's metadata
    elif member.isfifo():
        os.mkfifo(path, 0o600)
    elif member.ischr() and member.devmajor == 0 and member.devminor == 0:
        os.mknod(path, 0o600 | stat.S_IFCHR, 0)  # an overlayfs whiteout, as some tools write them
    elif member.ischr() or member.isblk():
        raise BadArchive(f"layer entry {member.name!r} is a device node "
                         f"({member.devmajor}:{member.devminor}); devices are not allowed in images")
    else:
        raise BadArchive(f"layer entry {member.name!r} has an unsupported type {member.type!r}")
    _set_meta(path, member)


def _whiteout(root: Path, parent_rel: str, base: str, member: tarfile.TarInfo) -> None:
    parent = _ensure_parent(root, parent_rel)
    if base == OPAQUE_MARKER:
        os.setxattr(parent, OPAQUE_XATTR, b"y", follow_symlinks=False)
        return
    name = base[len(WHITEOUT_PREFIX):]
    if not name or name in (".", "..") or name.startswith(WHITEOUT_PREFIX):
        raise BadArchive(f"bad whiteout entry {member.name!r}")
    path = os.path.join(parent, name)
    _remove(path)
    os.mknod(path, 0o600 | stat.S_IFCHR, 0)


def _ensure_parent(root: Path, parent_rel: str, create: bool = True) -> str:
    """The host path of ``parent_rel`` under ``root``, checking each step is a real directory.

    Tars may omit parent entries; they are made 0755 root-owned (Docker does the same)."""
    path = str(root)
    for part in parent_rel.split("/") if parent_rel else ():
        path = os.path.join(path, part)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            if not create:
                raise BadArchive(f"layer entry refers to missing {parent_rel!r}") from None
            os.mkdir(path, 0o755)
            continue
        if stat.S_ISLNK(st.st_mode):
            raise BadArchive(f"layer entry goes through the symlink {parent_rel!r}; refusing to write through links")
        if not stat.S_ISDIR(st.st_mode):
            raise BadArchive(f"layer entry goes through {parent_rel!r}, which is not a directory")
    return path


def _check_symlink(rel: str, target: str) -> None:
    if not target or "\x00" in target or len(target) > MAX_NAME:
        raise BadArchive(f"symlink {rel!r} has a bad target")
    if target.startswith("/"):
        return  # resolved inside the container's root by the kernel at run time
    depth = rel.count("/")  # directories between the root and the link
    for part in target.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                raise BadArchive(f"symlink {rel!r} -> {target!r} points outside the image root")
        elif part not in ("", "."):
            depth += 1


def _remove(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _set_meta(path: str, member: tarfile.TarInfo) -> None:
    os.lchown(path, member.uid, member.gid)
    if not member.issym():
        os.chmod(path, member.mode & 0o7777)  # after chown: chown clears set-id bits
    if not member.isdir():
        os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)


def _free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


# -- packing ------------------------------------------------------------------------------------


def pack(root: Path, out: IO[bytes], mtime: float | None = None) -> str:
    """Write the tree ``root`` as an uncompressed layer tar; return its diff_id.

    Overlayfs whiteouts (0:0 character devices, opaque xattrs) become OCI ones.  Entries are
    sorted and owners numeric, so the same tree gives the same bytes; ``mtime`` clamps times."""
    digest = hashlib.sha256()
    sink = _HashingWriter(out, digest)
    with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        links: dict[tuple[int, int], str] = {}
        for rel, st, full in walk(root):
            for info in _infos(rel, st, full, links, mtime):
                if info.type == tarfile.REGTYPE and info.size:
                    with open(full, "rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)
    return "sha256:" + digest.hexdigest()


def _infos(rel: str, st: os.stat_result, full: str, links: dict[tuple[int, int], str],
           mtime: float | None) -> Iterator[tarfile.TarInfo]:
    parent, _, base = rel.rpartition("/")
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
        info = _info(posixpath.join(parent, WHITEOUT_PREFIX + base), tarfile.REGTYPE, st, 0, mtime)
        info.mode = 0o644
        yield info
        return
    if stat.S_ISDIR(st.st_mode):
        yield _info(rel + "/" if rel else "./", tarfile.DIRTYPE, st, 0, mtime)
        try:
            opaque = os.getxattr(full, OPAQUE_XATTR, follow_symlinks=False) == b"y"
        except OSError:
            opaque = False
        if opaque:
            info = _info(posixpath.join(rel, OPAQUE_MARKER), tarfile.REGTYPE, st, 0, mtime)
            info.mode = 0o644
            yield info
        return
    key = (st.st_dev, st.st_ino)
    if stat.S_ISREG(st.st_mode) and st.st_nlink > 1 and key in links:
        info = _info(rel, tarfile.LNKTYPE, st, 0, mtime)
        info.linkname = links[key]
        yield info
        return
    if stat.S_ISREG(st.st_mode):
        links[key] = rel
        yield _info(rel, tarfile.REGTYPE, st, st.st_size, mtime)
    elif stat.S_ISLNK(st.st_mode):
        info = _info(rel, tarfile.SYMTYPE, st, 0, mtime)
        info.linkname = os.readlink(full)
        yield info
    elif stat.S_ISFIFO(st.st_mode):
        yield _info(rel, tarfile.FIFOTYPE, st, 0, mtime)
    elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        info = _info(rel, tarfile.CHRTYPE if stat.S_ISCHR(st.st_mode) else tarfile.BLKTYPE, st, 0, mtime)
        info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        yield info
    # sockets are not archived (tar cannot hold them; Docker skips them too)


def _info(name: str, kind: bytes, st: os.stat_result, size: int, mtime: float | None) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = st.st_uid, st.st_gid
    info.uname = info.gname = ""
    info.mtime = int(st.st_mtime if mtime is None else min(mtime, st.st_mtime))
    return info


class _HashingWriter(io.RawIOBase):
    def __init__(self, out: IO[bytes], digest: hashlib._Hash) -> None:
        self._out = out
        self._digest = digest

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self._digest.update(data)
        self._out.write(data)
        return len(data)


def walk(root: Path) -> Iterator[tuple[str, os.stat_result, str]]:
    """(relative path, lstat, full path) of every entry, root first ("" ), sorted, no symlink followed."""
    base = str(root)
    yield "", os.lstat(base), base
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        full_dir = os.path.join(base, rel_dir) if rel_dir else base
        with os.scandir(full_dir) as it:
            names = sorted(entry.name for entry in it)
        subdirs = []
        for name in names:
            rel = f"{rel_dir}/{name}" if rel_dir else name
            full = os.path.join(base, rel)
            st = os.lstat(full)
            yield rel, st, full
            if stat.S_ISDIR(st.st_mode):
                subdirs.append(rel)
        stack.extend(reversed(subdirs))


def copy_hashing(source: IO[bytes], out: IO[bytes], progress: Callable[[int], None] | None = None) -> str:
    digest = hashlib.sha256()
    while chunk := source.read(1 << 20):
        digest.update(chunk)
        out.write(chunk)
        if progress is not None:
            progress(len(chunk))
    return "sha256:" + digest.hexdigest()
