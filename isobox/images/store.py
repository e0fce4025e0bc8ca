"""The image store: unpacked layers on disk, image metadata in the state database.

Layout under the store root (``paths.images_dir()``)::

    layers/<sha256hex>/   one unpacked layer, named by the hash of its canonical tree listing;
                          used read-only (overlayfs lowerdir); shared between images
    tmp/<random>/         a build in progress (flock-ed while its builder lives), or a layer
                          being deleted; anything unlocked here is debris and gets swept
    lock                  flock-ed around every change of layers/ together with its rows

Writes are atomic the way libvirt does them: build in tmp/, fsync, ``rename`` into place, then
the rows.  Removal goes the other way: rows first, then ``rename`` out of layers/, then delete.
A crash leaves at worst an unreferenced layer (reused by the next build of the same content)
or debris in tmp/, never a row pointing at half a layer.

The OCI layout of the images issue (blobs, manifests, index) grows beside ``layers/``; the
``Image`` and ``ImageStore`` interface stays.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sqlite3
import stat
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from isobox import paths
from isobox.errors import Conflict, InvalidArgument, NotFound, RuntimeFailure
from isobox.images import refs
from isobox.state import ImageRecord, StateStore

Progress = Callable[[str], None]

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class ImageConfig:
    """The subset of the OCI image config that the runtimes need."""

    env: tuple[str, ...] = (DEFAULT_PATH,)
    cmd: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    workdir: str = "/"
    user: str = ""
    labels: dict[str, str] = field(default_factory=dict, hash=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "env": list(self.env),
            "cmd": list(self.cmd),
            "entrypoint": list(self.entrypoint),
            "workdir": self.workdir,
            "user": self.user,
            "labels": dict(sorted(self.labels.items())),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ImageConfig:
        return cls(
            env=tuple(data.get("env") or ()),
            cmd=tuple(data.get("cmd") or ()),
            entrypoint=tuple(data.get("entrypoint") or ()),
            workdir=data.get("workdir") or "/",
            user=data.get("user") or "",
            labels=dict(data.get("labels") or {}),
        )


@dataclass(frozen=True)
class Image:
    id: str                   # "sha256:<hex>" of the canonical config + layer ids
    tags: tuple[str, ...]
    config: ImageConfig
    layers: tuple[Path, ...]  # unpacked layer dirs, lowest first (overlayfs lowerdir takes them reversed)
    size: int                 # real bytes on disk (du of the layers)
    created: float

    @property
    def short_id(self) -> str:
        return self.id.removeprefix("sha256:")[:12]

    @property
    def layer_ids(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.layers)

    def to_dict(self) -> dict[str, Any]:
        """Docker's ``image inspect`` shape (the subset isobox has)."""
        return {
            "Id": self.id,
            "RepoTags": list(self.tags),
            "Size": self.size,
            "Created": self.created,
            "Config": {
                "Env": list(self.config.env),
                "Cmd": list(self.config.cmd),
                "Entrypoint": list(self.config.entrypoint),
                "WorkingDir": self.config.workdir,
                "User": self.config.user,
                "Labels": dict(self.config.labels),
            },
            "RootFS": {"Type": "layers", "Layers": ["sha256:" + h for h in self.layer_ids]},
            "LayerDirs": [str(p) for p in self.layers],
        }


