"""``image load`` and ``image save``: docker-save and OCI archives in, OCI archives out.

Loading never trusts the archive: its outer tar is read as a stream into a locked staging
directory under the store's tmp/ (regular files only; symlinks and hard links become aliases
that must stay inside the archive), every blob is checked against its digest and size, every
layer's uncompressed digest against the config's diff_ids, and layers are unpacked by
``layers.unpack``, which refuses hostile entries.  Only when all images of the archive have
passed does ``ImageStore.store`` move them into place; any failure leaves the store as it was.

The two formats:

- docker save (also ``podman save --format docker-archive``): ``manifest.json`` lists, per image,
  ``Config`` (``<hex>.json`` or ``blobs/sha256/<hex>``), ``RepoTags`` and ``Layers`` (tar paths).
- OCI image layout in a tar (``podman save --format oci-archive``, ``isobox image save``):
  ``oci-layout``, ``index.json`` with manifest descriptors (the tag in the
  ``org.opencontainers.image.ref.name`` annotation), blobs under ``blobs/sha256/``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import re
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path
from typing import Any

from isobox.errors import InvalidArgument, NotFound
from isobox.images import layers, refs
from isobox.images.layers import BadArchive
from isobox.images.store import (
    MT_CONFIG,
    MT_INDEX,
    MT_LAYER,
    MT_LAYER_GZIP,
    MT_MANIFEST,
    REF_NAME,
    Image,
    ImageStore,
    Progress,
    Staged,
)

MAX_JSON = 16 << 20  # manifests, configs, indexes
MAX_ENTRIES = 100_000  # files in the outer archive (blobs, manifests)
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
_HEX_NAME = re.compile(r"(?:blobs/sha256/)?([0-9a-f]{64})(?:\.json|/layer\.tar)?")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def load(store: ImageStore, archive: Path, progress: Progress) -> list[Image]:
    try:
        raw = open(archive, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise InvalidArgument(f"cannot open {archive}: {exc.strerror}") from None
    with raw, store.staging() as stage:
        progress(f"reading {archive.name}")
        files = _Files(stage / "archive")
        files.extract(raw)
        if "manifest.json" in files:
            found = _docker_images(files)
        elif "index.json" in files:
            found = _oci_images(files)
        else:
            raise BadArchive(f"{archive} is neither a docker save archive (manifest.json) nor an OCI archive (index.json)")
        if not found:
            raise BadArchive(f"{archive} holds no image")
        staged = []
        for n, (candidate, tags) in enumerate(found):
            staged.append((_unpack_layers(store, files, candidate, stage / f"image-{n}", progress), tags))
        return [store.store(s, tags, progress) for s, tags in staged]


def save(store: ImageStore, ref: str, out: Path, progress: Progress) -> Image:
    """Write ``ref`` as an OCI archive to ``out`` (tmp + rename: never a half file)."""
    image = store.resolve(ref)
    if image.disk:
        raise InvalidArgument(f"image {ref} is a VM disk image: image save writes container images only",
                              hint=f"its disk is {store.disk_path(image)}")
    manifest_bytes = store.read_blob(image.manifest) if image.manifest else b""
    manifest = store.manifest(image)
    name = _save_name(ref, image)
    desc: dict[str, Any] = {"mediaType": manifest.get("mediaType") or MT_MANIFEST, "digest": image.manifest,
                            "size": len(manifest_bytes)}
    if name:
        desc["annotations"] = {REF_NAME: name}
    index = {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": [desc]}
    blobs = [image.manifest, manifest["config"]["digest"], *dict.fromkeys(d["digest"] for d in manifest["layers"])]
    out = out.absolute()
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
    try:
        with os.fdopen(fd, "wb") as f, tarfile.open(fileobj=f, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            _add_bytes(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
            _add_bytes(tar, "index.json", json.dumps(index, separators=(",", ":")).encode())
            _add_dir(tar, "blobs/")
            _add_dir(tar, "blobs/sha256/")
            for digest in blobs:
                progress(f"writing blob {digest[7:19]}")
                path = store.blob_path(digest)
                info = tarfile.TarInfo("blobs/sha256/" + digest[7:])
                info.size, info.mode, info.mtime = path.stat().st_size, 0o644, 0
                with open(path, "rb") as blob:
                    tar.addfile(info, blob)
        os.chmod(tmp, 0o644)
        os.rename(tmp, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return image


def _save_name(ref: str, image: Image) -> str:
    with contextlib.suppress(InvalidArgument):
        parsed = refs.parse(ref)
        if parsed.digest is None and str(parsed) in image.tags:
            return str(parsed)
    return image.tags[0] if image.tags else ""


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    import io

    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, io.BytesIO(data))


def _add_dir(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
    tar.addfile(info)


# -- the outer archive ------------------------------------------------------------------------


class _Files:
    """The archive's regular files, extracted flat into ``root`` and looked up by name."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(mode=0o700)
        self._paths: dict[str, Path] = {}
        self._aliases: dict[str, str] = {}

    def __contains__(self, name: str) -> bool:
        return self._resolve(name) in self._paths

    def extract(self, raw: Any) -> None:
        stream, _ = layers.open_maybe_compressed(raw)
        budget = layers._free_bytes(self.root)
        total = 0
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for count, member in enumerate(tar, 1):
                    if count > MAX_ENTRIES:
                        raise BadArchive(f"archive has more than {MAX_ENTRIES} entries; image archives have a few per layer")
                    name = layers.clean_name(member.name)
                    if member.isdir() or not name:
                        continue
                    if member.isreg():
                        total += member.size
                        if total > budget:
                            raise BadArchive(f"archive needs more than the {budget >> 20} MiB free in the store")
                        path = self.root / str(len(self._paths))
                        source = tar.extractfile(member)
                        assert source is not None
                        with open(path, "xb") as out:
                            shutil.copyfileobj(source, out, 1 << 20)
                        self._paths[name] = path
                    elif member.issym():
                        target = posixpath.normpath(posixpath.join(posixpath.dirname(name), member.linkname))
                        if member.linkname.startswith("/") or target.startswith(".."):
                            raise BadArchive(f"archive entry {name!r} links outside the archive: {member.linkname!r}")
                        self._aliases[name] = target
                    elif member.islnk():
                        self._aliases[name] = layers.clean_name(member.linkname)
                    else:
                        raise BadArchive(f"archive entry {name!r} is not a regular file")
        except (tarfile.TarError, EOFError, zlib.error) as exc:
            raise BadArchive(f"archive is corrupt or truncated: {exc}") from exc
        except OSError as exc:
            if exc.errno is not None:
                raise
            raise BadArchive(f"archive is corrupt or truncated: {exc}") from exc

    def path(self, name: str) -> Path:
        found = self._paths.get(self._resolve(name))
        if found is None:
            raise BadArchive(f"archive lacks {name!r}")
        return found

    def json(self, name: str) -> Any:
        path = self.path(name)
        if path.stat().st_size > MAX_JSON:
            raise BadArchive(f"{name!r} in the archive is too large for a JSON document")
        try:
            return json.loads(path.read_bytes())
        except ValueError as exc:
            raise BadArchive(f"{name!r} in the archive is not valid JSON: {exc}") from None

    def blob(self, desc: Any, what: str) -> Path:
        """The file of an OCI descriptor, its digest and size verified."""
        if not isinstance(desc, dict) or not _DIGEST.fullmatch(str(desc.get("digest", ""))):
            raise BadArchive(f"bad {what} descriptor in the archive: {str(desc)[:200]}")
        path = self.path("blobs/sha256/" + desc["digest"][7:])
        if "size" in desc and path.stat().st_size != desc["size"]:
            raise BadArchive(f"{what} {desc['digest'][:19]} is {path.stat().st_size} bytes, "
                             f"the manifest says {desc['size']}: the archive is damaged")
        _verify(path, desc["digest"], what)
        return path

    def _resolve(self, name: str) -> str:
        name = posixpath.normpath(name)
        for _ in range(16):
            if name not in self._aliases:
                return name
            name = self._aliases[name]
        raise BadArchive(f"archive entry {name!r} is a link loop")


