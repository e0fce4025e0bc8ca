"""``isobox compare`` and ``isobox advise``: their flags (imported by the parser, so nothing heavy
at the top) and their implementations (routes in ``isobox/daemon/routes_compare.py``)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from isobox.cli.client import Client

POLL_S = 0.2


def compare_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--repetitions", type=int, default=3, help="runs per measurement and level (default 3)")
    p.add_argument("--levels", help="a subset: container,gvisor,vm (default: every level this host offers)")
    p.add_argument("--json", action="store_true", help="print the whole result as JSON")
    p.add_argument("--html", metavar="FILE", help="also write a self-contained HTML report with charts")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("command", nargs="*", metavar="-- CMD",
                   help="the workload timed to its exit (default: true)")


def advise_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--untrusted", action="store_true", help="the workload runs code you do not trust")
    p.add_argument("--other-kernel", action="store_true",
                   help="it needs another kernel or OS (Windows, BSD, its own modules)")
    p.add_argument("--instances", type=int, default=1, help="how many run at once on this host")
    p.add_argument("--start-budget", type=float, metavar="MS", help="the longest acceptable start, in ms")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--bursty", action="store_const", dest="pattern", const="bursty",
                      help="started often for short work")
    mode.add_argument("--long-running", action="store_const", dest="pattern", const="long-running")
    p.add_argument("--image", default="busybox", help="image for a quick compare when none was run (busybox)")
    p.add_argument("--json", action="store_true", help="print the advice as JSON")


def _follow(client: Client, run_id: str, show_progress: bool) -> dict[str, Any]:
    """Poll the run until it ends, drawing a progress bar on a terminal."""
    from isobox.errors import IsoboxError

    def poll() -> dict[str, Any]:
        return dict(client.call("GET", f"/compare/{run_id}"))

    if show_progress:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("{task.description:<44}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TimeElapsedColumn(), transient=True) as bar:
            task = bar.add_task("starting", total=1)
            while True:
                state = poll()
                bar.update(task, completed=state.get("done", 0), total=state.get("total", 1),
                           description=str(state.get("step", ""))[:44])
                if state["status"] != "running":
                    break
                time.sleep(POLL_S)
    else:
        while (state := poll())["status"] == "running":
            time.sleep(POLL_S)
    if state["status"] != "finished":
        raise IsoboxError(f"compare failed: {state.get('error')}")
    return dict(state["result"])


def run_compare(client: Client, image: str, command: list[str] | None, repetitions: int,
                levels: list[str] | None) -> dict[str, Any]:
    body = {"image": image, "command": command or None, "repetitions": repetitions, "levels": levels}
    started = client.call("POST", "/compare", body)
    return _follow(client, started["id"], sys.stderr.isatty())


def compare(args: argparse.Namespace, client: Client) -> int:
    from isobox.cli.commands import out
    from isobox.compare import report

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    levels = [x.strip() for x in args.levels.split(",") if x.strip()] if args.levels else None
    result = run_compare(client, args.image, command, args.repetitions, levels)
    if args.html:
        with open(args.html, "w", encoding="utf-8") as fh:
            fh.write(report.html_page(result))
        print(f"HTML report: {args.html}", file=sys.stderr)
    out(json.dumps(result, indent=2) if args.json else report.text(result))
    return 0


def advise(args: argparse.Namespace, client: Client) -> int:
    from isobox.cli.commands import out
    from isobox.compare.advise import Needs, text
    from isobox.compare.advise import advise as decide
    from isobox.errors import InvalidArgument, NotFound

    if args.instances < 1:
        raise InvalidArgument("--instances must be at least 1")
    try:
        result = dict(client.call("GET", "/compare/latest")["result"])
        source = f"compare {result.get('id')} ({_age(result)})"
    except NotFound:
        print(f"No compare on this host yet: running a quick one on {args.image}…", file=sys.stderr)
        result = run_compare(client, args.image, None, 1, None)
        source = f"a quick compare just now ({result.get('id')})"
    needs = Needs(untrusted=args.untrusted, other_kernel=args.other_kernel, instances=args.instances,
                  start_budget_ms=args.start_budget, pattern=args.pattern or "long-running")
    advice = decide(needs, result)
    out(json.dumps({**advice.to_dict(), "compare_id": result.get("id")}, indent=2) if args.json
        else text(advice, source))
    return 0


def _age(result: dict[str, Any]) -> str:
    finished = result.get("finished_at")
    if not finished:
        return "unknown age"
    minutes = int((time.time() - float(finished)) // 60)
    return "just now" if minutes < 1 else f"{minutes} min ago"
