"""The VM level's pure parts: QEMU command line, spec script, cpio writer, monitor boot failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from isobox.runtimes.vm import accel, guest, qemu, specdisk
from isobox.runtimes.vm.monitor import Console, MonitorConfig, run


def _cfg(tmp_path: Path, accel_name: str = "tcg") -> qemu.VmConfig:
    return qemu.VmConfig(run_dir=tmp_path, kernel=tmp_path / "k", initramfs=tmp_path / "i",
                         root_disk=tmp_path / "r.qcow2", spec_disk=tmp_path / "s.img", accel=accel_name,
                         memory_mib=256, cpus=2)


def test_cmdline_is_a_sandboxed_microvm_without_legacy_devices(tmp_path: Path) -> None:
    argv = qemu.qemu_cmdline(_cfg(tmp_path))
    joined = " ".join(argv)
    assert argv[0] == "qemu-system-x86_64"
    assert argv[argv.index("-sandbox") + 1] == "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
    machine = argv[argv.index("-machine") + 1]
    assert machine.startswith("microvm,") and all(f"{d}=off" in machine for d in ("pit", "pic", "rtc"))
    assert "-nodefaults" in argv and "-no-reboot" in argv
    assert "tcg,tb-size=" in joined and "-m 256M" in joined and "-smp 2" in joined
    assert "serial=isobox-root" in joined and "serial=isobox-spec" in joined
    for port in (*qemu.PORTS, qemu.AGENT_PORT):
        assert f"name={port}" in joined
    assert f"unix:{tmp_path}/qmp.sock,server=on,wait=off" in joined


def test_kvm_uses_the_host_cpu(tmp_path: Path) -> None:
    argv = qemu.qemu_cmdline(_cfg(tmp_path, "kvm"))
    assert argv[argv.index("-accel") + 1] == "kvm" and argv[argv.index("-cpu") + 1] == "host"


def test_spec_script_quotes_everything(tmp_path: Path) -> None:
    proc = specdisk.GuestProcess(argv=["sh", "-c", "echo \"$X\" 'q' $(x)"], env={"X": "a b'c"},
                                 workdir="/w d", uid=1000, gid=100, groups=[100, 5])
    script = specdisk.spec_script(proc, "h'ost", stdin=False)
    assert script.endswith("#END\n")
    out = subprocess.run(["sh", "-c", script.replace("#END", "") + 'printf "%s\\n" "$ISOBOX_HOSTNAME" "$@"'],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == "h'ost"
    assert out[1:] == [specdisk.RUN_HELPER, "/newroot", "1000", "100", "100,5", "/w d", "1", "X=a b'c", "--",
                       "sh", "-c", "echo \"$X\" 'q' $(x)"]
    assert len(specdisk.disk_image(script)) % 4096 == 0


def test_cpio_is_readable_by_cpio(tmp_path: Path) -> None:
    assert Path("/bin/busybox").exists(), "scripts/setup.sh installs busybox-static"
    archive = guest.Cpio()
    archive.file("a/b/c.txt", b"hello")
    archive.symlink("a/link", "b/c.txt")
    archive.chardev("dev/console", 5, 1)
    (tmp_path / "x.cpio").write_bytes(archive.finish())
    with open(tmp_path / "x.cpio", "rb") as fh:
        listing = subprocess.run(["busybox", "cpio", "-t"], stdin=fh, capture_output=True, text=True,
                                 check=True).stdout.split()
    assert {"a", "a/b", "a/b/c.txt", "a/link", "dev", "dev/console"} <= set(listing)


def test_accelerator_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ISOBOX_VM_ACCEL", "tcg")
    chosen = accel.choose()
    assert chosen.name == "tcg" and chosen.warning
    monkeypatch.setenv("ISOBOX_VM_ACCEL", "kvm")
    assert accel.choose() == accel.Accel("kvm", None)


def test_console_keeps_the_tail_and_sees_the_ready_mark(tmp_path: Path) -> None:
    console = Console(str(tmp_path / "console.log"))
    console.feed(b"".join(b"line %d\r\n" % i for i in range(100)) + b"isobox-init: work")
    assert not console.ready
    console.feed(b"load\n")
    assert console.ready and console.tail().splitlines()[-1] == "isobox-init: workload"
    assert len(console.tail().splitlines()) == 20


FAKE_QEMU = textwrap.dedent("""
    import os, socket, sys
    run_dir = sys.argv[1]
    socks = {}
    for name in ("console", "stdin", "stdout", "stderr", "exit", "signal"):
        s = socket.socket(socket.AF_UNIX)
        s.bind(os.path.join(run_dir, name + ".sock"))
        s.listen(1)
        socks[name] = s
    conns = {name: s.accept()[0] for name, s in socks.items()}
    conn = conns["console"]
    conn.sendall(b"[    1.0] Kernel panic - not syncing: VFS: Unable to mount root fs\\n")
    sys.exit(1)
""")


def test_a_guest_that_never_starts_its_workload_reports_the_console(tmp_path: Path) -> None:
    script = tmp_path / "fake_qemu.py"
    script.write_text(FAKE_QEMU)
    cfg = MonitorConfig(argv=[sys.executable, str(script), str(tmp_path)], run_dir=str(tmp_path),
                        log_path=str(tmp_path / "ctr.log"), console_log=str(tmp_path / "console.log"),
                        exit_path=str(tmp_path / "exit.json"), wait_attach=False, boot_timeout=20)
    r, w = os.pipe()
    run(cfg, w)
    os.close(w)
    status = json.loads(os.read(r, 65536))
    os.close(r)
    assert "stopped before its workload started" in status["error"]
    assert "Kernel panic" in status["error"]


def test_snapshot_listing_is_parsed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from isobox.runtimes.vm import snapshots

    overlay = tmp_path / "root.qcow2"
    overlay.write_bytes(b"")
    listing = textwrap.dedent("""\
        Snapshot list:
        ID        TAG               VM SIZE                DATE     VM CLOCK     ICOUNT
        1         s1               89.2 MiB 2026-11-27 18:03:48 00:00:40.958
        2         disk-only           0 B 2026-11-27 18:05:00 00:00:00.000
    """)
    monkeypatch.setattr(snapshots, "_qemu_img", lambda *args: listing)
    snaps = snapshots.list_snapshots(overlay)
    assert [(s["Name"], s["Memory"], s["VmStateSize"]) for s in snaps] == [
        ("s1", True, "89.2 MiB"), ("disk-only", False, "0 B")]
    with pytest.raises(Exception, match="invalid snapshot name"):
        snapshots.check_name("../x")