class ImageStore:
    def __init__(self, state: StateStore, root: Path | None = None) -> None:
        self._state = state
        self.root = root if root is not None else paths.images_dir()
        self.layers_dir = self.root / "layers"
        self.tmp_dir = self.root / "tmp"
        for directory, mode in ((self.root, 0o711), (self.layers_dir, 0o711), (self.tmp_dir, 0o700)):
            directory.mkdir(parents=True, exist_ok=True, mode=mode)
        with self._locked():
            self._sweep_tmp()

    # -- reading ------------------------------------------------------------------------------

    def resolve(self, ref: str) -> Image:
        record, _ = self._lookup(ref)
        image = self._image(record)
        for layer in image.layers:
            if not layer.is_dir():
                raise RuntimeFailure(
                    f"image {ref} is damaged: layer {layer.name[:12]} is missing from {self.layers_dir}",
                    hint=f"remove it with: isobox image rm -f {ref}, then build it again",
                )
        return image

    def list(self) -> builtins.list[Image]:
        return [self._image(r) for r in self._state.images()]

    # -- removing -----------------------------------------------------------------------------

    def remove(
        self, ref: str, force: bool = False, in_use_by: builtins.list[str] | None = None
    ) -> builtins.list[str]:
        """Docker's ``rmi``: a tag of an image with other tags is only untagged; otherwise the image
        goes, rows and files.  Returns ``Untagged: <name>`` / ``Deleted: <id>`` lines."""
        in_use_by = in_use_by or []
        with self._locked():
            record, tag = self._lookup(ref)
            if tag is not None and len(record.tags) > 1:
                self._state.untag_image(tag)
                return [f"Untagged: {tag}"]
            if in_use_by and not force:
                raise Conflict(
                    f"image {ref} is in use by container(s): {', '.join(in_use_by)}",
                    hint="remove those containers first, or force with: isobox image rm -f",
                )
            if tag is None and len(record.tags) > 1 and not force:
                raise Conflict(
                    f"image {ref} is referenced by several tags: {', '.join(record.tags)}",
                    hint="remove the tags one by one, or force with: isobox image rm -f",
                )
            doomed = self._delete_rows(record)
            trash = [self._move_to_trash(self.layers_dir / h) for h in doomed]
        for path in trash:
            shutil.rmtree(path, ignore_errors=True)
        return [f"Untagged: {t}" for t in record.tags] + [f"Deleted: {record.id}"]

    # -- building -----------------------------------------------------------------------------

    def build_busybox(self, tag: str = "busybox:latest", progress: Progress | None = None) -> Image:
        from isobox.images import busybox  # the builder is only needed to build

        tag = _tag_name(tag)
        report = progress or _ignore
        binary = busybox.find_binary()
        with self.staging() as stage:
            config = busybox.populate(stage, binary, report)
            return self.commit([stage], config, tag, report)

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A fresh directory under tmp/ to build one layer in; gone afterwards unless committed.

        It stays flock-ed while the builder lives, so a sweep by another process leaves it alone
        and a builder killed with -9 leaves debris that the next sweep removes."""
        with self._locked():
            self._sweep_tmp()
            path = Path(tempfile.mkdtemp(prefix="build-", dir=self.tmp_dir))
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield path
        finally:
            if os.path.lexists(path):
                shutil.rmtree(path, ignore_errors=True)
            os.close(fd)

    def commit(
        self, stages: builtins.list[Path], config: ImageConfig, tag: str | None, progress: Progress
    ) -> Image:
        """Move built layer dirs into layers/ (or reuse identical ones) and record the image."""
        hexes = []
        for stage in stages:
            progress("hashing layer")
            hexes.append(tree_digest(stage))
        image_id = "sha256:" + _sha256_json({"config": config.to_json(), "layers": hexes})
        done = []  # reported after the lock: a failing progress callback cannot split rename and rows
        with self._locked():
            for stage, hexid in zip(stages, hexes, strict=True):
                target = self.layers_dir / hexid
                if target.is_dir():
                    done.append(f"layer {hexid[:12]} already in the store, reused")
                    continue
                _fsync_tree(stage)
                os.rename(stage, target)
                _fsync_path(self.layers_dir)
                done.append(f"layer {hexid[:12]} stored")
            size = sum(disk_usage(self.layers_dir / h) for h in hexes)
            self._insert(image_id, config, hexes, size, tag)
            record = self._state.find_image(image_id)
        if record is None:  # pragma: no cover - we hold the rows we just wrote
            raise RuntimeFailure(f"image {image_id} vanished right after it was stored")
        for message in done:
            progress(message)
        progress(f"image {image_id[7:19]}" + (f" tagged {tag}" if tag else "") + f", {_mib(size)}")
        return self._image(record)

    # -- internals ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # A new open file description each time: flock then also excludes other threads of
        # this process, not only other processes.
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _sweep_tmp(self) -> None:
        """Remove what dead builders and interrupted removals left in tmp/ (caller holds the lock)."""
        for entry in os.scandir(self.tmp_dir):
            path = Path(entry.path)
            if not entry.is_dir(follow_symlinks=False):
                path.unlink(missing_ok=True)
                continue
            try:
                fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live build
            else:
                shutil.rmtree(path, ignore_errors=True)
            finally:
                os.close(fd)

    def _move_to_trash(self, layer: Path) -> Path:
        trash = Path(tempfile.mkdtemp(prefix="rm-", dir=self.tmp_dir))
        target = trash / layer.name
        with contextlib.suppress(FileNotFoundError):
            os.rename(layer, target)
        return trash

    def _lookup(self, ref: str) -> tuple[ImageRecord, str | None]:
        """The image ``ref`` names, and the tag it named it by (None when by id or digest)."""
        if not isinstance(ref, str) or not ref.strip():
            raise InvalidArgument("no image given")
        if ref.startswith("sha256:"):
            if not refs.looks_like_id(ref):
                raise InvalidArgument(f"invalid image id {ref!r}: sha256: and lowercase hex expected")
            return self._by_id(ref, ref), None
        parsed = refs.parse(ref)
        if parsed.digest is not None:
            # No manifests yet: a digest reference names the image id.
            return self._by_id(parsed.digest, ref, exact=True), None
        tag = str(parsed)
        record = self._state.find_image(tag)
        if record is not None and tag in record.tags:
            return record, tag
        if refs.looks_like_id(ref):
            return self._by_id(ref, ref), None
        raise NotFound(f"image not known: {ref}", hint=_not_found_hint(parsed))

    def _by_id(self, ident: str, ref: str, exact: bool = False) -> ImageRecord:
        full = ident if ident.startswith("sha256:") else "sha256:" + ident
        found = [r for r in self._state.images() if (r.id == full if exact else r.id.startswith(full))]
        if len(found) > 1:
            raise NotFound(f"image id prefix {ref!r} is ambiguous", hint="give more characters of the id")
        if not found:
            raise NotFound(f"image not known: {ref}", hint=_not_found_hint(None))
        return found[0]

    def _image(self, record: ImageRecord) -> Image:
        return Image(
            id=record.id,
            tags=tuple(record.tags),
            config=ImageConfig.from_json(record.config),
            layers=tuple(self.layers_dir / h for h in record.config.get("layers", [])),
            size=record.size,
            created=record.created_at,
        )

    def _insert(
        self, image_id: str, config: ImageConfig, hexes: builtins.list[str], size: int, tag: str | None
    ) -> None:
        # Not StateStore.add_image: its INSERT OR REPLACE deletes the existing row first, and the
        # ON DELETE CASCADE then drops every other tag of the image.  An upsert keeps them.
        data = {**config.to_json(), "layers": hexes}
        with self._state.write() as db:
            db.execute(
                "INSERT INTO images (id, config, size, created_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET size = excluded.size",
                (image_id, json.dumps(data), size, time.time()),
            )
            if tag:
                db.execute(
                    "INSERT INTO image_tags (name, image_id) VALUES (?, ?) "
                    "ON CONFLICT(name) DO UPDATE SET image_id = excluded.image_id",
                    (tag, image_id),
                )

    def _delete_rows(self, record: ImageRecord) -> builtins.list[str]:
        """Delete the image's rows; return its layers that no other image uses (caller holds the lock)."""
        try:
            with self._state.write() as db:
                db.execute("DELETE FROM image_tags WHERE image_id = ?", (record.id,))
                db.execute("DELETE FROM images WHERE id = ?", (record.id,))
                still_used = {
                    h for (config,) in db.execute("SELECT config FROM images") for h in json.loads(config)["layers"]
                }
        except sqlite3.IntegrityError:
            users = self._state.containers_using_image(record.id)
            raise Conflict(
                f"image {record.id[7:19]} is still used by container(s): {', '.join(users)}",
                hint="remove those containers first (isobox rm -f NAME)",
            ) from None
        return [h for h in record.config.get("layers", []) if h not in still_used]


