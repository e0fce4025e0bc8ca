"""The VM level's pure parts: QEMU command line, spec script, cpio writer, monitor boot failure,
the pty relay's protocol and the monitor's half of it, exec -t's ports."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from isobox.attach import Decoder, Frame, encode_json
from isobox.errors import InvalidArgument
from isobox.images.store import Image, ImageConfig
from isobox.logs import LogWriter, read_entries
from isobox.runtimes.vm import accel, guest, qemu, relay, specdisk
from isobox.runtimes.vm.monitor import IO, Console, MonitorConfig, VmPump, run
from isobox.runtimes.vm.relay import GuestFrame
from isobox.runtimes.vm.runtime import VmRuntime
from isobox.spec import Isolation, WorkloadSpec


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
    assert joined.count("virtserialport,") == 2  # every port costs each boot ~90 ms under TCG
    for port in (qemu.IO_PORT, qemu.AGENT_PORT):
        assert f"name={port}" in joined
    assert f"unix:{tmp_path}/qmp.sock,server=on,wait=off" in joined
    assert "isobox-tools" not in joined  # no agent package: no tools disk
    with_tools = " ".join(qemu.qemu_cmdline(dataclasses.replace(_cfg(tmp_path), tools_disk=tmp_path / "t.ext4")))
    assert f"file={tmp_path}/t.ext4,format=raw,if=none,readonly=on" in with_tools
    assert "serial=isobox-tools" in with_tools


def test_a_spec_without_network_or_volumes_carries_a_direct_start() -> None:
    """guestboot.c starts such a workload itself: hostname, count and argv after the script's NUL."""
    proc = specdisk.GuestProcess(argv=["sh", "-c", ""], env={"X": "a b"}, workdir="/", uid=0, gid=0)
    script = specdisk.spec_script(proc, "web", stdin=False)
    argv = specdisk.workload_argv(proc, pty=False, stdin=False)
    image = specdisk.disk_image(script, ("web", argv))
    assert len(image) % 4096 == 0
    head, rest = image.split(b"\0", 1)
    assert head.decode() == script  # the script stage still has everything
    fields = rest.split(b"\0")
    assert fields[:3] == [b"isobox-direct", b"web", str(len(argv)).encode()]
    assert [f.decode() for f in fields[3:3 + len(argv)]] == argv and argv[-1] == ""  # an empty arg survives
    assert set(b"".join(fields[3 + len(argv):])) == set()  # then only the padding
    assert specdisk.disk_image(script).rstrip(b"\0") == script.encode()  # network or volumes: the script


def test_kvm_uses_the_host_cpu(tmp_path: Path) -> None:
    argv = qemu.qemu_cmdline(_cfg(tmp_path, "kvm"))
    assert argv[argv.index("-accel") + 1] == "kvm" and argv[argv.index("-cpu") + 1] == "host"


