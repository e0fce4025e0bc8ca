"""The image store with real builds of the busybox image into a temporary root."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from isobox.errors import Conflict, InvalidArgument, NotFound
from isobox.images import ImageStore
from isobox.images.store import disk_usage
from isobox.state import StateStore
from tests.conftest import require

BUSYBOX = Path("/bin/busybox")
_REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.root
require(str(BUSYBOX))


class Interrupted(Exception):
    pass


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StateStore]:
    monkeypatch.setenv("ISOBOX_ROOT", str(tmp_path))
    store = StateStore(tmp_path / "db")
    yield store
    store.close()


@pytest.fixture
def images(state: StateStore) -> ImageStore:
    return ImageStore(state)


def _rows(state: StateStore) -> list[tuple[str, list[str]]]:
    return [(r.id, r.tags) for r in state.images()]


def _tmp_entries(images: ImageStore) -> list[str]:
    return os.listdir(images.tmp_dir)


def test_build_makes_a_busybox_root(images: ImageStore, tmp_path: Path) -> None:
    messages: list[str] = []
    image = images.build_busybox(progress=messages.append)

    assert images.root == tmp_path / "images"  # ISOBOX_ROOT decides where the store lives
    assert image.tags == ("busybox:latest",)
    assert image.id.startswith("sha256:") and len(image.id) == 71
    assert image.config.cmd == ("sh",)
    assert image.config.env == ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)
    assert image.config.workdir == "/"
    assert len(image.layers) == 1
    layer = image.layers[0]
    assert layer.parent == tmp_path / "images" / "layers"
    assert len(messages) >= 5 and any("applets" in m for m in messages)

    binary = layer / "bin" / "busybox"
    assert stat.S_IMODE(binary.lstat().st_mode) == 0o755
    assert binary.read_bytes() == BUSYBOX.read_bytes()
    assert os.readlink(layer / "bin" / "sh") == "/bin/busybox"
    assert os.readlink(layer / "bin" / "ls") == "/bin/busybox"
    assert os.readlink(layer / "usr" / "bin" / "env") == "/bin/busybox"
    assert not (layer / "linuxrc").exists()

    passwd = (layer / "etc" / "passwd").read_text().splitlines()
    assert "root:x:0:0:root:/root:/bin/sh" in passwd
    assert "nobody:x:65534:65534:nobody:/nonexistent:/bin/false" in passwd
    assert "user:x:1000:1000::/home/user:/bin/sh" in passwd
    group = (layer / "etc" / "group").read_text().splitlines()
    assert {"root:x:0:", "nogroup:x:65534:", "user:x:1000:", "tty:x:5:"} <= set(group)
    for rel in ("etc/hosts", "etc/resolv.conf"):
        assert (layer / rel).is_file()

    modes = {rel: stat.S_IMODE((layer / rel).lstat().st_mode) for rel in ("tmp", "var/tmp", "root", ".")}
    assert modes == {"tmp": 0o1777, "var/tmp": 0o1777, "root": 0o700, ".": 0o755}
    for rel in ("proc", "sys", "dev", "run", "etc", "home/user"):
        assert (layer / rel).is_dir(), rel
    if os.geteuid() == 0:
        home = (layer / "home" / "user").stat()
        assert (home.st_uid, home.st_gid) == (1000, 1000)
        assert binary.stat().st_uid == 0

    assert _tmp_entries(images) == []
    assert _rows(images._state) == [(image.id, ["busybox:latest"])]


def test_rebuild_is_deterministic_and_reuses_the_layer(images: ImageStore) -> None:
    first = images.build_busybox()
    inode = first.layers[0].stat().st_ino
    messages: list[str] = []
    second = images.build_busybox(progress=messages.append)

    assert second.id == first.id
    assert second.layers == first.layers
    assert second.layers[0].stat().st_ino == inode  # the same directory, not a fresh copy
    assert any("reused" in m for m in messages)
    assert second.created == first.created
    assert os.listdir(images.layers_dir) == [first.layers[0].name]
    assert _tmp_entries(images) == []
    # OCI digests: the layer dir is named by the diff_id, the sha256 of its (uncompressed) tar blob.
    blob = images.blob_path("sha256:" + first.layers[0].name)
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == first.layers[0].name
    assert hashlib.sha256(images.blob_path(first.id).read_bytes()).hexdigest() == first.id[7:]


def test_resolve(images: ImageStore) -> None:
    built = images.build_busybox()
    for ref in ("busybox", "busybox:latest", built.id, built.id[7:], built.short_id, built.id[7:11],
                "busybox@" + built.id):
        assert images.resolve(ref).id == built.id, ref

    with pytest.raises(NotFound) as info:
        images.resolve("nope")
    assert info.value.message == "image not known: nope"
    assert info.value.hint and "busybox" not in info.value.hint

    with pytest.raises(NotFound) as info:
        images.resolve("busybox:1.0")
    assert info.value.hint == "build it with: isobox image build busybox"

    for bad in ("Busybox", "", "bus box", "a..b", "sha256:xyz"):
        with pytest.raises(InvalidArgument):
            images.resolve(bad)


def test_resolve_in_an_empty_store_points_at_the_build(images: ImageStore) -> None:
    with pytest.raises(NotFound) as info:
        images.resolve("busybox")
    assert info.value.message == "image not known: busybox"
    assert info.value.hint == "build it with: isobox image build busybox"


def test_list_shows_real_sizes(images: ImageStore) -> None:
    built = images.build_busybox()
    listed = images.list()
    assert [i.id for i in listed] == [built.id]
    assert listed[0].size > 1_000_000
    assert listed[0].size == disk_usage(built.layers[0])
    assert listed[0].size >= BUSYBOX.stat().st_size


def test_a_second_tag_survives_a_rebuild_and_rm_of_a_tag_only_untags(images: ImageStore) -> None:
    built = images.build_busybox()
    images.build_busybox("localhost/bb:1")
    images.build_busybox()  # rebuilding busybox:latest must not drop localhost/bb:1
    assert set(images.resolve("busybox").tags) == {"busybox:latest", "localhost/bb:1"}

    assert images.remove("localhost/bb:1", force=False, in_use_by=["web"]) == ["Untagged: localhost/bb:1"]
    assert images.resolve("busybox").tags == ("busybox:latest",)
    assert built.layers[0].is_dir()
    with pytest.raises(NotFound):
        images.resolve("localhost/bb:1")


def test_rm_by_id_of_an_image_with_several_tags_needs_force(images: ImageStore) -> None:
    built = images.build_busybox()
    images.build_busybox("busybox:stable")
    with pytest.raises(Conflict):
        images.remove(built.short_id, force=False, in_use_by=[])
    removed = images.remove(built.short_id, force=True, in_use_by=[])
    assert removed == ["Untagged: busybox:latest", "Untagged: busybox:stable", f"Deleted: {built.id}"]
    assert _rows(images._state) == []


def test_remove_in_use_conflicts_then_force_removes_rows_and_files(images: ImageStore) -> None:
    built = images.build_busybox()
    with pytest.raises(Conflict) as info:
        images.remove("busybox", force=False, in_use_by=["web", "db"])
    assert "web" in info.value.message and "db" in info.value.message
    assert built.layers[0].is_dir()
    assert len(_rows(images._state)) == 1

    removed = images.remove("busybox", force=True, in_use_by=["web", "db"])
    assert removed == ["Untagged: busybox:latest", f"Deleted: {built.id}"]
    assert _rows(images._state) == []
    assert not built.layers[0].exists()
    assert os.listdir(images.layers_dir) == []
    assert _tmp_entries(images) == []
    with pytest.raises(NotFound):
        images.resolve("busybox")
    with pytest.raises(NotFound):
        images.remove("busybox", force=True, in_use_by=[])


def test_remove_keeps_a_layer_another_image_shares(images: ImageStore) -> None:
    from isobox.images.store import ImageConfig

    built = images.build_busybox()
    # A second image over the same layer with another config (what a Dockerfile CMD gives).
    with images.staging() as stage:
        os.rename(built.layers[0], stage / "rootfs")  # hand the very same tree back in: same digest
        second = images.commit([stage / "rootfs"], ImageConfig(cmd=("true",)), "localhost/true:1",
                               lambda _: None, reproducible=True)
    assert second.id != built.id
    assert second.layers == built.layers
    images.remove("busybox", force=False, in_use_by=[])
    assert built.layers[0].is_dir()  # localhost/true:1 still uses it
    images.remove("localhost/true:1", force=False, in_use_by=[])
    assert not built.layers[0].exists()


def test_interrupted_build_leaves_nothing(images: ImageStore) -> None:
    def progress(message: str) -> None:
        if "applets" in message:
            assert _tmp_entries(images) != []  # the build is under way in tmp/
            raise Interrupted(message)

    with pytest.raises(Interrupted):
        images.build_busybox(progress=progress)
    assert _tmp_entries(images) == []
    assert os.listdir(images.layers_dir) == []
    assert _rows(images._state) == []


def test_interrupted_at_packing_leaves_nothing(images: ImageStore) -> None:
    def progress(message: str) -> None:
        if message.startswith("packing"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        images.build_busybox(progress=progress)
    assert _tmp_entries(images) == []
    assert os.listdir(images.layers_dir) == []
    assert os.listdir(images.blobs_dir) == []
    assert _rows(images._state) == []


def test_debris_of_a_dead_builder_is_swept(images: ImageStore, state: StateStore) -> None:
    debris = images.tmp_dir / "build-dead"
    (debris / "bin").mkdir(parents=True)
    (images.tmp_dir / "stray-file").write_text("x")
    ImageStore(state)
    assert _tmp_entries(images) == []


def test_concurrent_builds_agree(images: ImageStore, state: StateStore) -> None:
    other = ImageStore(state)
    results: list[str] = []
    errors: list[BaseException] = []

    def build(store: ImageStore) -> None:
        try:
            results.append(store.build_busybox().id)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=build, args=(s,)) for s in (images, other, images, other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(set(results)) == 1
    assert len(os.listdir(images.layers_dir)) == 1
    assert _tmp_entries(images) == []
    assert _rows(state) == [(results[0], ["busybox:latest"])]


def test_bad_tag_is_refused_before_anything_is_built(images: ImageStore) -> None:
    for tag in ("BusyBox", "busybox@sha256:" + "a" * 64):
        with pytest.raises(InvalidArgument):
            images.build_busybox(tag)
    assert _tmp_entries(images) == [] and _rows(images._state) == []


def test_force_cannot_orphan_a_container_row(images: ImageStore, state: StateStore) -> None:
    """The engine removes the containers first (podman rmi -f); the store never leaves a row dangling."""
    from isobox.state import ContainerRecord

    built = images.build_busybox()
    state.add_container(ContainerRecord(id="c" * 64, name="web", image_id=built.id, image_ref="busybox", spec={}))
    with pytest.raises(Conflict) as info:
        images.remove("busybox", force=True, in_use_by=["web"])
    assert "web" in info.value.message
    assert images.resolve("busybox").id == built.id
    assert built.layers[0].is_dir()
    state.delete_container("c" * 64)
    images.remove("busybox", force=True, in_use_by=[])
    assert _rows(state) == []


def test_missing_busybox_binary_says_what_to_install() -> None:
    from isobox.errors import RuntimeFailure
    from isobox.images import busybox

    with pytest.raises(RuntimeFailure) as info:
        busybox.find_binary(Path("/nonexistent/busybox"))
    assert info.value.hint == "apt-get install busybox-static"


_BUILDER = """
import sys, time
from pathlib import Path
from isobox.images import ImageStore
from isobox.state import StateStore