# -- trees --------------------------------------------------------------------------------------


def tree_digest(root: Path) -> str:
    """sha256 hex of a canonical listing of the tree: path, type, mode, owner, size and content
    hash or link target of every entry, sorted.  Timestamps are left out, so the same inputs
    give the same digest on every build."""
    digest = hashlib.sha256()
    for line in tree_listing(root):
        digest.update(line.encode("utf-8", "surrogateescape") + b"\n")
    return digest.hexdigest()


def tree_listing(root: Path) -> Iterable[str]:
    seen: dict[tuple[int, int], str] = {}
    for rel, st, full in _walk(root):
        entry: list[Any] = [rel, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid]
        if stat.S_ISDIR(st.st_mode):
            entry[1:1] = ["dir"]
        elif stat.S_ISLNK(st.st_mode):
            entry[1:1] = ["symlink"]
            entry.append(os.readlink(full))
        elif stat.S_ISREG(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in seen:
                entry[1:1] = ["hardlink"]
                entry.append(seen[key])
            else:
                seen[key] = rel
                entry[1:1] = ["file"]
                entry += [st.st_size, _file_sha256(full)]
        else:
            kind = {stat.S_IFCHR: "char", stat.S_IFBLK: "block", stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket"}
            entry[1:1] = [kind.get(stat.S_IFMT(st.st_mode), "other")]
            entry += [os.major(st.st_rdev), os.minor(st.st_rdev)]
        yield json.dumps(entry, ensure_ascii=False)


def disk_usage(root: Path) -> int:
    """Real bytes on disk, like ``du -s --bytes`` of allocated blocks (hard links counted once)."""
    total, seen = 0, set()
    for _, st, _ in _walk(root, include_root=True):
        key = (st.st_dev, st.st_ino)
        if key not in seen:
            seen.add(key)
            total += st.st_blocks * 512
    return total


def _walk(root: Path, include_root: bool = True) -> Iterator[tuple[str, os.stat_result, str]]:
    """(relative path, lstat, full path) of every entry, in sorted order, never following symlinks."""
    base = str(root)
    if include_root:
        yield ".", os.lstat(base), base
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        full_dir = os.path.join(base, rel_dir) if rel_dir else base
        children = []
        with os.scandir(full_dir) as it:
            for entry in it:
                children.append(entry.name)
        subdirs = []
        for name in sorted(children):
            rel = f"{rel_dir}/{name}" if rel_dir else name
            full = os.path.join(base, rel)
            st = os.lstat(full)
            yield rel, st, full
            if stat.S_ISDIR(st.st_mode):
                subdirs.append(rel)
        stack.extend(reversed(subdirs))


def _file_sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _sha256_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _fsync_path(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Make a finished layer durable before it is renamed into place: files, then directories."""
    dirs = []
    for _, st, full in _walk(root):
        if stat.S_ISREG(st.st_mode):
            _fsync_path(full)
        elif stat.S_ISDIR(st.st_mode):
            dirs.append(full)
    for directory in reversed(dirs):
        _fsync_path(directory)


def _not_found_hint(parsed: refs.Reference | None) -> str:
    if parsed is not None and parsed.basename == "busybox":
        return "build it with: isobox image build busybox"
    return "isobox image ls lists the images there are; isobox builds images locally, it never pulls"


def _tag_name(tag: str) -> str:
    parsed = refs.parse(tag)
    if parsed.digest is not None:
        raise InvalidArgument(f"cannot tag an image with a digest reference: {tag}", hint="use NAME[:TAG]")
    return str(parsed)


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


def _ignore(_: str) -> None:
    pass