def _verify(path: Path, digest: str, what: str) -> None:
    with open(path, "rb") as f:
        actual = "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()
    if actual != digest:
        raise BadArchive(f"{what} {digest[:19]} does not match its digest (it is {actual[:19]}): the archive is damaged")


# -- formats ----------------------------------------------------------------------------------

# An image found in an archive: its config bytes and its layer files with their media types.
_Candidate = tuple[bytes, list[tuple[Path, str, str | None]], bytes | None]  # config, [(file, mt, digest)], manifest


def _docker_images(files: _Files) -> list[tuple[_Candidate, list[str]]]:
    doc = files.json("manifest.json")
    if not isinstance(doc, list):
        raise BadArchive("manifest.json of the archive is not a list")
    found: list[tuple[_Candidate, list[str]]] = []
    for entry in doc:
        if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str) \
                or not isinstance(entry.get("Layers"), list):
            raise BadArchive("manifest.json entry without Config and Layers")
        config_path = files.path(entry["Config"])
        match = _HEX_NAME.fullmatch(entry["Config"])
        if match:
            _verify(config_path, "sha256:" + match.group(1), "config")
        config = config_path.read_bytes()
        layer_files: list[tuple[Path, str, str | None]] = [(files.path(str(name)), "", None) for name in entry["Layers"]]
        tags = [_tag(t) for t in entry.get("RepoTags") or []]
        found.append(((config, layer_files, None), [t for t in tags if t]))
    return found


