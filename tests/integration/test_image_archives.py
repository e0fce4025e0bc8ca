"""image load / save at the store level: round trips, both archive formats, damaged and hostile archives.

Every refused archive must leave the store exactly as it was: no row, no blob, no layer, no tmp/ debris."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from isobox.images import ImageStore, archive
from isobox.images.layers import BadArchive
from isobox.state import StateStore
from tests.conftest import require

pytestmark = pytest.mark.root
require("/bin/busybox")


def quiet(_: str) -> None:
    pass


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StateStore]:
    monkeypatch.setenv("ISOBOX_ROOT", str(tmp_path / "root"))
    store = StateStore(tmp_path / "root" / "db")
    yield store
    store.close()


@pytest.fixture
def images(state: StateStore) -> ImageStore:
    return ImageStore(state)


@pytest.fixture
def other(tmp_path: Path) -> Iterator[ImageStore]:
    """A second, empty store to load into."""
    db = StateStore(tmp_path / "other" / "db")
    yield ImageStore(db, tmp_path / "other" / "images")
    db.close()


def snapshot(store: ImageStore) -> tuple[list[str], list[str], list[str], list[str]]:
    return (sorted(r.id for r in store._state.images()), sorted(os.listdir(store.blobs_dir)),
            sorted(os.listdir(store.layers_dir)), sorted(os.listdir(store.tmp_dir)))


def tar_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def oci_archive(layers: list[bytes], tag: str = "localhost/crafted:1", gzip_layers: bool = False,
                config_cmd: list[str] | None = None) -> dict[str, bytes]:
    """An OCI archive's files, digests all correct, around the given layer tars."""
    blobs = [gzip.compress(layer) if gzip_layers else layer for layer in layers]
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": config_cmd or ["sh"]},
                         "rootfs": {"type": "layers", "diff_ids": [sha(layer) for layer in layers]}}).encode()
    mt = "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if gzip_layers else "")
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": sha(config), "size": len(config)},
                           "layers": [{"mediaType": mt, "digest": sha(b), "size": len(b)} for b in blobs]}).encode()
    index = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha(manifest), "size": len(manifest),
        "annotations": {"org.opencontainers.image.ref.name": tag}}]}).encode()
    files = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}', "index.json": index}
    for blob in [config, manifest, *blobs]:
        files["blobs/sha256/" + sha(blob)[7:]] = blob
    return files


