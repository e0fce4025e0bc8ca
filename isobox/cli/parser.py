"""The argparse tree of ``isobox``, Docker's verbs and flags.

argparse is slow to build (each sub-parser and each ``add_argument`` does real work): the
whole tree costs 5-10 ms here, and every ``isobox run`` would pay it.  So ``parse()`` builds
just the parser of the verb on the command line when it recognises one, and the whole tree
only for help and mistakes, where its messages are the point.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any, NoReturn

from isobox import __version__
from isobox.cli.commands_compare import advise_flags, compare_flags
from isobox.cli.runflags import add_run_flags


class UsageError(Exception):
    def __init__(self, message: str, prog: str = "isobox") -> None:
        super().__init__(message)
        self.message = message
        self.prog = prog


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(_docker_wording(message), self.prog)


def _docker_wording(message: str) -> str:
    """argparse's messages, shortened to one line in the words docker uses."""
    required = "the following arguments are required: "
    if message.startswith(required):
        names = [n.strip() for n in message[len(required):].split(",") if n.strip() != "command"]
        return f"missing {', '.join(n.upper() for n in names)}"
    if message.startswith("argument COMMAND: invalid choice: "):
        return "unknown command " + message.split("invalid choice: ", 1)[1].split(" (choose", 1)[0]
    return message


_columns: int | None = None


def _formatter(prog: str) -> argparse.HelpFormatter:
    """argparse makes a formatter per add_argument; its default asks shutil (an import of
    shutil, bz2, lzma) for the terminal width each time."""
    global _columns
    if _columns is None:
        try:
            _columns = int(os.environ.get("COLUMNS", "0")) or os.get_terminal_size(1).columns
        except (OSError, ValueError):
            _columns = 80
    return argparse.HelpFormatter(prog, width=max(_columns - 2, 40))


# -- the verbs' flags ------------------------------------------------------------------------------

Flags = Callable[[argparse.ArgumentParser], None]


def _run(p: argparse.ArgumentParser) -> None:
    add_run_flags(p, detach=True)


def _create(p: argparse.ArgumentParser) -> None:
    add_run_flags(p, detach=False)


def _containers(p: argparse.ArgumentParser) -> None:
    p.add_argument("containers", nargs="+", metavar="CONTAINER")


def _start(p: argparse.ArgumentParser) -> None:
    p.add_argument("-a", "--attach", action="store_true", help="attach stdout/stderr and exit with its code")
    p.add_argument("-i", "--interactive", action="store_true", help="attach stdin")
    _containers(p)


def _stop(p: argparse.ArgumentParser) -> None:
    p.add_argument("-t", "--time", "--timeout", dest="time", type=int, metavar="SECONDS",
                   help="seconds to wait before killing (default: the workload's --stop-timeout)")
    _containers(p)


def _kill(p: argparse.ArgumentParser) -> None:
    p.add_argument("-s", "--signal", default="KILL", help="signal name or number (default KILL)")
    _containers(p)


