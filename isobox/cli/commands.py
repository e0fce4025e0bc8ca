"""One function per verb; each is a few calls of the API (isobox/daemon/routes_*.py).

A verb returns its exit code; ``IsoboxError`` escapes to main(), which prints it and exits
125.  Verbs over several containers (stop, kill, rm, wait, inspect, start) go on past a
failing one, print its error, and exit 125 at the end, as Docker does (with 1).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from isobox.cli import output
from isobox.cli.client import Client, path_for
from isobox.errors import EXIT_ISOBOX_ERROR, InvalidArgument, IsoboxError, NotFound

Verb = Callable[[argparse.Namespace, Client], int]


def dispatch(args: argparse.Namespace) -> int:
    verb: Verb = VERBS[args.cmd]
    client = Client()
    try:
        return verb(args, client)
    finally:
        client.close()


def out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def report(exc: IsoboxError) -> None:
    print(f"Error: {exc.message}", file=sys.stderr)
    if exc.hint:
        print(f"hint: {exc.hint}", file=sys.stderr)


def each(refs: list[str], action: Callable[[str], str | None]) -> int:
    """Run ``action`` on every ref; print what it returns, report errors, 125 if any failed."""
    failed = False
    for ref in refs:
        try:
            line = action(ref)
        except IsoboxError as exc:
            report(exc)
            failed = True
            continue
        if line is not None:
            out(line)
    return EXIT_ISOBOX_ERROR if failed else 0


# -- run, create, start, exec: the attached ones --------------------------------------------------


def run(args: argparse.Namespace, client: Client) -> int:
    from isobox.cli.runspec import spec_body

    spec = spec_body(args, os.environ)
    tty, interactive = bool(spec.get("tty")), bool(spec.get("interactive"))
    if not args.detach:
        _check_tty(tty, interactive)
    created = client.call("POST", "/containers", {"spec": spec, "start": True, "attach": not args.detach})
    _warn(created)
    if args.detach:
        out(created["Id"])
        return 0
    return attach_until_exit(client, created["Id"], created["AttachSocket"], interactive, tty,
                             wait_removal=bool(spec.get("auto_remove")))


def create(args: argparse.Namespace, client: Client) -> int:
    from isobox.cli.runspec import spec_body

    created = client.call("POST", "/containers", {"spec": spec_body(args, os.environ), "start": False})
    _warn(created)
    out(created["Id"])
    return 0


def start(args: argparse.Namespace, client: Client) -> int:
    if not args.attach:
        return each(args.containers, lambda ref: _start(client, ref))
    if len(args.containers) > 1:
        raise InvalidArgument("you cannot start and attach multiple containers at once")
    ref = args.containers[0]
    info = client.call("GET", path_for("containers", ref))
    config, host = info.get("Config") or {}, info.get("HostConfig") or {}
    tty = bool(config.get("Tty"))
    _check_tty(tty, args.interactive)
    started = client.call("POST", path_for("containers", ref, "start", query={"attach": True}))
    _warn(started)
    return attach_until_exit(client, started["Id"], started["AttachSocket"], args.interactive, tty,
                             wait_removal=bool(host.get("AutoRemove")))


def _start(client: Client, ref: str) -> str:
    client.call("POST", path_for("containers", ref, "start"))
    return ref


def exec_(args: argparse.Namespace, client: Client) -> int:
    from isobox.cli.runspec import parse_env

    if not args.command:
        raise InvalidArgument("exec needs a container and a command", hint="isobox exec CONTAINER COMMAND [ARG...]")
    _check_tty(args.tty, args.interactive)
    body = {"command": args.command, "env": parse_env(args.env, os.environ), "workdir": args.workdir,
            "user": args.user, "tty": args.tty, "interactive": args.interactive, "privileged": args.privileged}
    started = client.call("POST", path_for("containers", args.container, "exec"), body)
    from isobox.cli import session

    info = session.attach(started["AttachSocket"], interactive=args.interactive, tty=args.tty)
    if info is None:
        raise IsoboxError("lost the connection to the exec session before it reported an exit code")
    if info.error:
        print(f"Error: {info.error}", file=sys.stderr)
    return info.exit_code


def attach_until_exit(client: Client, cid: str, sock: str | None, interactive: bool, tty: bool,
                      wait_removal: bool = False) -> int:
    from isobox.cli import session

    if not sock:
        raise IsoboxError("the daemon gave no attach socket")
    info = session.attach(sock, interactive=interactive, tty=tty)
    if info is None:
        # The monitor went away without an EXIT frame: the daemon still knows the exit code.
        res = client.call("POST", path_for("containers", cid, "wait"))
        info = session.ExitInfo(int(res.get("StatusCode") or 0), bool(res.get("OOMKilled")), res.get("Error") or None)
    if info.error:
        print(f"Error: {info.error}", file=sys.stderr)
    if wait_removal:
        with contextlib.suppress(NotFound):  # already gone
            client.call("POST", path_for("containers", cid, "wait", query={"condition": "removed"}))
    return info.exit_code


def _check_tty(tty: bool, interactive: bool) -> None:
    if tty and interactive and not os.isatty(0):
        raise InvalidArgument("the input device is not a TTY", hint="drop -t, or run from a terminal")


def _warn(resp: Mapping[str, Any]) -> None:
    for warning in resp.get("Warnings") or []:
        print(f"WARNING: {warning}", file=sys.stderr)


# -- the lifecycle of existing workloads ----------------------------------------------------------


def stop(args: argparse.Namespace, client: Client) -> int:
    def action(ref: str) -> str:
        client.call("POST", path_for("containers", ref, "stop", query={"t": args.time}))
        return ref

    return each(args.containers, action)


def kill(args: argparse.Namespace, client: Client) -> int:
    def action(ref: str) -> str:
        client.call("POST", path_for("containers", ref, "kill", query={"signal": args.signal}))
        return ref

    return each(args.containers, action)


def rm(args: argparse.Namespace, client: Client) -> int:
    def action(ref: str) -> str:
        client.call("DELETE", path_for("containers", ref, query={"force": args.force or None}))
        return ref

    return each(args.containers, action)


def wait(args: argparse.Namespace, client: Client) -> int:
    def action(ref: str) -> str:
        res = client.call("POST", path_for("containers", ref, "wait"))
        return str(res.get("StatusCode"))

    return each(args.containers, action)


# -- looking at workloads --------------------------------------------------------------------------


def ps(args: argparse.Namespace, client: Client) -> int:
    containers = client.call("GET", path_for("containers", query={"all": args.all or None}))
    containers.sort(key=lambda c: float(c.get("Created") or 0), reverse=True)
    now = time.time()
    if args.quiet:
        for c in containers:
            out(str(c.get("Id", "")) if args.no_trunc else output.short_id(str(c.get("Id", ""))))
    elif args.format == "json":
        out(output.dumps(containers))
    elif args.format:
        text = output.format_rows(args.format, [{**c, **output.ps_row(c, now, args.no_trunc)} for c in containers])
        if text:
            out(text)
    else:
        out(output.ps_table(containers, now, args.no_trunc))
    return 0


def inspect_each(refs: list[str], fetch: Callable[[str], Any], template: str | None) -> int:
    """Docker's inspect: a JSON list of what was found (``[]`` too), or a template per item;
    each ref not found is reported, and then the exit code is 125."""
    found: list[Any] = []
    code = each(refs, lambda ref: found.append(fetch(ref)))
    if template:
        for item in found:
            out(output.render_template(template, item))
    else:
        out(output.dumps(found))
    return code


def inspect(args: argparse.Namespace, client: Client) -> int:
    return inspect_each(args.containers, lambda ref: client.call("GET", path_for("containers", ref)), args.format)


def logs(args: argparse.Namespace, client: Client) -> int:
    from isobox.attach import Frame
    from isobox.cli.session import std_streams

    stdout, stderr = std_streams()
    query = {"follow": args.follow or None, "tail": None if args.tail == "all" else args.tail,
             "timestamps": args.timestamps or None}
    failed = False
    for kind, payload in client.frames("GET", path_for("containers", args.container, "logs", query=query)):
        if kind == Frame.STDOUT:
            stdout.write(payload)
        elif kind == Frame.STDERR:
            stderr.write(payload)
        elif kind == Frame.ERROR:
            print(f"Error: {payload.decode(errors='replace').strip()}", file=sys.stderr)
            failed = True
    return EXIT_ISOBOX_ERROR if failed else 0


def stats(args: argparse.Namespace, client: Client) -> int:
    while True:
        refs = args.containers or [
            str(c["Id"]) for c in client.call("GET", path_for("containers", query={"all": args.all or None}))
        ]
        samples, code = _stats_samples(client, refs)
        if args.format == "json":
            text = output.dumps(samples)
        elif args.format:
            text = output.format_rows(args.format, samples)
        else:
            text = output.stats_table(samples)
        if args.no_stream:
            out(text)
            return code
        if sys.stdout.isatty():
            sys.stdout.write("\x1b[H\x1b[2J")  # home, clear: redraw in place like docker stats
        out(text)
        time.sleep(1.0)


def _stats_samples(client: Client, refs: list[str]) -> tuple[list[dict[str, Any]], int]:
    samples: list[dict[str, Any]] = []
    code = each(refs, lambda ref: samples.append(client.call("GET", path_for("containers", ref, "stats"))))
    return samples, code


# -- images ----------------------------------------------------------------------------------------


def image_ls(args: argparse.Namespace, client: Client) -> int:
    images = client.call("GET", "/images")
    if args.quiet:
        for img in images:
            out(output.short_id(str(img.get("Id", ""))))
    elif args.format == "json":
        out(output.dumps(images))
    elif args.format:
        out(output.format_rows(args.format, images))
    else:
        out(output.images_table(images, time.time()))
    return 0


def image_rm(args: argparse.Namespace, client: Client) -> int:
    def action(ref: str) -> str:
        removed = client.call("DELETE", path_for("images", ref, query={"force": args.force or None}))
        return "\n".join(f"{k}: {v}" for item in removed for k, v in item.items())

    return each(args.images, action)


# -- system ----------------------------------------------------------------------------------------


def system_info(args: argparse.Namespace, client: Client) -> int:
    info = client.call("GET", "/system/info")
    if args.format == "json":
        out(output.dumps(info))
    elif args.format:
        out(output.render_template(args.format, info))
    else:
        out(output.system_info_text(info))
    return 0


def version(args: argparse.Namespace, client: Client) -> int:
    from isobox import __version__

    doc: dict[str, Any] = {"Client": {"Version": __version__, "PythonVersion": sys.version.split()[0]}}
    try:
        doc["Server"] = client.call("GET", "/version")
    except IsoboxError as exc:
        doc["Server"] = None
        server_error: IsoboxError | None = exc
    else:
        server_error = None
    if args.format == "json":
        out(output.dumps(doc))
    elif args.format:
        out(output.render_template(args.format, doc))
    else:
        lines = ["Client:", f" Version:        {__version__}", f" Python version: {doc['Client']['PythonVersion']}"]
        if doc["Server"]:
            server = doc["Server"]
            lines += ["", "Server:", f" Version:        {server.get('Version')}",
                      f" API version:    {server.get('ApiVersion')}", f" Kernel version: {server.get('KernelVersion')}",
                      f" OS/Arch:        {server.get('Os')}/{server.get('Arch')}"]
        out("\n".join(lines))
    if server_error is not None:
        report(server_error)
        return EXIT_ISOBOX_ERROR
    return 0


from isobox.cli import commands_compare as _compare  # noqa: E402
from isobox.cli import commands_images as _images  # noqa: E402 - it imports each/out from here
from isobox.cli import commands_networks as _net  # noqa: E402 - it imports each/out from here
from isobox.cli import commands_vm as _vm  # noqa: E402

VERBS: dict[str, Verb] = {
    "run": run, "create": create, "start": start, "exec": exec_, "stop": stop, "kill": kill, "rm": rm,
    "wait": wait, "ps": ps, "inspect": inspect, "logs": logs, "stats": stats,
    "image_ls": image_ls, "image_rm": image_rm, "image_build": _images.image_build,
    "image_load": _images.image_load, "image_save": _images.image_save,
    "image_import_disk": _images.image_import_disk, "image_inspect": _images.image_inspect,
    "image_history": _images.image_history, "image_tag": _images.image_tag, "image_prune": _images.image_prune,
    "build": _images.build,
    "system_info": system_info, "version": version,
    "cp": _vm.cp, "snapshot_create": _vm.snapshot_create, "snapshot_ls": _vm.snapshot_ls,
    "snapshot_restore": _vm.snapshot_restore, "snapshot_rm": _vm.snapshot_rm,
    "console": _vm.console,
    "compare": _compare.compare, "advise": _compare.advise,
    "network_create": _net.network_create, "network_ls": _net.network_ls,
    "network_inspect": _net.network_inspect, "network_rm": _net.network_rm, "port": _net.port,
}