def _oci_images(files: _Files) -> list[tuple[_Candidate, list[str]]]:
    index = files.json("index.json")
    found: list[tuple[_Candidate, list[str]]] = []
    for desc in _manifests(files, index, depth=0):
        manifest_path = files.blob(desc, "manifest")
        manifest = files.json("blobs/sha256/" + desc["digest"][7:])
        if not isinstance(manifest, dict) or not isinstance(manifest.get("layers"), list):
            raise BadArchive(f"manifest {desc['digest'][:19]} has no layers list")
        config = files.blob(manifest.get("config"), "config").read_bytes()
        layer_files: list[tuple[Path, str, str | None]] = []
        for layer in manifest["layers"]:
            mt = str(layer.get("mediaType", "")) if isinstance(layer, dict) else ""
            layer_files.append((files.blob(layer, "layer"), mt, str(layer["digest"])))
        annotations = desc.get("annotations") or {}
        tag = _tag(annotations.get(REF_NAME, "")) or _tag(annotations.get("io.containerd.image.name", ""))
        found.append(((config, layer_files, manifest_path.read_bytes()), [tag] if tag else []))
    return found


def _manifests(files: _Files, index: Any, depth: int) -> list[dict[str, Any]]:
    if depth > 4 or not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
        raise BadArchive("index.json of the archive has no manifests list")
    out = []
    for desc in index["manifests"]:
        mt = desc.get("mediaType") if isinstance(desc, dict) else None
        if mt in (MT_INDEX, MT_DOCKER_LIST):
            files.blob(desc, "index")
            nested = files.json("blobs/sha256/" + desc["digest"][7:])
            out += [d for d in _manifests(files, nested, depth + 1) if _is_amd64(d)]
        elif mt in (MT_MANIFEST, MT_DOCKER_MANIFEST, None):
            out.append(desc)
    return out


def _is_amd64(desc: dict[str, Any]) -> bool:
    platform = desc.get("platform") or {}
    return platform.get("os", "linux") == "linux" and platform.get("architecture", "amd64") == "amd64"


def _tag(name: Any) -> str:
    """A full reference from an archive, normalized; "" for a bare tag or something malformed."""
    if not isinstance(name, str) or not name:
        return ""
    try:
        parsed = refs.parse(name.removeprefix("docker.io/library/"))
    except InvalidArgument:
        return ""
    if parsed.digest is not None or (":" not in name and "/" not in name):
        return ""  # a digest reference or a bare "latest": no name to give the image
    return str(parsed)


def _unpack_layers(store: ImageStore, files: _Files, candidate: _Candidate, stage: Path,
                   progress: Progress) -> Staged:
    config_bytes, layer_files, manifest = candidate
    try:
        config = json.loads(config_bytes)
        diff_ids = list(config["rootfs"]["diff_ids"])
    except (ValueError, KeyError, TypeError):
        raise BadArchive("image config without rootfs.diff_ids") from None
    if len(diff_ids) != len(layer_files) or not all(_DIGEST.fullmatch(str(d)) for d in diff_ids):
        raise BadArchive(f"image config lists {len(diff_ids)} diff_ids for {len(layer_files)} layers")
    stage.mkdir()
    staged = Staged(config=config_bytes, layers=[], manifest=manifest)
    for n, ((path, media_type, digest), diff_id) in enumerate(zip(layer_files, diff_ids, strict=True)):
        hexid = diff_id[7:]
        with open(path, "rb") as raw:
            stream, compression = layers.open_maybe_compressed(raw)
            if media_type and ("zstd" in media_type or (compression == "gzip") != ("gzip" in media_type)):
                if "zstd" in media_type:
                    raise BadArchive("zstd-compressed layers are not supported yet")
                raise BadArchive(f"layer {n + 1} is {compression or 'uncompressed'} but its media type is {media_type}")
            if hexid not in staged.dirs:
                store.pin(stage.parent, [hexid])  # before looking: a concurrent prune then keeps it
            if (store.layers_dir / hexid).is_dir() or hexid in staged.dirs:
                progress(f"layer {n + 1}/{len(diff_ids)} {hexid[:12]}: already in the store, verifying")
                actual = _hash_stream(stream)
            else:
                progress(f"layer {n + 1}/{len(diff_ids)} {hexid[:12]}: unpacking")
                target = stage / f"layer-{n}"
                target.mkdir(mode=0o755)
                actual = layers.unpack(stream, target)
                staged.dirs[hexid] = target
        if actual != diff_id:
            raise BadArchive(f"layer {n + 1} does not match its diff_id {diff_id[:19]} (it is {actual[:19]}): "
                             "the archive is damaged")
        if digest is None:
            digest = diff_id if not compression else _file_digest(path)
        staged.blobs[digest] = path
        mt = media_type or (MT_LAYER_GZIP if compression else MT_LAYER)
        staged.layers.append((mt, digest, path.stat().st_size, diff_id))
    if manifest is None:
        staged.manifest = None  # made by the store with MT_CONFIG
    return staged


def _hash_stream(stream: Any) -> str:
    digest = hashlib.sha256()
    try:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    except (EOFError, zlib.error, OSError) as exc:
        raise BadArchive(f"layer is corrupt or truncated: {exc}") from exc
    return "sha256:" + digest.hexdigest()


def _file_digest(path: Path) -> str:
    with open(path, "rb") as f:
        return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()


def check_output(path: Path) -> None:
    if not path.parent.is_dir():
        raise NotFound(f"directory {path.parent} does not exist")


__all__ = ["MT_CONFIG", "load", "save"]
