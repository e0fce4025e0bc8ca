"""The spec disk: a small read-only virtio disk holding a sh script the guest init sources.

A disk rather than the kernel command line (2 KiB on x86, and quoting) or fw_cfg (a module
and an ACPI entry microvm may lack).  Every value is quoted here with ``shlex.quote``.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from isobox.runtimes.vm.qemu import IO_PORT  # the workload's relay: stdio, signals, exit code

ROOT = "/newroot"
RUN_HELPER = "/bin/isobox-run"


@dataclass
class GuestProcess:
    argv: list[str]
    env: dict[str, str]
    workdir: str
    uid: int
    gid: int
    groups: list[int] = field(default_factory=list)


def helper_argv(proc: GuestProcess, relay: str | None = None, *, pty: bool = False, stdin: bool = False,
                sync: bool = False) -> list[str]:
    """``isobox-run`` (guestrun.c) with its arguments: the same for the workload and for exec.
    ``relay``: the virtio-serial port of the relay of its stdio (see relay.py), a pty with ``pty``
    (``run -t``/``exec -t``), else pipes; ``stdin``: the relay feeds a stdin pipe (``-i``), else
    /dev/null; ``sync``: it flushes the guest's disks before it reports the exit (the workload's:
    the host ends the VM on that report)."""
    env = [f"{k}={v}" for k, v in proc.env.items()]
    groups = ",".join(str(g) for g in proc.groups) or "-"
    opts = []
    if relay:
        opts = ["--pty", relay] if pty else ["--relay", relay, *(["--stdin"] if stdin else [])]
        opts += ["--sync"] if sync else []
    return [RUN_HELPER, *opts, ROOT, str(proc.uid), str(proc.gid), groups, proc.workdir, str(len(env)), *env,
            "--", *proc.argv]


@dataclass
class GuestNetwork:
    address: str  # CIDR, e.g. 10.213.0.3/24
    gateway: str
    names: list[str]  # for the guest's /etc/hosts line


def spec_script(proc: GuestProcess, hostname: str, stdin: bool,
                volumes: list[tuple[str, bool]] | None = None, net: GuestNetwork | None = None,
                pty: bool = False, sync: bool = True) -> str:
    """``volumes``: (target, readonly) in order; volume i has the virtio-fs tag ``vol<i>``.
    The workload runs behind the relay on the ``io`` port, on a pty with ``pty``; see
    ``workload_argv`` for ``sync``."""
    lines = [f"ISOBOX_HOSTNAME={shlex.quote(hostname)}"]
    if net is not None:
        lines += [f"ISOBOX_NET_ADDR={shlex.quote(net.address)}", f"ISOBOX_NET_GW={shlex.quote(net.gateway)}",
                  f"ISOBOX_NET_NAMES={shlex.quote(' '.join(net.names))}"]
    if volumes:
        lines.append("ISOBOX_VOLUMES=1")
        lines.append("volumes() {")
        lines += [f"    mount_volume vol{i} {shlex.quote(target)} {'ro' if ro else 'rw'}"
                  for i, (target, ro) in enumerate(volumes)]
        lines.append("}")
    lines += ["set -- " + " ".join(shlex.quote(a) for a in workload_argv(proc, pty, stdin, sync)), "#END"]
    return "\n".join(lines) + "\n"


def workload_argv(proc: GuestProcess, pty: bool, stdin: bool, sync: bool = True) -> list[str]:
    """The workload behind the relay on the io port.  ``sync``: the relay flushes the guest's
    disks before it reports the exit (the host stops QEMU on that report); not worth its ~40 ms
    under TCG for a ``--rm`` run, whose disk is deleted next."""
    return helper_argv(proc, IO_PORT, pty=pty, stdin=stdin, sync=sync)


def disk_image(script: str, direct: tuple[str, list[str]] | None = None) -> bytes:
    """The script, then, for a spec the script stage has nothing more to do for (no network, no
    volumes), ``direct`` = (hostname, workload argv) NUL-separated after it: the init's first
    stage (guestboot.c) then starts the workload itself, without a shell."""
    data = script.encode()
    if direct is not None:
        hostname, argv = direct
        fields = [b"isobox-direct", hostname.encode(), b"%d" % len(argv), *(a.encode() for a in argv)]
        data += b"\0" + b"\0".join(fields) + b"\0"
    return data + b"\0" * (-len(data) % 4096 or 4096)
