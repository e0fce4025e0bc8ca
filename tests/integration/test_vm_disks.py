"""VM root disks without a boot: the ext4 base, the overlays copied from its template, and their
removal with the image (real mkfs.ext4 and qemu-img on a private state root)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from isobox.images import vmdisk
from isobox.images.store import Image, ImageConfig
from isobox.runtimes.vm import guest
from tests.conftest import require

require("mkfs.ext4", "qemu-img")


def _image(tmp_path: Path, hexid: str) -> Image:
    layer = tmp_path / f"layer-{hexid[:4]}"
    (layer / "bin").mkdir(parents=True)
    (layer / "bin" / "hello").write_text("#!/bin/sh\necho hi\n")
    return Image(id="sha256:" + hexid, tags=(), config=ImageConfig(), layers=(layer,), size=0, created=time.time())


def _backing(disk: Path) -> str:
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(disk)], capture_output=True,
                                     text=True, check=True).stdout)
    return str(info["backing-filename"])


def test_overlays_come_from_one_template_and_go_with_their_image(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ISOBOX_ROOT", str(tmp_path / "root"))
    kept, gone = _image(tmp_path, "a1" * 32), _image(tmp_path, "b2" * 32)
    bases = [vmdisk.ensure_base(kept), vmdisk.ensure_base(gone)]
    overlays = [tmp_path / "vm1.qcow2", tmp_path / "vm2.qcow2", tmp_path / "vm3.qcow2"]
    for base, overlay in zip([bases[0], bases[0], bases[1]], overlays, strict=True):
        vmdisk.create_overlay(base, overlay)
    # Each overlay is a qcow2 on its image's base, private to its VM, and the template is made once.
    assert [_backing(o) for o in overlays] == [str(bases[0]), str(bases[0]), str(bases[1])]
    assert all(o.stat().st_mode & 0o777 == 0o600 for o in overlays)
    templates = sorted(p.name.split("-")[0] for p in (vmdisk.disks_dir() / "overlays").iterdir())
    assert templates == ["a1" * 16, "b2" * 16]
    subprocess.run(["qemu-img", "check", str(overlays[0])], check=True, capture_output=True)

    vmdisk.collect({kept.id})  # `image rm` of the other image
    assert bases[0].exists() and not bases[1].exists()
    assert [p.name.split("-")[0] for p in (vmdisk.disks_dir() / "overlays").iterdir()] == ["a1" * 16]
    vmdisk.collect(set())
    assert not list(vmdisk.disks_dir().glob("*.ext4")) and not list(vmdisk.disks_dir().glob("overlays/*"))


def test_a_rebuilt_base_gets_a_new_template(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A template records its base's virtual size: one made for an older base must not be reused."""
    monkeypatch.setenv("ISOBOX_ROOT", str(tmp_path / "root"))
    image = _image(tmp_path, "c3" * 32)
    base = vmdisk.ensure_base(image)
    vmdisk.create_overlay(base, tmp_path / "old.qcow2")
    base.unlink()
    (image.layers[0] / "big").write_bytes(b"x" * (8 << 20))  # a bigger tree: a bigger base
    base = vmdisk.ensure_base(image)
    vmdisk.create_overlay(base, tmp_path / "new.qcow2")
    sizes = [json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(tmp_path / n)], capture_output=True,
                                       text=True, check=True).stdout)["virtual-size"] for n in ("old.qcow2", "new.qcow2")]
    assert sizes[1] == -(-base.stat().st_size // 512) * 512 != sizes[0]  # qcow2 counts whole sectors
    assert len(list((vmdisk.disks_dir() / "overlays").iterdir())) == 2


def test_the_guest_agent_is_on_the_tools_disk_not_in_the_initramfs() -> None:
    """QEMU keeps a copy of the initramfs for the VM's life: the agent (~6 MiB with its libraries)
    lives on a shared read-only disk instead, and the initramfs only links to where it is mounted."""
    require("debugfs")
    boot = guest.boot_files()
    assert boot.tools is not None and boot.tools.stat().st_mode & 0o222 == 0
    with open(boot.initramfs, "rb") as fh:
        names = subprocess.run(["busybox", "cpio", "-t"], stdin=fh, capture_output=True, text=True).stdout.split()
    assert "usr/sbin/qemu-ga" in names and "lib64" in names and "tools" in names
    assert boot.initramfs.stat().st_size < 5 << 20  # busybox, isobox-run, modules: no agent
    for path in ("/usr/sbin/qemu-ga", "/lib64/ld-linux-x86-64.so.2"):
        found = subprocess.run(["debugfs", "-R", f"stat {path}", str(boot.tools)], capture_output=True, text=True)
        assert "Type: regular" in found.stdout, found.stderr
