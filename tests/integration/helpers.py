"""Assertions shared by the integration tests: above all, that nothing leaks."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.conftest import Isobox


def cgroup_dirs(box: Isobox, container_id: str | None = None) -> list[Path]:
    found = []
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        parent = hierarchy / box.cgroup_parent
        if not parent.is_dir():
            continue
        for child in parent.iterdir():
            if child.is_dir() and (container_id is None or child.name == container_id):
                found.append(child)
    return found


def processes_under(root: Path) -> list[int]:
    """Host pids whose cwd or root lies under ``root`` (a container's leftovers)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ_root = (entry / "root").resolve()
        except OSError:
            continue
        if str(root) in cmdline.decode(errors="replace") or str(environ_root).startswith(str(root)):
            pids.append(int(entry.name))
    return pids


def assert_gone(box: Isobox, container_id: str) -> None:
    assert cgroup_dirs(box, container_id) == [], "cgroup left behind"
    assert not (box.run_root / "c" / container_id[:16]).exists(), "run dir left behind"
    assert not (box.root / "containers" / container_id).exists(), "data dir left behind"
    listed = json.loads(box.cli("ps", "-a", "--format", "json", check=True).stdout)
    assert container_id not in [c["Id"] for c in listed], "row left behind"
    assert_daemon_reaped(box)


def assert_vm_gone(box: Isobox, container_id: str) -> None:
    """A VM's run dir (sockets), data dir (overlay, variable store, logs), processes and row."""
    run_dir = box.run_root / "v" / container_id[:16]
    assert not run_dir.exists(), "run dir (sockets) left behind"
    assert not (box.root / "containers" / container_id).exists(), "overlay, variable store or logs left behind"
    assert processes_under(run_dir) == [], "QEMU, its monitor or an exec process left behind"
    assert container_id not in container_ids(box), "row left behind"
    assert_daemon_reaped(box)


def zombie_children(pid: int) -> list[str]:
    """``pid:comm`` of the exited, unreaped children of ``pid`` (invisible to processes_under:
    a zombie has no cmdline, cwd or root)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        comm, _, rest = text.rpartition(")")
        fields = rest.split()
        if fields[0] == "Z" and int(fields[1]) == pid:
            found.append(f"{stat.parent.name}:{comm.partition('(')[2]}")
    return found


def assert_daemon_reaped(box: Isobox, patience: float = 5.0) -> None:
    """The daemon collects the monitors it started (VMs' and their execs'): a zombie per VM
    piled up in a long-lived daemon before.  The reaping follows the monitor's exit, hence the
    patience."""
    daemon = int((box.run_root / "isobox.pid").read_text())
    deadline = time.monotonic() + patience
    while (zombies := zombie_children(daemon)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert zombies == [], f"the daemon left zombie children: {zombies}"


def inspect(box: Isobox, ref: str) -> dict:
    return json.loads(box.cli("inspect", ref, check=True).stdout)[0]


def container_ids(box: Isobox) -> set[str]:
    return {c["Id"] for c in json.loads(box.cli("ps", "-a", "--format", "json", check=True).stdout)}


def mounts_mentioning(text: str) -> list[str]:
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if text in line]