def progress(message):
    print(message, flush=True)
    if sys.argv[2] == "hang" and "applets" in message:
        time.sleep(600)

image = ImageStore(StateStore(Path(sys.argv[1]))).build_busybox(progress=progress)
print("ID", image.id, flush=True)
"""


def _builder(tmp_path: Path, mode: str) -> subprocess.Popen[str]:
    env = {**os.environ, "ISOBOX_ROOT": str(tmp_path), "PYTHONPATH": str(_REPO)}
    argv = [sys.executable, "-c", _BUILDER, str(tmp_path / "db"), mode]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)


def test_concurrent_builds_in_separate_processes(images: ImageStore, state: StateStore, tmp_path: Path) -> None:
    procs = [_builder(tmp_path, "run") for _ in range(3)]
    outputs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    ids = {line.split()[1] for out in outputs for line in out.splitlines() if line.startswith("ID ")}
    assert len(ids) == 1
    assert len(os.listdir(images.layers_dir)) == 1
    assert _tmp_entries(images) == []
    assert _rows(state) == [(ids.pop(), ["busybox:latest"])]


def test_a_builder_killed_mid_way_leaves_debris_the_next_store_sweeps(
    images: ImageStore, state: StateStore, tmp_path: Path
) -> None:
    proc = _builder(tmp_path, "hang")
    assert proc.stdout is not None
    for line in proc.stdout:
        if "applets" in line:
            break
    debris = _tmp_entries(images)
    assert len(debris) == 1
    ImageStore(state)  # a live build is left alone
    assert _tmp_entries(images) == debris
    proc.kill()
    proc.wait()
    proc.stdout.close()
    ImageStore(state)
    assert _tmp_entries(images) == []
    assert os.listdir(images.layers_dir) == []
    assert _rows(state) == []
