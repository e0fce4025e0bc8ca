"""VM snapshots, internal to the VM's qcow2 overlay (the image's base disk is never touched).

A running VM: QMP (``qemu.qmp``) ``savevm`` / ``loadvm`` / ``delvm`` through
``human-monitor-command`` — disk *and* memory state (QEMU has no QMP-native equivalent in 7.2;
``snapshot-save`` is a job API with the same effect).  A stopped VM: ``qemu-img snapshot``
(disk only; the next start boots from the restored disk).  VMs with virtio-fs volumes cannot
save memory state (vhost-user-fs is not migratable): QEMU says so and isobox passes it on.

``companions``: the VM's other writable qcow2 drives (a UEFI VM's variable store).  savevm and
its kin cover every drive of a running VM; for a stopped one qemu-img is run on each, so the
firmware's variables go back with the disk.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from isobox.errors import Conflict, InvalidArgument, NotFound, RuntimeFailure

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
QMP_TIMEOUT = 120.0


def check_name(name: str) -> None:
    if not NAME_RE.match(name):
        raise InvalidArgument(f"invalid snapshot name {name!r}", hint="letters, digits, _ . - (max 64)")


def _hmp(qmp_socket: Path, command: str) -> str:
    from qemu.qmp.legacy import QEMUMonitorProtocol

    qmp = QEMUMonitorProtocol(str(qmp_socket))
    try:
        qmp.connect()
        out = qmp.cmd("human-monitor-command", **{"command-line": command})
    except Exception as exc:  # noqa: BLE001 - qemu.qmp raises its own tree
        raise RuntimeFailure(f"QMP {command.split()[0]} failed: {exc}") from exc
    finally:
        qmp.close()
    text = str(out.get("return", "")) if isinstance(out, dict) else str(out)
    if "error" in text.lower():
        raise RuntimeFailure(f"QEMU: {text.strip()}")
    return text


def _qemu_img(*args: str) -> str:
    done = subprocess.run(["qemu-img", "snapshot", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeFailure(f"qemu-img snapshot: {done.stderr.strip()}")
    return done.stdout


def list_snapshots(overlay: Path) -> list[dict[str, Any]]:
    if not overlay.exists():
        return []
    out = _qemu_img("-l", "-U", str(overlay))  # -U: the running VM holds the image lock
    snaps = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 6 and parts[0].isdigit():
            snaps.append({"Id": parts[0], "Name": parts[1], "VmStateSize": " ".join(parts[2:4]),
                          "Date": f"{parts[4]} {parts[5]}", "VmClock": parts[6] if len(parts) > 6 else "",
                          "Memory": parts[2] != "0"})
    return snaps


def _require(overlay: Path, name: str) -> None:
    if name not in {s["Name"] for s in list_snapshots(overlay)}:
        raise NotFound(f"no such snapshot: {name}")


def _names(disk: Path) -> set[str]:
    return {s["Name"] for s in list_snapshots(disk)}


def create(overlay: Path, qmp_socket: Path, running: bool, name: str, companions: Sequence[Path] = ()) -> None:
    check_name(name)
    if name in _names(overlay):
        raise Conflict(f"snapshot {name} already exists")
    if running:
        _hmp(qmp_socket, f"savevm {name}")
        return
    made: list[Path] = []
    try:
        for disk in (overlay, *companions):
            _qemu_img("-c", name, str(disk))
            made.append(disk)
    except RuntimeFailure:
        for disk in made:  # all or nothing
            with contextlib.suppress(RuntimeFailure):
                _qemu_img("-d", name, str(disk))
        raise


def restore(overlay: Path, qmp_socket: Path, running: bool, name: str, companions: Sequence[Path] = ()) -> None:
    check_name(name)
    _require(overlay, name)
    if running:
        _hmp(qmp_socket, f"loadvm {name}")
        return
    for disk in (overlay, *(c for c in companions if name in _names(c))):
        _qemu_img("-a", name, str(disk))


def remove(overlay: Path, qmp_socket: Path, running: bool, name: str, companions: Sequence[Path] = ()) -> None:
    check_name(name)
    _require(overlay, name)
    if running:
        _hmp(qmp_socket, f"delvm {name}")
        return
    for disk in (overlay, *(c for c in companions if name in _names(c))):
        _qemu_img("-d", name, str(disk))
