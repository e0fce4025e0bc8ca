"""VM verbs: ``isobox cp``."""

from __future__ import annotations

import argparse
import os

from isobox.cli.client import Client, path_for
from isobox.errors import InvalidArgument


def _split(arg: str) -> tuple[str | None, str]:
    """``NAME:PATH`` -> (NAME, PATH); a local path (absolute, ./, or without a colon) -> (None, arg)."""
    if arg.startswith(("/", ".")) or ":" not in arg:
        return None, arg
    name, _, path = arg.partition(":")
    return name, path


def cp(args: argparse.Namespace, client: Client) -> int:
    src_name, src = _split(args.src)
    dst_name, dst = _split(args.dst)
    if (src_name is None) == (dst_name is None):
        raise InvalidArgument("cp copies between the host and one workload",
                              hint="isobox cp FILE NAME:/PATH  or  isobox cp NAME:/PATH FILE")
    if dst_name is not None:
        body = {"to_guest": True, "host_path": os.path.abspath(src), "guest_path": dst}
        ref = dst_name
    else:
        body = {"to_guest": False, "host_path": os.path.abspath(dst), "guest_path": src}
        assert src_name is not None
        ref = src_name
    client.call("POST", path_for("containers", ref, "cp"), body)
    return 0


def cp_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", metavar="SRC", help="FILE or NAME:/PATH")
    p.add_argument("dst", metavar="DST", help="FILE or NAME:/PATH")


def snapshot_create(args: argparse.Namespace, client: Client) -> int:
    client.call("POST", path_for("containers", args.container, "snapshots"), {"name": args.name})
    print(args.name)
    return 0


def snapshot_ls(args: argparse.Namespace, client: Client) -> int:
    snaps = client.call("GET", path_for("containers", args.container, "snapshots"))
    if args.format == "json":
        import json

        print(json.dumps(snaps, indent=2))
        return 0
    rows = [("NAME", "DATE", "VM CLOCK", "MEMORY STATE")]
    rows += [(s["Name"], s["Date"], s["VmClock"], s["VmStateSize"] if s["Memory"] else "-") for s in snaps]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


def snapshot_restore(args: argparse.Namespace, client: Client) -> int:
    client.call("POST", path_for("containers", args.container, "snapshots", args.name, "restore"))
    return 0


def snapshot_rm(args: argparse.Namespace, client: Client) -> int:
    client.call("DELETE", path_for("containers", args.container, "snapshots", args.name))
    return 0


def snapshot_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("container", metavar="VM")
    p.add_argument("name", metavar="SNAPSHOT")


def snapshot_ls_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("container", metavar="VM")
    p.add_argument("--format", help="json")


DETACH = b"\x1d"  # Ctrl-]


def console(args: argparse.Namespace, client: Client) -> int:
    """Attach the terminal to a VM's serial console until Ctrl-] (or the VM ends)."""
    import contextlib
    import select
    import socket
    import sys
    import termios
    import tty

    path = client.call("GET", path_for("containers", args.container, "console"))["ConsoleSocket"]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.connect(path)
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    is_tty = os.isatty(stdin)
    saved = termios.tcgetattr(stdin) if is_tty else None
    if is_tty:
        print("Connected to the serial console; Ctrl-] detaches.", file=sys.stderr)
        tty.setraw(stdin)
    try:
        while True:
            ready = select.select([sock, stdin], [], [])[0]
            if sock in ready:
                data = sock.recv(65536)
                if not data:
                    return 0
                os.write(stdout, data)
            if stdin in ready:
                data = os.read(stdin, 4096)
                if not data or DETACH in data:
                    return 0
                sock.sendall(data)
    finally:
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        with contextlib.suppress(OSError):
            sock.close()


def console_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("container", metavar="VM")