def _rm(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--force", action="store_true", help="kill running ones first")
    _containers(p)


def _ps(p: argparse.ArgumentParser) -> None:
    p.add_argument("-a", "--all", action="store_true", help="include stopped ones")
    p.add_argument("-q", "--quiet", action="store_true", help="only ids")
    p.add_argument("--no-trunc", action="store_true", help="full ids and commands")
    p.add_argument("--format", help="json, table TEMPLATE or a Go-style template ({{.Names}})")


def _logs(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--follow", action="store_true", help="keep streaming")
    p.add_argument("-n", "--tail", default="all", help='lines from the end ("all" by default)')
    p.add_argument("-t", "--timestamps", action="store_true", help="prefix timestamps")
    p.add_argument("container", metavar="CONTAINER")


def _exec(p: argparse.ArgumentParser) -> None:
    p.add_argument("-i", "--interactive", action="store_true", help="attach stdin")
    p.add_argument("-t", "--tty", action="store_true", help="allocate a pseudo-terminal")
    p.add_argument("-e", "--env", action="append", default=[], metavar="KEY[=VALUE]")
    p.add_argument("-w", "--workdir")
    p.add_argument("-u", "--user")
    p.add_argument("--privileged", action="store_true", help="all capabilities, no seccomp")
    p.add_argument("container", metavar="CONTAINER")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND")


def _inspect(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--format", help="Go-style template, e.g. {{.State.Status}}")
    _containers(p)


def _stats(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-stream", action="store_true", help="print once")
    p.add_argument("-a", "--all", action="store_true", help="include stopped ones")
    p.add_argument("--format", help="json or a Go-style template")
    p.add_argument("containers", nargs="*", metavar="CONTAINER")


def _image_ls(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="only ids")
    p.add_argument("--format", help="json or a Go-style template")


def _image_rm(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--force", action="store_true", help="even if workloads use them")
    p.add_argument("images", nargs="+", metavar="IMAGE")


def _image_build(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", metavar="KIND", help="what to build: busybox, debian:bookworm, debian:trixie")
    p.add_argument("-t", "--tag", help="name:tag (default KIND:latest, KIND for debian)")
    p.add_argument("--include", action="append", default=[], metavar="PKG,...", help="extra Debian packages")
    p.add_argument("--bootable", action="store_true",
                   help="debian: a whole system (kernel, systemd, bootloader) on a disk that VMs boot by firmware")


def _image_load(p: argparse.ArgumentParser) -> None:
    p.add_argument("-i", "--input", help="docker save or OCI archive (plain or gzip)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress")


def _image_import_disk(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="raw or qcow2 disk image, or ISO")
    p.add_argument("--name", required=True, help="NAME[:TAG] to register it under")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress")


def _image_save(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", help="OCI archive to write")
    p.add_argument("image", metavar="IMAGE")


def _image_inspect(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--format", help="Go-style template, e.g. {{.Id}}")
    p.add_argument("images", nargs="+", metavar="IMAGE")


def _image_history(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-trunc", action="store_true", help="full commands")
    p.add_argument("--format", help="json")
    p.add_argument("image", metavar="IMAGE")


def _image_tag(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("target", metavar="TARGET", help="NAME[:TAG]")


def _image_prune(p: argparse.ArgumentParser) -> None:
    p.add_argument("-a", "--all", action="store_true", help="every unused image, not only untagged ones")
    p.add_argument("-f", "--force", action="store_true", help="do not ask (isobox never asks)")


def _build(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--file", help="the Dockerfile (default CONTEXT/Dockerfile)")
    p.add_argument("-t", "--tag", action="append", default=[], help="NAME[:TAG], repeatable")
    p.add_argument("--build-arg", action="append", default=[], metavar="KEY[=VALUE]")
    p.add_argument("--no-cache", action="store_true", help="do not reuse cached layers")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the image id")
    p.add_argument("context", metavar="CONTEXT")


def _format_only(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", help="json or a Go-style template")


def _cp(p: argparse.ArgumentParser) -> None:
    from isobox.cli.commands_vm import cp_flags

    cp_flags(p)


def _console(p: argparse.ArgumentParser) -> None:
    from isobox.cli.commands_vm import console_flags

    console_flags(p)


def _snapshot(p: argparse.ArgumentParser) -> None:
    from isobox.cli.commands_vm import snapshot_flags

    snapshot_flags(p)


def _snapshot_ls(p: argparse.ArgumentParser) -> None:
    from isobox.cli.commands_vm import snapshot_ls_flags

    snapshot_ls_flags(p)


def _lazy(name: str) -> Flags:
    """Flags defined next to their verb in commands_networks, imported only when parsed."""
    def flags(p: argparse.ArgumentParser) -> None:
        import importlib

        # commands first: it imports commands_networks at its end, which imports back from it.
        importlib.import_module("isobox.cli.commands")
        getattr(importlib.import_module("isobox.cli.commands_networks"), name)(p)

    return flags


# (name, aliases, command key, help, flags, argparse's -h)
Verb = tuple[str, tuple[str, ...], str, str, Flags, bool]

IMAGE_VERBS: list[Verb] = [
    ("ls", ("list",), "image_ls", "List images", _image_ls, True),
    ("rm", ("remove",), "image_rm", "Remove images", _image_rm, True),
    ("build", (), "image_build", "Build an image locally", _image_build, True),
    ("load", (), "image_load", "Load images from a docker save or OCI archive", _image_load, True),
    ("save", (), "image_save", "Save an image to an OCI archive", _image_save, True),
    ("import-disk", (), "image_import_disk", "Register a raw/qcow2 disk or an ISO as a VM-only image",
     _image_import_disk, True),
    ("inspect", (), "image_inspect", "Show images' details as JSON", _image_inspect, True),
    ("history", (), "image_history", "Show how an image was made", _image_history, True),
    ("tag", (), "image_tag", "Give an image another name", _image_tag, True),
    ("prune", (), "image_prune", "Remove unused images, blobs and layers", _image_prune, True),
]
SNAPSHOT_VERBS: list[Verb] = [
    ("create", (), "snapshot_create", "Snapshot a VM (disk, and memory when it runs)", _snapshot, True),
    ("ls", ("list",), "snapshot_ls", "List a VM's snapshots", _snapshot_ls, True),
    ("restore", (), "snapshot_restore", "Return a VM to a snapshot", _snapshot, True),
    ("rm", ("remove",), "snapshot_rm", "Delete a VM's snapshot", _snapshot, True),
]
NETWORK_VERBS: list[Verb] = [
    ("create", (), "network_create", "Create a network", _lazy("network_create_flags"), True),
    ("ls", ("list",), "network_ls", "List networks", _lazy("network_ls_flags"), True),
    ("inspect", (), "network_inspect", "Show networks' details as JSON", _lazy("network_inspect_flags"), True),
    ("rm", ("remove",), "network_rm", "Remove networks", _lazy("network_refs_flags"), True),
]
SYSTEM_VERBS: list[Verb] = [
    ("info", (), "system_info", "What this host offers each isolation level", _format_only, True),
]


def _group(verbs: list[Verb], prog: str) -> Flags:
    def flags(p: argparse.ArgumentParser) -> None:
        p.set_defaults(help_parser=p)
        # An explicit prog: otherwise argparse builds a formatter to compute it.
        sub = p.add_subparsers(title="commands", metavar="COMMAND", prog=prog)
        for verb in verbs:
            _add(sub, verb, fill=True)

    return flags


VERBS: list[Verb] = [
    ("run", (), "run", "Create and start a workload", _run, False),  # -h is --hostname
    ("create", (), "create", "Create a workload without starting it", _create, False),
    ("start", (), "start", "Start created or stopped workloads", _start, True),
    ("stop", (), "stop", "Stop workloads (SIGTERM, then SIGKILL after the timeout)", _stop, True),
    ("kill", (), "kill", "Send a signal to workloads", _kill, True),
    ("rm", ("remove",), "rm", "Remove workloads", _rm, True),
    ("ps", ("ls",), "ps", "List workloads", _ps, True),
    ("logs", (), "logs", "Show a workload's output", _logs, True),
    ("exec", (), "exec", "Run a command in a running workload", _exec, True),
    ("cp", (), "cp", "Copy a file between the host and a VM (guest agent)", _cp, True),
    ("snapshot", (), "help", "Manage VM snapshots", _group(SNAPSHOT_VERBS, "isobox snapshot"), True),
    ("console", (), "console", "Attach to a VM's serial console (Ctrl-] detaches)", _console, True),
    ("inspect", (), "inspect", "Show workloads' details as JSON", _inspect, True),
    ("port", (), "port", "List a workload's published ports", _lazy("port_flags"), True),
    ("network", (), "help", "Manage networks", _group(NETWORK_VERBS, "isobox network"), True),
    ("wait", (), "wait", "Wait for workloads to stop, print their exit codes", _containers, True),
    ("stats", (), "stats", "Live resource usage", _stats, True),
    ("image", (), "help", "Manage images", _group(IMAGE_VERBS, "isobox image"), True),
    ("images", (), "image_ls", "List images (image ls)", _image_ls, True),
    ("rmi", (), "image_rm", "Remove images (image rm)", _image_rm, True),
    ("build", (), "build", "Build an image from a Dockerfile", _build, True),
    ("load", (), "image_load", "Load images from an archive (image load)", _image_load, True),
    ("save", (), "image_save", "Save an image to an OCI archive (image save)", _image_save, True),
    ("tag", (), "image_tag", "Give an image another name (image tag)", _image_tag, True),
    ("system", (), "help", "Host checks and daemon information", _group(SYSTEM_VERBS, "isobox system"), True),
    ("info", (), "system_info", "What this host offers each isolation level (system info)", _format_only, True),
    ("version", (), "version", "Client and daemon versions", _format_only, True),
    ("compare", (), "compare", "Measure every isolation level on this host", compare_flags, True),
    ("advise", (), "advise", "Recommend an isolation level, backed by this host's figures", advise_flags, True),
]


def _add(sub: Any, verb: Verb, fill: bool) -> None:  # argparse._SubParsersAction
    name, aliases, cmd, text, flags, add_help = verb
    p = sub.add_parser(name, aliases=list(aliases), help=text, description=text, add_help=add_help,
                       allow_abbrev=False, formatter_class=_formatter)
    p.set_defaults(cmd=cmd)
    if fill:
        flags(p)


def build_parser(verb: str | None = None) -> Parser:
    """The whole tree's names; the flags of ``verb`` only (of every verb when None)."""
    parser = Parser(prog="isobox", allow_abbrev=False, formatter_class=_formatter,
                    description="Run workloads as containers, gVisor sandboxes or VMs from one image and one spec.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    parser.add_argument("--version", action="version", version=f"isobox version {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", prog="isobox")
    for entry in VERBS:
        _add(sub, entry, fill=verb is None or verb == entry[0] or verb in entry[1])
    return parser


def _find(verbs: list[Verb], word: str) -> Verb | None:
    return next((v for v in verbs if word == v[0] or word in v[1]), None)


def _leaf(argv: list[str]) -> tuple[Verb, str, list[str]] | None:
    """The verb an argv names, its prog and its arguments -- if the argv is that plain."""
    i = next((n for n, word in enumerate(argv) if not word.startswith("-")), None)
    if i is None or any(word != "--debug" for word in argv[:i]):
        return None  # --help, --version, a mistake: the whole tree handles those
    word = argv[i]
    verb = _find(VERBS, word)
    group = {"image": IMAGE_VERBS, "system": SYSTEM_VERBS, "network": NETWORK_VERBS}.get(verb[0]) if verb else None
    if verb is None or (group is not None and (len(argv) <= i + 1 or _find(group, argv[i + 1]) is None)):
        return None
    if group is not None:
        leaf = _find(group, argv[i + 1])
        assert leaf is not None
        return leaf, f"isobox {word} {argv[i + 1]}", argv[i + 2:]
    return verb, f"isobox {word}", argv[i + 1:]


def parse(argv: list[str]) -> argparse.Namespace:
    found = _leaf(argv)
    if found is not None:
        (_, _, cmd, text, flags, add_help), prog, rest = found
        parser = Parser(prog=prog, description=text, add_help=add_help, allow_abbrev=False,
                        formatter_class=_formatter)
        flags(parser)
        namespace = argparse.Namespace(cmd=cmd, debug="--debug" in argv, help_parser=parser)
        args, extras = parser.parse_known_args(rest, namespace=namespace)
    else:
        verb = next((a for a in argv if not a.startswith("-")), "")
        parser = build_parser(verb)
        prog = f"isobox {verb}".strip()
        args, extras = parser.parse_known_args(argv, namespace=argparse.Namespace(help_parser=parser))
    if extras:
        first = extras[0]
        raise UsageError(f"unknown flag: {first}" if first.startswith("-") else f"unexpected argument {first!r}",
                         parser.prog if found else prog)
    return args
