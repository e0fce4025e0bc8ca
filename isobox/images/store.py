"""The image store: an OCI image layout on disk, unpacked layers beside it, rows in the state database.

Layout under the store root (``paths.images_dir()``)::

    oci-layout, index.json  the OCI image layout's marker and index (one manifest entry per tag,
                            annotated with org.opencontainers.image.ref.name; rewritten on change)
    blobs/sha256/<hex>      content-addressed blobs: manifests, configs, layer tars (as loaded:
                            plain or gzip; isobox's own layers are plain tars), and the disk
                            file of a VM-only image (``image import-disk``: qcow2 or ISO, listed
                            as its manifest's only layer; the row has no layers and a ``disk``)
    layers/<hex>/           one unpacked layer, named by its diff_id (sha256 of the uncompressed
                            tar); overlayfs whiteouts (see ``layers.py``); used read-only as an
                            overlayfs lowerdir, shared between images
    tmp/<random>/           a build or load in progress (flock-ed while its builder lives), or
                            something being deleted; anything unlocked here is debris and gets swept
    lock                    flock-ed around every change of blobs/, layers/ and the rows

An image's id is the digest of its config blob (as in Docker and Podman); the database row keeps
its manifest digest, diff_ids and the runtime's subset of the config.  Writes are atomic the way
libvirt does them: everything is made in tmp/, fsync-ed, then ``rename``-d into place under the
lock together with the rows.  Removal goes the other way: rows first, then ``rename`` out, then
delete.  A crash leaves at worst unreferenced blobs or layers (``image prune`` collects them) or
debris in tmp/, never a row pointing at half an image.
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
from isobox.images import layers, refs
from isobox.state import ImageRecord, StateStore

Progress = Callable[[str], None]

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar"
MT_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"
EPOCH = "1970-01-01T00:00:00Z"


@dataclass(frozen=True)
class ImageConfig:
    """The subset of the OCI image config that the runtimes need."""

    env: tuple[str, ...] = (DEFAULT_PATH,)
    cmd: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    workdir: str = "/"
    user: str = ""
    labels: dict[str, str] = field(default_factory=dict, hash=False)
    ports: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "env": list(self.env),
            "cmd": list(self.cmd),
            "entrypoint": list(self.entrypoint),
            "workdir": self.workdir,
            "user": self.user,
            "labels": dict(sorted(self.labels.items())),
            "ports": list(self.ports),
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
            ports=tuple(data.get("ports") or ()),
        )

    def to_oci(self) -> dict[str, Any]:
        """The ``config`` member of an OCI image config."""
        doc: dict[str, Any] = {"Env": list(self.env)}
        if self.cmd:
            doc["Cmd"] = list(self.cmd)
        if self.entrypoint:
            doc["Entrypoint"] = list(self.entrypoint)
        if self.workdir and self.workdir != "/":
            doc["WorkingDir"] = self.workdir
        if self.user:
            doc["User"] = self.user
        if self.labels:
            doc["Labels"] = dict(sorted(self.labels.items()))
        if self.ports:
            doc["ExposedPorts"] = {p: {} for p in self.ports}
        return doc

    @classmethod
    def from_oci(cls, doc: dict[str, Any] | None) -> ImageConfig:
        doc = doc if isinstance(doc, dict) else {}
        return cls(
            env=tuple(str(e) for e in doc.get("Env") or ()),
            cmd=tuple(str(c) for c in doc.get("Cmd") or ()),
            entrypoint=tuple(str(c) for c in doc.get("Entrypoint") or ()),
            workdir=str(doc.get("WorkingDir") or "/"),
            user=str(doc.get("User") or ""),
            labels={str(k): str(v) for k, v in (doc.get("Labels") or {}).items()},
            ports=tuple(sorted(str(p) for p in doc.get("ExposedPorts") or {})),
        )


@dataclass(frozen=True)
class Image:
    id: str                   # "sha256:<hex>" of the config blob
    tags: tuple[str, ...]
    config: ImageConfig
    layers: tuple[Path, ...]  # unpacked layer dirs, lowest first (overlayfs lowerdir takes them reversed)
    size: int                 # real bytes on disk (du of the layers)
    created: float
    manifest: str = ""        # "sha256:<hex>" of the manifest blob
    history: tuple[dict[str, Any], ...] = ()
    disk: dict[str, Any] | None = field(default=None, hash=False)  # set for VM-only images (import-disk)
    disk_file: Path | None = field(default=None, hash=False)  # its stored file (a blob), for VM-only images

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
            "Digest": self.manifest,
            "RepoTags": list(self.tags),
            "RepoDigests": [f"{refs.parse(t).repository}@{self.manifest}" for t in self.tags] if self.manifest else [],
            "Size": self.size,
            "Created": self.created,
            "Os": "linux",
            "Architecture": "amd64",
            "Config": {
                "Env": list(self.config.env),
                "Cmd": list(self.config.cmd),
                "Entrypoint": list(self.config.entrypoint),
                "WorkingDir": self.config.workdir,
                "User": self.config.user,
                "Labels": dict(self.config.labels),
                "ExposedPorts": {p: {} for p in self.config.ports},
            },
            "RootFS": {"Type": "layers", "Layers": ["sha256:" + h for h in self.layer_ids]},
            "History": list(self.history),
            "LayerDirs": [str(p) for p in self.layers],
            **({"Disk": dict(self.disk)} if self.disk else {}),
        }


@dataclass
class Staged:
    """What a builder or loader made in its staging directory, ready for ``ImageStore.store``."""

    config: bytes                                                # the OCI config blob
    layers: builtins.list[tuple[str, str, int, str]]             # (media type, blob digest, size, diff_id)
    blobs: dict[str, Path] = field(default_factory=dict)         # digest -> file in staging
    dirs: dict[str, Path] = field(default_factory=dict)          # diff_id hex -> unpacked dir in staging
    manifest: bytes | None = None                                # kept as loaded; made when None


class ImageStore:
    def __init__(self, state: StateStore, root: Path | None = None) -> None:
        self._state = state
        self.root = root if root is not None else paths.images_dir()
        self.layers_dir = self.root / "layers"
        self.blobs_dir = self.root / "blobs" / "sha256"
        self.tmp_dir = self.root / "tmp"
        for directory, mode in ((self.root, 0o711), (self.layers_dir, 0o711), (self.root / "blobs", 0o700),
                                (self.blobs_dir, 0o700), (self.tmp_dir, 0o700)):
            directory.mkdir(parents=True, exist_ok=True, mode=mode)
        with self._locked():
            if not (self.root / "oci-layout").exists():
                _write_atomic(self.root / "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
                self._write_index()
            self._sweep_tmp()

    # -- reading ------------------------------------------------------------------------------

    def resolve(self, ref: str) -> Image:
        record, _ = self._lookup(ref)
        image = self._image(record)
        for layer in image.layers:
            if not layer.is_dir():
                raise RuntimeFailure(
                    f"image {ref} is damaged: layer {layer.name[:12]} is missing from {self.layers_dir}",
                    hint=f"remove it with: isobox image rm -f {ref}, then build or load it again",
                )
        return image

    def list(self) -> builtins.list[Image]:
        return [self._image(r) for r in self._state.images()]

    def blob_path(self, digest: str) -> Path:
        if not refs.looks_like_id(digest) or len(digest) != 71:
            raise InvalidArgument(f"bad digest {digest!r}")
        return self.blobs_dir / digest.removeprefix("sha256:")

    def read_blob(self, digest: str) -> bytes:
        try:
            return self.blob_path(digest).read_bytes()
        except FileNotFoundError:
            raise RuntimeFailure(f"blob {digest[:19]} is missing from the store",
                                 hint="remove the image and load or build it again") from None

    def manifest(self, image: Image) -> dict[str, Any]:
        if not image.manifest:
            raise RuntimeFailure(f"image {image.short_id} has no manifest (made by an older isobox)",
                                 hint="remove it and build it again")
        return json.loads(self.read_blob(image.manifest))

    # -- tags, removal, prune -----------------------------------------------------------------

    def tag(self, ref: str, target: str) -> Image:
        name = _tag_name(target)
        with self._locked():
            record, _ = self._lookup(ref)
            with self._state.write() as db:
                db.execute(
                    "INSERT INTO image_tags (name, image_id) VALUES (?, ?) "
                    "ON CONFLICT(name) DO UPDATE SET image_id = excluded.image_id",
                    (name, record.id),
                )
            self._write_index()
            found = self._state.find_image(record.id)
        assert found is not None
        return self._image(found)

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
                self._write_index()
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
            self._delete_rows(record)
            trash = self._collect()
        self._empty_trash(trash)
        return [f"Untagged: {t}" for t in record.tags] + [f"Deleted: {record.id}"]

    def prune(self, all_unused: bool = False, in_use: set[str] | None = None) -> dict[str, Any]:
        """Docker's ``image prune``: untagged images (every unused one with ``all_unused``) that no
        container uses, then every blob and layer no image refers to."""
        in_use = in_use or set()
        deleted: builtins.list[str] = []
        with self._locked():
            self._sweep_tmp()
            for record in self._state.images():
                if record.id in in_use or (record.tags and not all_unused):
                    continue
                with contextlib.suppress(Conflict):
                    self._delete_rows(record)
                    deleted.append(record.id)
            trash = self._collect()
            # Measured under the lock: once it is released, another store's sweep may empty the trash.
            reclaimed = sum(disk_usage(t) for t in trash)
        self._empty_trash(trash)
        return {"ImagesDeleted": deleted, "SpaceReclaimed": reclaimed}

    # -- building -----------------------------------------------------------------------------

    def build_busybox(self, tag: str = "busybox:latest", progress: Progress | None = None) -> Image:
        from isobox.images import busybox  # the builder is only needed to build

        tag = _tag_name(tag)
        report = progress or _ignore
        binary = busybox.find_binary()
        with self.staging() as stage:
            root = stage / "rootfs"
            root.mkdir()
            config = busybox.populate(root, binary, report)
            history = [{"created": EPOCH, "created_by": f"isobox image build busybox ({binary})"}]
            return self.commit([root], config, tag, report, history=history, reproducible=True)

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A fresh directory under tmp/ to build or load in; gone afterwards.

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
        self, stages: builtins.list[Path], config: ImageConfig, tag: str | None, progress: Progress,
        *, base: Image | None = None, history: builtins.list[dict[str, Any]] | None = None,
        reproducible: bool = False,
    ) -> Image:
        """Make each built tree a layer (a tar blob plus the tree itself) over ``base``'s layers
        and record the image.  ``reproducible`` clamps times to the epoch: same tree, same id."""
        from isobox.images import layers as layer_tars

        with self.staging() as blobs:
            staged = self.stage_base(base, blobs)
            for stage in stages:
                progress("packing layer")
                tmp = blobs / f"layer-{len(staged.layers)}.tar"
                with open(tmp, "wb") as out:
                    diff_id = layer_tars.pack(stage, out, mtime=0 if reproducible else None)
                    out.flush()
                    os.fsync(out.fileno())
                staged.blobs[diff_id] = tmp
                staged.dirs[diff_id[7:]] = stage
                staged.layers.append((MT_LAYER, diff_id, tmp.stat().st_size, diff_id))
            created = EPOCH if reproducible else _now_iso()
            hist = list(base.history) if base is not None else []
            hist += history if history is not None else [{"created": created, "created_by": "isobox commit"}]
            staged.config = config_blob(config, [layer[3] for layer in staged.layers], hist, created)
            return self.store(staged, [tag] if tag else [], progress)

    def stage_base(self, base: Image | None, stage: Path) -> Staged:
        """A Staged holding ``base``'s layers (already stored), to add layers on top of; they are
        pinned in ``stage`` so that a concurrent prune leaves them alone."""
        staged = Staged(config=b"", layers=[])
        if base is None:
            return staged
        manifest = self.manifest(base)
        for desc, hexid in zip(manifest["layers"], base.layer_ids, strict=True):
            staged.layers.append((desc["mediaType"], desc["digest"], int(desc["size"]), "sha256:" + hexid))
        self.pin(stage, base.layer_ids, [d["digest"] for d in manifest["layers"]])
        self.resolve(base.id)  # still there after pinning: from here on it cannot go
        return staged

    def pin(self, stage: Path, layer_hexes: Iterable[str], blob_digests: Iterable[str] = ()) -> None:
        """Record in the live staging dir ``stage`` that the build relies on these stored layers
        and blobs: ``prune`` and ``rm`` keep whatever a live build has pinned."""
        with self._locked(), open(stage / "pins", "a") as f:
            f.write(json.dumps({"layers": list(layer_hexes), "blobs": [d.removeprefix("sha256:") for d in blob_digests]})
                    + "\n")

    def store(self, staged: Staged, tags: builtins.list[str], progress: Progress) -> Image:
        """Move a staged image's blobs and layer dirs into place (or reuse identical ones) and
        record it, all under the lock.  Nothing is visible before every piece is in place."""
        tags = [_tag_name(t) for t in tags]
        manifest = staged.manifest if staged.manifest is not None else manifest_blob(staged)
        config_digest, manifest_digest = _digest(staged.config), _digest(manifest)
        hexes = [layer[3].removeprefix("sha256:") for layer in staged.layers]
        done = []  # reported after the lock: a failing progress callback cannot split renames and rows
        if staged.dirs or staged.blobs:
            progress("syncing")
            _syncfs(self.tmp_dir)  # one flush of the whole filesystem, outside the lock, before the renames
        with self._locked():
            for digest, data in ((config_digest, staged.config), (manifest_digest, manifest)):
                if not self.blob_path(digest).exists():
                    _write_atomic(self.blob_path(digest), data, tmp_dir=self.tmp_dir)
            for _, digest, _, _ in staged.layers:
                target = self.blob_path(digest)
                if target.exists():
                    continue
                if digest not in staged.blobs:
                    raise RuntimeFailure(f"layer blob {digest[:19]} vanished from the store while this image was made",
                                         hint="a concurrent image rm or prune removed it; run the command again")
                os.rename(staged.blobs[digest], target)
            for hexid in hexes:
                target = self.layers_dir / hexid
                if target.is_dir():
                    if hexid in staged.dirs:
                        done.append(f"layer {hexid[:12]} already in the store, reused")
                    continue
                if hexid not in staged.dirs:
                    raise RuntimeFailure(f"layer {hexid[:12]} vanished from the store while this image was made",
                                         hint="a concurrent image rm or prune removed it; run the command again")
                os.rename(staged.dirs[hexid], target)
                done.append(f"layer {hexid[:12]} stored")
            _fsync_path(self.layers_dir)
            _fsync_path(self.blobs_dir)
            size = sum(disk_usage(self.layers_dir / h) for h in dict.fromkeys(hexes))
            doc = json.loads(staged.config)
            row = {**ImageConfig.from_oci(doc.get("config")).to_json(), "layers": hexes,
                   "manifest": manifest_digest, "history": doc.get("history") or []}
            self._insert(config_digest, row, size, tags)
            self._write_index()
            record = self._state.find_image(config_digest)
        if record is None:  # pragma: no cover - we hold the rows we just wrote
            raise RuntimeFailure(f"image {config_digest} vanished right after it was stored")
        for message in done:
            progress(message)
        progress(f"image {config_digest[7:19]}" + (f" tagged {', '.join(tags)}" if tags else "") + f", {_mib(size)}")
        return self._image(record)

    def store_disk(self, staged_disk: Path, disk: dict[str, Any], name: str, progress: Progress,
                   labels: dict[str, str] | None = None, created_by: str | None = None) -> Image:
        """Record a VM-only image whose content is one disk file made in a staging dir (see
        ``diskimport.py``, ``bootdisk.py``): the file becomes a blob named by its digest, the
        manifest's only entry, and the row has no layers and a ``disk`` entry.  Renamed into place
        under the lock.  ``labels`` add to the disk's own; ``created_by`` is its history line."""
        tag = _tag_name(name)
        progress("hashing the disk")
        with open(staged_disk, "rb") as f:
            disk_digest = "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()
            os.fsync(f.fileno())
        disk = {**disk, "digest": disk_digest}
        os.chmod(staged_disk, 0o600)
        size = staged_disk.stat().st_size
        labels = {**(labels or {}), "org.isobox.disk.kind": str(disk["kind"]),
                  "org.isobox.disk.format": str(disk["stored_format"])}
        created_by = created_by or f"isobox image import-disk {disk.get('source', '')}".strip()
        history = [{"created": _now_iso(), "created_by": created_by}]
        doc = {"created": EPOCH, "architecture": "amd64", "os": "unknown", "config": {"Labels": labels},
               "rootfs": {"type": "layers", "diff_ids": []}, "history": history,
               "isobox.disk": {k: disk[k] for k in ("kind", "format", "stored_format", "virtual_size", "digest")}}
        config = _canonical(doc)
        manifest = _canonical({
            "schemaVersion": 2, "mediaType": MT_MANIFEST,
            "config": {"mediaType": MT_CONFIG, "digest": _digest(config), "size": len(config)},
            "layers": [{"mediaType": disk["media_type"], "digest": disk_digest, "size": size}],
        })
        config_digest, manifest_digest = _digest(config), _digest(manifest)
        with self._locked():
            for digest, data in ((config_digest, config), (manifest_digest, manifest)):
                if not self.blob_path(digest).exists():
                    _write_atomic(self.blob_path(digest), data, tmp_dir=self.tmp_dir)
            target = self.blob_path(disk_digest)
            if not target.exists():
                os.rename(staged_disk, target)
            _fsync_path(self.blobs_dir)
            real = target.stat().st_blocks * 512
            row = {**ImageConfig(labels=labels).to_json(), "layers": [], "manifest": manifest_digest,
                   "history": history, "disk": disk}
            self._insert(config_digest, row, real, [tag])
            self._write_index()
            record = self._state.find_image(config_digest)
        if record is None:  # pragma: no cover - we hold the rows we just wrote
            raise RuntimeFailure(f"image {config_digest} vanished right after it was stored")
        progress(f"image {config_digest[7:19]} tagged {tag}, {_mib(real)}")
        return self._image(record)

    def disk_path(self, image: Image) -> Path:
        """The stored disk file of a VM-only image."""
        if image.disk_file is None:
            raise InvalidArgument(f"image {image.short_id} is not a VM disk image")
        return image.disk_file

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

    def _collect(self) -> builtins.list[Path]:
        """Move every blob and layer no image row refers to into tmp/ (caller holds the lock);
        return the trash directories to delete once the lock is released."""
        used_layers: set[str] = set()
        used_blobs: set[str] = set()
        for record in self._state.images():
            used_layers.update(record.config.get("layers", []))
            used_blobs.add(record.id.removeprefix("sha256:"))
            manifest = record.config.get("manifest")
            if not manifest:
                continue
            used_blobs.add(manifest.removeprefix("sha256:"))
            with contextlib.suppress(OSError, ValueError, KeyError):
                doc = json.loads((self.blobs_dir / manifest.removeprefix("sha256:")).read_bytes())
                used_blobs.update(d["digest"].removeprefix("sha256:") for d in doc["layers"])
        pinned_layers, pinned_blobs = self._pins()
        used_layers |= pinned_layers
        used_blobs |= pinned_blobs
        doomed = [self.layers_dir / n for n in os.listdir(self.layers_dir) if n not in used_layers]
        doomed += [self.blobs_dir / n for n in os.listdir(self.blobs_dir) if n not in used_blobs]
        if not doomed:
            return []
        trash = Path(tempfile.mkdtemp(prefix="rm-", dir=self.tmp_dir))
        for n, path in enumerate(doomed):
            with contextlib.suppress(FileNotFoundError):
                os.rename(path, trash / f"{n}-{path.name}")
        return [trash]

    def _pins(self) -> tuple[set[str], set[str]]:
        """Layers and blobs pinned by live (flock-ed) staging dirs (caller holds the lock)."""
        layers: set[str] = set()
        blobs: set[str] = set()
        for entry in os.scandir(self.tmp_dir):
            pins = Path(entry.path) / "pins"
            if not pins.is_file():
                continue
            for line in pins.read_text().splitlines():
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    doc = json.loads(line)
                    layers.update(doc["layers"])
                    blobs.update(doc["blobs"])
        return layers, blobs

    @staticmethod
    def _empty_trash(trash: builtins.list[Path]) -> None:
        for path in trash:
            shutil.rmtree(path, ignore_errors=True)

    def _write_index(self) -> None:
        """index.json from the rows: one entry per tag, one per untagged image (caller holds the lock)."""
        manifests = []
        for record in self._state.images():
            digest = record.config.get("manifest")
            if not digest:
                continue
            try:
                size = (self.blobs_dir / digest.removeprefix("sha256:")).stat().st_size
            except FileNotFoundError:
                continue
            desc: dict[str, Any] = {"mediaType": MT_MANIFEST, "digest": digest, "size": size}
            for tag in record.tags:
                manifests.append({**desc, "annotations": {REF_NAME: tag}})
            if not record.tags:
                manifests.append(desc)
        index = {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": manifests}
        _write_atomic(self.root / "index.json", _canonical(index), tmp_dir=self.tmp_dir)

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
            return self._by_digest(parsed, ref), None
        tag = str(parsed)
        record = self._state.find_image(tag)
        if record is not None and tag in record.tags:
            return record, tag
        if refs.looks_like_id(ref):
            return self._by_id(ref, ref), None
        raise NotFound(f"image not known: {ref}", hint=_not_found_hint(parsed))

    def _by_digest(self, parsed: refs.Reference, ref: str) -> ImageRecord:
        """NAME@sha256:... names a manifest digest (or, as before, an image id)."""
        for record in self._state.images():
            if parsed.digest in (record.id, record.config.get("manifest")):
                return record
        raise NotFound(f"image not known: {ref}", hint=_not_found_hint(None))

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
            manifest=record.config.get("manifest", ""),
            history=tuple(record.config.get("history") or ()),
            disk=record.config.get("disk") or None,
            disk_file=self.blob_path(record.config["disk"]["digest"]) if record.config.get("disk") else None,
        )

    def _insert(self, image_id: str, row: dict[str, Any], size: int, tags: builtins.list[str]) -> None:
        # Not StateStore.add_image: its INSERT OR REPLACE deletes the existing row first, and the
        # ON DELETE CASCADE then drops every other tag of the image.  An upsert keeps them.
        with self._state.write() as db:
            db.execute(
                "INSERT INTO images (id, config, size, created_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET size = excluded.size",
                (image_id, json.dumps(row), size, time.time()),
            )
            for tag in tags:
                db.execute(
                    "INSERT INTO image_tags (name, image_id) VALUES (?, ?) "
                    "ON CONFLICT(name) DO UPDATE SET image_id = excluded.image_id",
                    (tag, image_id),
                )

    def _delete_rows(self, record: ImageRecord) -> None:
        """Delete the image's rows (caller holds the lock)."""
        try:
            with self._state.write() as db:
                db.execute("DELETE FROM image_tags WHERE image_id = ?", (record.id,))
                db.execute("DELETE FROM images WHERE id = ?", (record.id,))
        except sqlite3.IntegrityError:
            users = self._state.containers_using_image(record.id)
            raise Conflict(
                f"image {record.id[7:19]} is still used by container(s): {', '.join(users)}",
                hint="remove those containers first (isobox rm -f NAME)",
            ) from None
        self._write_index()


# -- blobs --------------------------------------------------------------------------------------


def config_blob(config: ImageConfig, diff_ids: builtins.list[str], history: builtins.list[dict[str, Any]],
                created: str) -> bytes:
    doc = {
        "created": created,
        "architecture": "amd64",
        "os": "linux",
        "config": config.to_oci(),
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    }
    return _canonical(doc)


def manifest_blob(staged: Staged) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "digest": _digest(staged.config), "size": len(staged.config)},
        "layers": [{"mediaType": mt, "digest": d, "size": size} for mt, d, size, _ in staged.layers],
    }
    return _canonical(doc)


def _canonical(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _write_atomic(path: Path, data: bytes, tmp_dir: Path | None = None) -> None:
    fd, tmp = tempfile.mkstemp(dir=tmp_dir or path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


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
    """layers.walk, with the root named "." (tree digests are keyed on that name)."""
    entries = layers.walk(root)
    rel, st, full = next(entries)
    if include_root:
        yield ".", st, full
    yield from entries


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


def _syncfs(path: Path) -> None:
    """syncfs(2): make every file written on ``path``'s filesystem durable in one call; far cheaper
    than an fsync per file of a layer with thousands of them.  Falls back to sync(2)."""
    import ctypes

    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


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
