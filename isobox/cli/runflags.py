"""``run``/``create`` flags (their translation into a spec is ``runspec.py``).

Kept apart from the spec so that building the parser for ``isobox ps`` imports nothing but
argparse.
"""

from __future__ import annotations

import argparse


def add_run_flags(p: argparse.ArgumentParser, *, detach: bool) -> None:
    """Docker's flags.  ``-h`` is --hostname, as in docker run: the parser has only --help."""
    p.add_argument("--help", action="help", help="show this help and exit")
    if detach:
        p.add_argument("-d", "--detach", action="store_true", help="run in the background, print the id")
    p.add_argument("--rm", dest="auto_remove", action="store_true", help="remove the workload when it exits")
    p.add_argument("--name", help="assign a name")
    p.add_argument("-e", "--env", action="append", default=[], metavar="KEY[=VALUE]",
                   help="set an environment variable (KEY alone: take it from this environment)")
    p.add_argument("--env-file", action="append", default=[], metavar="FILE", help="read KEY=VALUE lines")
    p.add_argument("-w", "--workdir", help="working directory inside the workload")
    p.add_argument("-u", "--user", help="NAME|UID[:GROUP|GID]")
    p.add_argument("-h", "--hostname", help="hostname inside the workload")
    p.add_argument("-v", "--volume", action="append", default=[], metavar="HOST:CTR[:ro]",
                   help="bind-mount a host path")
    p.add_argument("-m", "--memory", help="memory limit (e.g. 512m, 1g)")
    p.add_argument("--cpus", help="CPU quota in cores (e.g. 0.5)")
    p.add_argument("--pids-limit", help="process limit (-1: unlimited; default 2048)")
    p.add_argument("--read-only", action="store_true", help="mount the root filesystem read-only")
    p.add_argument("--init", action="store_true", help="run an init as PID 1 that reaps zombies")
    p.add_argument("-i", "--interactive", action="store_true", help="keep stdin attached")
    p.add_argument("-t", "--tty", action="store_true", help="allocate a pseudo-terminal")
    p.add_argument("--network", "--net", default="default",
                   help="the default network (default), a network's name, none, or host (containers)")
    p.add_argument("-p", "--publish", action="append", default=[], metavar="[IP:][HOSTPORT:]PORT[/PROTO]",
                   help="publish a port on the host")
    p.add_argument("--isolation", default="container", help="container (default), gvisor or vm")
    p.add_argument("--firmware", metavar="bios|uefi",
                   help="VM disk images: boot through SeaBIOS (default) or UEFI (OVMF)")
    p.add_argument("--cap-add", action="append", default=[], metavar="CAP", help="add a capability")
    p.add_argument("--cap-drop", action="append", default=[], metavar="CAP", help="drop a capability (or ALL)")
    p.add_argument("--security-opt", action="append", default=[], metavar="OPT",
                   help="seccomp=unconfined|FILE.json, no-new-privileges[=true|false]")
    p.add_argument("--stop-timeout", help="seconds between SIGTERM and SIGKILL on stop (default 10)")
    p.add_argument("--entrypoint", help="override the image's entrypoint")
    p.add_argument("image", help="image reference")
    # Everything after the image is the command, even what looks like a flag.
    p.add_argument("command", nargs=argparse.REMAINDER, help="command and arguments")