def layer_with(*members: tuple[str, bytes, str]) -> bytes:
    """A layer tar of (name, data, kind) members; kind "file", "symlink:TARGET", "link:TARGET", "chr"."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            if kind.startswith("symlink:"):
                info.type, info.linkname = tarfile.SYMTYPE, kind[8:]
            elif kind.startswith("link:"):
                info.type, info.linkname = tarfile.LNKTYPE, kind[5:]
            elif kind == "chr":
                info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
            info.size = len(data) if kind == "file" else 0
            tar.addfile(info, io.BytesIO(data) if kind == "file" else None)
    return buf.getvalue()


def write(path: Path, files: dict[str, bytes], compress: bool = False) -> Path:
    data = tar_bytes(files)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


# -- round trips -----------------------------------------------------------------------------------


def test_save_then_load_gives_the_same_image(images: ImageStore, other: ImageStore, tmp_path: Path) -> None:
    built = images.build_busybox()
    out = tmp_path / "bb.tar"
    archive.save(images, "busybox", out, quiet)
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
    assert {"oci-layout", "index.json", "blobs/sha256/" + built.id[7:]} <= names
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == "busybox:latest"
    (loaded,) = archive.load(other, out, quiet)
    assert (loaded.id, loaded.tags, loaded.manifest) == (built.id, ("busybox:latest",), built.manifest)
    assert [p.name for p in loaded.layers] == [p.name for p in built.layers]
    assert os.readlink(loaded.layers[0] / "bin" / "sh") == "/bin/busybox"
    # the store's own OCI layout names it too
    layout = json.loads((other.root / "index.json").read_text())
    assert layout["manifests"][0]["digest"] == built.manifest


def test_a_gzipped_archive_and_gzipped_layers_load(other: ImageStore, tmp_path: Path) -> None:
    layer = layer_with(("hello.txt", b"hi\n", "file"), ("etc/.wh.gone", b"", "file"))
    path = write(tmp_path / "a.tar.gz", oci_archive([layer], gzip_layers=True), compress=True)
    (image,) = archive.load(other, path, quiet)
    assert image.tags == ("localhost/crafted:1",)
    assert (image.layers[0] / "hello.txt").read_text() == "hi\n"
    assert os.lstat(image.layers[0] / "etc" / "gone").st_rdev == 0  # whiteout, overlayfs style
    assert image.config.cmd == ("sh",)


def test_a_docker_save_archive_loads(other: ImageStore, tmp_path: Path) -> None:
    layer = layer_with(("a.txt", b"a", "file"))
    config = json.dumps({"config": {"Cmd": ["true"]},
                         "rootfs": {"type": "layers", "diff_ids": [sha(layer)]}}).encode()
    files = {
        f"{sha(config)[7:]}.json": config,
        "abc/layer.tar": layer,
        "manifest.json": json.dumps([{"Config": f"{sha(config)[7:]}.json", "RepoTags": ["localhost/dock:2"],
                                      "Layers": ["abc/layer.tar"]}]).encode(),
    }
    (image,) = archive.load(other, write(tmp_path / "d.tar", files), quiet)
    assert image.id == sha(config)
    assert image.tags == ("localhost/dock:2",)
    assert (image.layers[0] / "a.txt").read_bytes() == b"a"


# -- damaged archives ----------------------------------------------------------------------------


def test_a_corrupt_layer_blob_is_rejected_and_nothing_added(other: ImageStore, tmp_path: Path) -> None:
    layer = layer_with(("f", b"x" * 1000, "file"))
    files = oci_archive([layer])
    name = "blobs/sha256/" + sha(layer)[7:]
    files[name] = files[name][:600] + b"Y" + files[name][601:]
    before = snapshot(other)
    with pytest.raises(BadArchive, match="digest"):
        archive.load(other, write(tmp_path / "c.tar", files), quiet)
    assert snapshot(other) == before


def test_a_wrong_diff_id_is_rejected(other: ImageStore, tmp_path: Path) -> None:
    good, evil = layer_with(("f", b"good", "file")), layer_with(("f", b"evil", "file"))
    files = oci_archive([good], gzip_layers=False)
    # Swap the blob for another tar and fix the manifest digest, leaving the config's diff_id.
    files = {k: v for k, v in files.items() if k != "blobs/sha256/" + sha(good)[7:]}
    for name, data in list(files.items()):
        if b'"layers"' in data and b"schemaVersion" in data and b"config" in data:
            manifest = json.loads(data)
            manifest["layers"][0].update(digest=sha(evil), size=len(evil))
            new = json.dumps(manifest).encode()
            del files[name]
            files["blobs/sha256/" + sha(new)[7:]] = new
            index = json.loads(files["index.json"])
            index["manifests"][0].update(digest=sha(new), size=len(new))
            files["index.json"] = json.dumps(index).encode()
    files["blobs/sha256/" + sha(evil)[7:]] = evil
    before = snapshot(other)
    with pytest.raises(BadArchive, match="diff_id"):
        archive.load(other, write(tmp_path / "w.tar", files), quiet)
    assert snapshot(other) == before


def test_a_truncated_archive_is_rejected_and_nothing_added(images: ImageStore, other: ImageStore,
                                                           tmp_path: Path) -> None:
    images.build_busybox()
    out = tmp_path / "bb.tar"
    archive.save(images, "busybox", out, quiet)
    data = out.read_bytes()
    before = snapshot(other)
    for cut in (len(data) // 2, 3000, 700):  # inside the blobs (the end is only padding)
        out.write_bytes(data[:cut])
        with pytest.raises(BadArchive):
            archive.load(other, out, quiet)
        assert snapshot(other) == before


def test_not_an_archive(other: ImageStore, tmp_path: Path) -> None:
    path = tmp_path / "x.tar"
    path.write_bytes(b"hello" * 1000)
    with pytest.raises(BadArchive):
        archive.load(other, path, quiet)
    with pytest.raises(BadArchive, match="neither"):
        archive.load(other, write(tmp_path / "y.tar", {"README": b"hi"}), quiet)


# -- hostile archives ----------------------------------------------------------------------------

HOSTILE = {
    "dotdot": [("../../../../tmp/isobox-pwned", b"x", "file")],
    "absolute": [("/tmp/isobox-pwned", b"x", "file")],
    "symlink-escape": [("a/b", b"", "symlink:../../../tmp")],
    "through-symlink": [("esc", b"", "symlink:/tmp"), ("esc/isobox-pwned", b"x", "file")],
    "hardlink-outside": [("h", b"", "link:../../../etc/passwd")],
    "device": [("dev/mem", b"", "chr")],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_layers_are_refused(other: ImageStore, tmp_path: Path, case: str) -> None:
    layer = layer_with(("ok.txt", b"fine", "file"), *HOSTILE[case])
    before = snapshot(other)
    with pytest.raises(BadArchive):
        archive.load(other, write(tmp_path / "h.tar", oci_archive([layer])), quiet)
    assert snapshot(other) == before
    assert not Path("/tmp/isobox-pwned").exists()


@pytest.mark.parametrize("name", ["../escape.json", "/etc/passwd"])
def test_hostile_outer_entries_are_refused(other: ImageStore, tmp_path: Path, name: str) -> None:
    files = oci_archive([layer_with(("f", b"f", "file"))])
    files[name] = b"{}"
    with pytest.raises(BadArchive):
        archive.load(other, write(tmp_path / "o.tar", files), quiet)
    assert snapshot(other)[0] == []


def test_an_outer_symlink_leaving_the_archive_is_refused(other: ImageStore, tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("manifest.json")
        info.type, info.linkname = tarfile.SYMTYPE, "../../etc/passwd"
        tar.addfile(info)
    path = tmp_path / "s.tar"
    path.write_bytes(buf.getvalue())
    with pytest.raises(BadArchive, match="outside"):
        archive.load(other, path, quiet)


# -- store operations around archives -----------------------------------------------------------


def test_tag_prune_and_gc(images: ImageStore, other: ImageStore, tmp_path: Path) -> None:
    layer = layer_with(("only-here", b"1", "file"))
    (image,) = archive.load(other, write(tmp_path / "a.tar", oci_archive([layer])), quiet)
    other.tag(image.id, "localhost/second:1")
    assert set(other.resolve("localhost/second:1").tags) == {"localhost/crafted:1", "localhost/second:1"}
    assert other.prune()["ImagesDeleted"] == []  # tagged: kept
    assert other.prune(all_unused=True, in_use={image.id})["ImagesDeleted"] == []  # in use: kept
    result = other.prune(all_unused=True)
    assert result["ImagesDeleted"] == [image.id] and result["SpaceReclaimed"] > 0
    assert snapshot(other) == ([], [], [], [])


def test_concurrent_loads_and_prunes_stay_consistent(other: ImageStore, tmp_path: Path) -> None:
    import threading

    from isobox.errors import NotFound

    path = write(tmp_path / "c.tar", oci_archive([layer_with(("a", b"a" * 5000, "file")),
                                                  layer_with(("b", b"b" * 5000, "file"))]))
    errors: list[BaseException] = []
    stop = threading.Event()

    def loader() -> None:
        try:
            for _ in range(12):
                (image,) = archive.load(other, path, quiet)
                with _maybe_gone():  # a prune may have taken it already; if not, it must be whole
                    other.resolve(image.id)
                with _maybe_gone():
                    other.remove(image.id, force=True)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            stop.set()

    def pruner() -> None:
        try:
            while not stop.is_set():
                other.prune(all_unused=True)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def _maybe_gone() -> object:
        import contextlib

        return contextlib.suppress(NotFound)

    threads = [threading.Thread(target=loader), threading.Thread(target=pruner)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    for image in other.list():
        assert all(layer.is_dir() for layer in image.layers)
    other.prune(all_unused=True)
    assert snapshot(other) == ([], [], [], [])