def test_spec_script_quotes_everything(tmp_path: Path) -> None:
    proc = specdisk.GuestProcess(argv=["sh", "-c", "echo \"$X\" 'q' $(x)"], env={"X": "a b'c"},
                                 workdir="/w d", uid=1000, gid=100, groups=[100, 5])
    script = specdisk.spec_script(proc, "h'ost", stdin=False)
    assert script.endswith("\n#END\n")  # guestboot.c copies the script up to this line
    out = subprocess.run(["sh", "-c", script.replace("#END", "") + 'printf "%s\\n" "$ISOBOX_HOSTNAME" "$@"'],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == "h'ost"
    assert out[1:] == [specdisk.RUN_HELPER, "--relay", "io", "--sync", "/newroot", "1000", "100", "100,5", "/w d", "1", "X=a b'c", "--",
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


def test_translation_cache_cap(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ISOBOX_VM_ACCEL", "tcg")
    monkeypatch.delenv("ISOBOX_VM_TB_SIZE", raising=False)
    assert accel.choose().tb_size_mib == accel.TB_SIZE_MIB == 64
    monkeypatch.setenv("ISOBOX_VM_TB_SIZE", "16")
    chosen = accel.choose()
    cfg = qemu.VmConfig(run_dir=tmp_path, kernel=tmp_path / "k", initramfs=tmp_path / "i",
                        root_disk=tmp_path / "r", spec_disk=tmp_path / "s", accel="tcg",
                        tb_size_mib=chosen.tb_size_mib)
    assert "tcg,tb-size=16" in qemu.qemu_cmdline(cfg)
    assert VmRuntime().host_facts()["tcg_cache_mib"] == 16
    for bad in ("0", "-5", "16M", "4097", " 8"):
        monkeypatch.setenv("ISOBOX_VM_TB_SIZE", bad)
        with pytest.raises(InvalidArgument, match="ISOBOX_VM_TB_SIZE"):
            accel.choose()
    facts = VmRuntime().host_facts()  # `system info` says why; compare leaves the VM level out
    assert facts["available"] is False and "ISOBOX_VM_TB_SIZE" in facts["why"]
    image = Image(id="sha256:" + "0" * 64, tags=("busybox:latest",), config=ImageConfig(), layers=(), size=0,
                  created=0.0)
    with pytest.raises(InvalidArgument, match="ISOBOX_VM_TB_SIZE"):  # run/create fail before the row
        VmRuntime().validate(WorkloadSpec(image="busybox", isolation=Isolation.VM).validate(), image)


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
    for name in ("console", "io"):
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


# -- terminals (run -t, exec -t) and panics ---------------------------------------------------------


def test_the_port_bus_has_room_for_exec_t_sessions(tmp_path: Path) -> None:
    """exec -t's ports are hot-plugged into the bus, at least 8 at once beside the boot ports."""
    joined = " ".join(qemu.qemu_cmdline(_cfg(tmp_path)))
    assert f"socket,id=io,path={tmp_path}/io.sock" in joined and "virtserialport,chardev=io,name=io" in joined
    bus, max_ports = joined.split("virtio-serial-device,id=")[1].split()[0].split(",max_ports=")
    assert f"{bus}.0" == qemu.SERIAL_BUS
    assert int(max_ports) - 1 - joined.count("virtserialport,") >= 8
    assert set(qemu.SOCKETS) >= {"attach", "tty", "io", "qga", "qmp"}


def test_the_workload_runs_behind_the_relay(tmp_path: Path) -> None:
    proc = specdisk.GuestProcess(argv=["sh"], env={"A": "1"}, workdir="/", uid=0, gid=0)
    assert specdisk.helper_argv(proc)[:2] == [specdisk.RUN_HELPER, specdisk.ROOT]  # exec: qemu-ga's pipes
    assert specdisk.helper_argv(proc, "ptyx-1", pty=True)[:4] == [specdisk.RUN_HELPER, "--pty", "ptyx-1", specdisk.ROOT]
    # run -t: a pty (its stdin is the pty's); the relay syncs before it reports the exit
    assert "set -- /bin/isobox-run --pty io --sync /newroot" in specdisk.spec_script(proc, "h", stdin=True, pty=True)
    # -i: a stdin pipe the relay feeds; else /dev/null
    assert "set -- /bin/isobox-run --relay io --stdin --sync /newroot" in specdisk.spec_script(proc, "h", stdin=True)
    assert "set -- /bin/isobox-run --relay io --sync /newroot" in specdisk.spec_script(proc, "h", stdin=False)
    # --rm: its disk is deleted next, so no sync before the exit report
    assert "set -- /bin/isobox-run --relay io /newroot" in specdisk.spec_script(proc, "h", stdin=False, sync=False)


def test_client_frames_become_the_relays() -> None:
    def decoded(data: bytes) -> list[tuple[GuestFrame, bytes]]:
        return list(relay.GuestDecoder().feed(data))

    assert decoded(relay.to_guest(Frame.STDIN, b"ls\r")) == [(GuestFrame.STDIN, b"ls\r")]
    assert decoded(relay.to_guest(Frame.STDIN_EOF, b"")) == [(GuestFrame.STDIN_EOF, b"")]
    resize = encode_json(Frame.RESIZE, {"rows": 40, "cols": 100})[8:]
    assert decoded(relay.to_guest(Frame.RESIZE, resize)) == [(GuestFrame.RESIZE, b"40 100")]
    assert decoded(relay.to_guest(Frame.SIGNAL, b"15")) == [(GuestFrame.SIGNAL, b"15")]
    for kind, payload in ((Frame.RESIZE, b"{}"), (Frame.RESIZE, b'{"rows": 0, "cols": 80}'),
                          (Frame.RESIZE, b'{"rows": 70000, "cols": 80}'), (Frame.RESIZE, b"not json"),
                          (Frame.SIGNAL, b"0"), (Frame.SIGNAL, b"999"), (Frame.SIGNAL, b"TERM"),
                          (Frame.STDIN, b""), (Frame.STDOUT, b"x"), (Frame.EXIT, b"{}")):
        assert relay.to_guest(kind, payload) == b"", (kind, payload)


def test_relay_frames_decode_across_reads() -> None:
    stream = (relay._encode(GuestFrame.READY, b"42") + relay._encode(GuestFrame.STDOUT, b"hello\r\n")
              + relay._encode(GuestFrame.EXIT, b"3"))
    decoder = relay.GuestDecoder()
    frames = [frame for i in range(len(stream)) for frame in decoder.feed(stream[i:i + 1])]
    assert frames == [(GuestFrame.READY, b"42"), (GuestFrame.STDOUT, b"hello\r\n"), (GuestFrame.EXIT, b"3")]
    assert relay.number(b"42") == 42 and relay.number(b"x") is None
    with pytest.raises(ValueError, match="the guest's relay"):
        list(relay.GuestDecoder().feed(bytes([99, 0, 0, 0, 0, 0, 0, 0])))


def test_the_monitor_relays_the_workload(tmp_path: Path) -> None:
    """VmPump on the io port: the relay's stdout and stderr go to the log and the clients as
    such; the clients' frames go to the relay, translated; its EXIT is the code and stops QEMU."""
    import socket

    names = ("console", relay.WORKLOAD_PORT)
    pairs = {name: socket.socketpair() for name in names}
    ports = {name: ours for name, (ours, _) in pairs.items()}
    guest = {name: theirs for name, (_, theirs) in pairs.items()}
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(tmp_path / "attach.sock"))
    listener.listen(1)
    sleeper = subprocess.Popen(["sleep", "30"])  # stands in for QEMU: EXIT must stop it
    log_fd = os.open(tmp_path / "ctr.log", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        pump = VmPump(sleeper.pid, listener, ports, Console(str(tmp_path / "console.log")), LogWriter(log_fd),
                      stdin=True)
        client, theirs = socket.socketpair()
        pump.clients.append(theirs)
        guest["io"].sendall(relay._encode(GuestFrame.READY, b"7") + relay._encode(GuestFrame.STDOUT, b"$ ")
                            + relay._encode(GuestFrame.STDERR, b"oops"))
        pump._on_output(ports["io"].fileno(), IO)
        client.settimeout(5)
        assert list(Decoder().feed(client.recv(4096))) == [(Frame.STDOUT, b"$ "), (Frame.STDERR, b"oops")]
        entries = read_entries((tmp_path / "ctr.log").read_bytes())
        assert [(e.stream, e.data) for e in entries] == [(1, b"$ "), (2, b"oops")]
        pump._on_frame(Frame.STDIN, b"exit\r")
        pump._on_frame(Frame.RESIZE, b'{"rows": 24, "cols": 80}')
        pump._on_frame(Frame.SIGNAL, b"2")
        guest["io"].settimeout(5)
        got = list(relay.GuestDecoder().feed(guest["io"].recv(4096)))
        assert got == [(GuestFrame.STDIN, b"exit\r"), (GuestFrame.RESIZE, b"24 80"), (GuestFrame.SIGNAL, b"2")]
        assert pump.guest_exit() == (None, None)
        guest["io"].sendall(relay._encode(GuestFrame.EXIT, b"3"))
        pump._on_output(ports["io"].fileno(), IO)
        assert pump.guest_exit() == (3, None)
        assert sleeper.wait(5) == -15  # SIGTERM: QEMU's clean exit
        guest["io"].close()  # the guest side going away closes the stream
        before = pump.open_outputs
        pump._on_output(ports["io"].fileno(), IO)
        assert pump.open_outputs == before - 1
    finally:
        sleeper.kill()
        sleeper.wait()
        os.close(log_fd)


def test_the_init_s_error_line_is_the_run_s_error(tmp_path: Path) -> None:
    console = Console(str(tmp_path / "console.log"))
    console.feed(b"[    3.1] virtio_blk virtio1: [vda] 2048 512-byte logical blocks\r\n"
                 b"isobox-init: error: cannot mount the volume at /data\r\n")
    assert console.init_error == "cannot mount the volume at /data"
    assert console.failure("the VM stopped before its workload started").startswith(
        "the VM's init failed: cannot mount the volume at /data; the VM stopped before its workload started; "
        "last console lines:\n")


def test_console_names_a_panic_and_keeps_what_led_to_it(tmp_path: Path) -> None:
    console = Console(str(tmp_path / "console.log"))
    console.feed(b"isobox-init: workload\r\n[    8.29] sysrq: Trigger a crash\r\n"
                 b"[    8.29] Kernel panic - not syncing: sysrq triggered crash\r\n")
    console.feed(b"".join(b"[    8.30]  frame_%d+0x1/0x2\r\n" % i for i in range(40)))
    assert console.panic == "Kernel panic - not syncing: sysrq triggered crash"
    message = console.failure("the VM stopped")
    assert message.startswith("the guest kernel panicked (Kernel panic - not syncing: sysrq triggered crash); "
                              "the VM stopped; last console lines:\n")
    tail = message.split("\n")[1:]
    assert tail[:2] == ["isobox-init: workload", "[    8.29] sysrq: Trigger a crash"]
    assert len(tail) == 6  # what led to it, the panic, 3 lines after: not the whole stack dump
    assert b"frame_39" in (tmp_path / "console.log").read_bytes()  # the log keeps everything
    quiet = Console(str(tmp_path / "c2.log"))
    assert quiet.failure("the VM stopped") == "the VM stopped"


def test_exec_t_is_refused_for_a_firmware_booted_os() -> None:
    from types import SimpleNamespace

    from isobox.runtimes.base import ExecRequest

    image = SimpleNamespace(disk={"kind": "qcow2"})
    spec = SimpleNamespace(image="localhost/os:1")
    request = ExecRequest(["sh"], {}, None, None, tty=True, interactive=True, privileged=False)
    with pytest.raises(InvalidArgument, match="exec -t is not supported for localhost/os:1"):
        VmRuntime().exec(SimpleNamespace(id="0" * 64), spec, image, request)  # type: ignore[arg-type]


def test_an_adopted_qemu_is_polled_waited_and_killed_like_a_popen() -> None:
    """isobox-run --launch makes the monitor QEMU's parent without a Popen (vmstart.Adopted)."""
    from isobox.runtimes.vm.vmstart import Adopted

    # posix_spawn, not Popen: a dropped Popen reaps its child in __del__, racing Adopted.
    quick = Adopted(os.posix_spawnp("sh", ["sh", "-c", "exit 3"], os.environ))
    assert quick.wait(10) == 3 and quick.poll() == 3
    slow = Adopted(os.posix_spawnp("sleep", ["sleep", "30"], os.environ))
    assert slow.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        slow.wait(0.05)
    slow.kill()
    assert slow.wait(10) == -9
    slow.kill()  # reaped already: nothing to signal, no error


def test_a_launched_qemu_that_cannot_start_is_reported_by_its_monitor(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """isobox-run --launch forks QEMU, then becomes the monitor: a QEMU that cannot even be run
    ends as a start error that quotes qemu.log, and leaves no process behind."""
    from isobox.errors import RuntimeFailure

    monkeypatch.setenv("ISOBOX_CACHE", str(tmp_path / "cache"))  # isobox-run built there by gcc
    rdir = tmp_path / "run"
    rdir.mkdir()
    missing = str(tmp_path / "no-such-qemu")
    MonitorConfig(argv=[missing], run_dir=str(rdir), log_path=str(tmp_path / "ctr.log"),
                  console_log=str(tmp_path / "console.log"), exit_path=str(tmp_path / "exit.json"),
                  wait_attach=False, boot_timeout=20).save(rdir / "monitor.json")
    with pytest.raises(RuntimeFailure) as failed:
        VmRuntime._spawn_monitor(rdir, 30, [missing, "-name", "x"])
    assert "QEMU stopped while building the machine" in str(failed.value)
    assert f"cannot run {missing}" in str(failed.value)
    left = subprocess.run(["pgrep", "-f", str(rdir)], capture_output=True, text=True).stdout
    assert left == ""


def test_boot_files_of_other_versions_go_only_once_unused(tmp_path: Path) -> None:
    """Two versions sharing a cache must not delete each other's initramfs and helper on every
    start (they rebuilt alternately, and a start could lose the helper it was about to exec)."""
    from isobox.runtimes.vm.guest import UNUSED_AFTER_S, prune_unused

    now = 1_000_000_000.0
    ours = tmp_path / "initramfs-aaaa.cpio"
    recent = tmp_path / "initramfs-bbbb.cpio"  # another checkout's, used an hour ago
    stale = tmp_path / "initramfs-cccc.cpio"  # nobody's for two days
    stale_tools = tmp_path / "tools-cccc.ext4"
    unrelated = tmp_path / "kernel-package"
    for path, age in ((ours, 3 * UNUSED_AFTER_S), (recent, 3600.0), (stale, 2 * UNUSED_AFTER_S),
                      (stale_tools, 2 * UNUSED_AFTER_S), (unrelated, 9 * UNUSED_AFTER_S)):
        path.write_bytes(b"x")
        os.utime(path, (now - age, now - age))

    gone = prune_unused(tmp_path, ["initramfs-*.cpio", "tools-*.ext4"], keep=[ours], now=now)

    assert sorted(gone) == sorted([stale, stale_tools])
    assert ours.exists() and recent.exists() and unrelated.exists()
    assert not stale.exists() and not stale_tools.exists()
    assert ours.stat().st_mtime == now  # marked as used: the other version leaves it a day
