"""``isobox image import-disk``: raw, qcow2 and ISO files become VM-only images; bad files are
refused with one line and exit 125, leaving the store as it was."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Isobox, require

pytestmark = pytest.mark.root
require("qemu-img")

MIB = 1 << 20


def qemu_img_create(path: Path, fmt: str, size: str = "4M", *extra: str) -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", fmt, *extra, str(path), size], check=True)
    return path


def fake_iso(path: Path) -> Path:
    data = bytearray(64 * 1024)
    data[0x8001:0x8006] = b"CD001"
    path.write_bytes(bytes(data))
    return path


def inspect(box: Isobox, ref: str) -> dict:
    return json.loads(box.cli("image", "inspect", ref, check=True).stdout)[0]


def store_state(box: Isobox) -> tuple[list[str], list[str], str]:
    blobs = sorted(os.listdir(box.root / "images" / "blobs" / "sha256"))
    tmp = sorted(os.listdir(box.root / "images" / "tmp"))
    return blobs, tmp, box.cli("image", "ls", "-q", check=True).stdout


@pytest.mark.parametrize(("fmt", "name", "expected_ref"), [
    ("qcow2", "localhost/freebsd:14", "localhost/freebsd:14"),
    ("raw", "Other-OS", None),
])
def test_import_disk_lifecycle(isobox: Isobox, tmp_path: Path, fmt: str, name: str, expected_ref: str | None) -> None:
    if expected_ref is None:  # an invalid reference (upper case) is refused like any other tag
        disk = qemu_img_create(tmp_path / f"d.{fmt}", fmt)
        done = isobox.cli("image", "import-disk", str(disk), "--name", name)
        assert done.returncode == 125, done.stderr
        name, expected_ref = "other-os", "other-os:latest"
    disk = qemu_img_create(tmp_path / f"disk.{fmt}", fmt)
    done = isobox.cli("image", "import-disk", "-q", str(disk), "--name", name)
    assert done.returncode == 0, done.stderr
    image_id = done.stdout.strip()
    assert image_id.startswith("sha256:")

    info = inspect(isobox, name)
    assert info["Id"] == image_id and info["RepoTags"] == [expected_ref]
    assert info["RootFS"]["Layers"] == []
    facts = info["Disk"]
    assert facts["kind"] == "disk" and facts["format"] == fmt and facts["virtual_size"] == 4 * MIB
    assert facts["stored_format"] == "qcow2"
    stored = isobox.root / "images" / "blobs" / "sha256" / facts["digest"].removeprefix("sha256:")
    probe = json.loads(subprocess.run(["qemu-img", "info", "--output", "json", str(stored)],
                                      check=True, capture_output=True, text=True).stdout)
    assert probe["format"] == "qcow2" and probe["virtual-size"] == 4 * MIB

    listed = {i["Id"]: i for i in json.loads(isobox.cli("image", "ls", "--format", "json", check=True).stdout)}
    assert listed[image_id]["Size"] == stored.stat().st_blocks * 512 > 0
    assert expected_ref.split(":")[0] in isobox.cli("image", "ls", check=True).stdout

    for isolation in ("container", "gvisor"):
        refused = isobox.cli("run", "--rm", "--isolation", isolation, name, "true")
        if isolation == "gvisor" and "not available" in refused.stderr:
            continue
        assert refused.returncode == 125
        assert f"image {name} is a VM disk image: run it with --isolation vm" in refused.stderr
    assert isobox.cli("image", "save", "-o", str(tmp_path / "x.tar"), name).returncode == 125
    isobox.cli("image", "prune", check=True)  # a tagged disk image and its blob survive a prune
    assert stored.is_file() and inspect(isobox, name)["Id"] == image_id

    removed = isobox.cli("image", "rm", name, check=True).stdout
    assert f"Deleted: {image_id}" in removed
    assert isobox.cli("image", "inspect", name).returncode == 125
    assert not stored.exists()


def test_import_iso(isobox: Isobox, tmp_path: Path) -> None:
    iso = fake_iso(tmp_path / "install.iso")
    done = isobox.cli("image", "import-disk", str(iso), "--name", "localhost/installer:1")
    assert done.returncode == 0, done.stderr
    facts = inspect(isobox, "localhost/installer:1")["Disk"]
    assert facts == {**facts, "kind": "iso", "format": "iso9660", "virtual_size": 64 * 1024}
    stored = isobox.root / "images" / "blobs" / "sha256" / facts["digest"].removeprefix("sha256:")
    assert stored.read_bytes() == iso.read_bytes()
    isobox.cli("image", "rm", "localhost/installer:1", check=True)
    assert not stored.exists()


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    corrupt = qemu_img_create(tmp_path / "corrupt.qcow2", "qcow2")
    with open(corrupt, "r+b") as f:  # keep the magic, break the header: cluster_bits at offset 20
        f.seek(20)
        f.write(b"\x00\x00\x00\x63")
    base = qemu_img_create(tmp_path / "base.qcow2", "qcow2")
    overlay = qemu_img_create(tmp_path / "overlay.qcow2", "qcow2", "4M", "-F", "qcow2", "-b", str(base))
    text = tmp_path / "notes.txt"
    text.write_text("this is not a disk image\n")
    gz = tmp_path / "archive.gz"
    gz.write_bytes(b"\x1f\x8b" + bytes(1022))
    return {
        "corrupt qcow2": (corrupt, "qcow2"),
        "backing file": (overlay, "backing file"),
        "text file": (text, "not a disk image"),
        "gzip": (gz, "not a disk image"),
        "missing": (tmp_path / "missing.qcow2", "no such file"),
    }


@pytest.mark.parametrize("case", ["corrupt qcow2", "backing file", "text file", "gzip", "missing"])
def test_bad_files_refused(isobox: Isobox, tmp_path: Path, case: str) -> None:
    path, message = _bad_files(tmp_path)[case]
    before = store_state(isobox)
    done = isobox.cli("image", "import-disk", str(path), "--name", "localhost/bad:1")
    assert done.returncode == 125, done.stderr
    assert message in done.stderr
    assert done.stderr.strip().splitlines()[0].startswith("Error")
    assert isobox.cli("image", "inspect", "localhost/bad:1").returncode == 125
    assert store_state(isobox) == before


def test_missing_file_via_api_refused(isobox: Isobox, tmp_path: Path) -> None:
    """The daemon checks too, not only the CLI: the file may vanish in between."""
    import http.client
    import socket

    class UnixConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.connect(str(isobox.run_root / "isobox.sock"))

    conn = UnixConnection("localhost")
    body = json.dumps({"path": str(tmp_path / "gone.qcow2"), "name": "localhost/gone:1"})
    conn.request("POST", "/images/import-disk", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 400, resp.read()
    assert isobox.cli("image", "inspect", "localhost/gone:1").returncode == 125
