"""The image verbs beyond ls/rm: build, load, save, import-disk, inspect, history, tag, prune, and ``isobox build``.

Long operations ask the daemon for a progress stream (``?stream=true``, JSON lines; see
``isobox/daemon/routes_images.py``).  On a terminal the progress is a rich status line (rich is
imported only then); otherwise each step is a line on stderr.  Ctrl-C closes the connection,
which interrupts the daemon's work at its next step without leaving a partial image.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from isobox.cli import output
from isobox.cli.client import Client, path_for
from isobox.cli.commands import inspect_each, out
from isobox.errors import ERRORS_BY_KIND, InvalidArgument, IsoboxError


def image_build(args: argparse.Namespace, client: Client) -> int:
    include = [p for item in args.include for p in item.split(",") if p]
    body = {"kind": args.kind, "tag": args.tag, "include": include, "bootable": args.bootable}
    what = f"{args.kind} bootable disk" if args.bootable else args.kind
    image = stream(client, "/images/build", body, f"Building the {what} image")
    _built(image, what)
    return 0


def build(args: argparse.Namespace, client: Client) -> int:
    context = os.path.abspath(args.context)
    dockerfile = os.path.abspath(args.file) if args.file and args.file != "-" else None
    if args.file == "-":
        raise InvalidArgument("a Dockerfile on stdin is not supported yet", hint="give it with -f PATH")
    build_args = {}
    for item in args.build_arg:
        key, sep, value = item.partition("=")
        if not sep:
            value = os.environ.get(key, "")
        build_args[key] = value
    body = {"context": context, "dockerfile": dockerfile, "tags": list(args.tag), "build_args": build_args,
            "no_cache": args.no_cache}
    image = stream(client, "/images/build/dockerfile", body, "Building", echo=not args.quiet)
    if not args.quiet:
        _built(image, "image")
    out(str(image.get("Id", "")))
    return 0


def image_load(args: argparse.Namespace, client: Client) -> int:
    if not args.input or args.input == "-":
        raise InvalidArgument("image load needs an archive: -i FILE", hint="isobox image load -i image.tar")
    path = os.path.abspath(args.input)
    if not os.path.isfile(path):
        raise InvalidArgument(f"{args.input}: no such file")
    images = stream(client, "/images/load", {"path": path}, f"Loading {os.path.basename(path)}", echo=not args.quiet)
    for image in images:
        names = image.get("RepoTags") or [image.get("Id", "")]
        for name in names:
            out(f"Loaded image: {name}")
    return 0


def image_import_disk(args: argparse.Namespace, client: Client) -> int:
    path = os.path.abspath(args.file)
    if not os.path.isfile(path):
        raise InvalidArgument(f"{args.file}: no such file")
    image = stream(client, "/images/import-disk", {"path": path, "name": args.name},
                   f"Importing {os.path.basename(path)}", echo=not args.quiet)
    out(str(image.get("Id", "")))
    return 0


def image_save(args: argparse.Namespace, client: Client) -> int:
    if not args.output:
        raise InvalidArgument("image save writes a file: -o FILE", hint="isobox image save -o image.tar IMAGE")
    path = os.path.abspath(args.output)
    stream(client, "/images/save", {"image": args.image, "path": path}, f"Saving {args.image}", echo=False)
    return 0


def image_inspect(args: argparse.Namespace, client: Client) -> int:
    return inspect_each(args.images, lambda ref: client.call("GET", path_for("images", ref, "json")), args.format)


def image_history(args: argparse.Namespace, client: Client) -> int:
    rows = client.call("GET", path_for("images", args.image, "history"))
    if args.format == "json":
        out(output.dumps(rows))
        return 0
    table = []
    for row in rows:
        created_by = str(row.get("CreatedBy", ""))
        if not args.no_trunc and len(created_by) > 45:
            created_by = created_by[:44] + "…"
        table.append([str(row.get("Created", "")), created_by, str(row.get("Comment", ""))])
    out(output.table(["CREATED", "CREATED BY", "COMMENT"], table))
    return 0


def image_tag(args: argparse.Namespace, client: Client) -> int:
    client.call("POST", path_for("images", args.image, "tag"), {"target": args.target})
    return 0


def image_prune(args: argparse.Namespace, client: Client) -> int:
    result = client.call("POST", path_for("images", "prune", query={"all": args.all or None}))
    for image_id in result.get("ImagesDeleted") or []:
        out(f"Deleted: {image_id}")
    out(f"Total reclaimed space: {output.format_size(float(result.get('SpaceReclaimed') or 0))}")
    return 0


def _built(image: dict[str, Any], what: str) -> None:
    tags = ", ".join(image.get("RepoTags") or [])
    size = output.format_size(float(image.get("Size") or 0))
    print(f"Built {tags or what} ({size})", file=sys.stderr)
    if "Id" in image and what != "image":
        out(str(image["Id"]))


def stream(client: Client, target: str, body: dict[str, Any], title: str, echo: bool = True) -> Any:
    """POST ``body`` to ``target`` with a progress stream; the result, or the error raised."""
    resp = client.send("POST", target + "?stream=true", body)
    status = None
    if echo and sys.stderr.isatty():
        from rich.console import Console  # only here: a long operation on a terminal

        status = Console(stderr=True).status(title + "…")
        status.start()
    started = time.monotonic()
    try:
        for item in _lines(resp):
            if "progress" in item:
                text = str(item["progress"])
                if status is not None:
                    status.update(f"{title}: {text}")
                elif echo:
                    print(text, file=sys.stderr, flush=True)
            elif "error" in item:
                err = item["error"] or {}
                cls = ERRORS_BY_KIND.get(str(err.get("kind")), IsoboxError)
                raise cls(str(err.get("message", "failed")), err.get("hint"))
            elif "result" in item:
                if echo and status is None:
                    print(f"done in {time.monotonic() - started:.1f}s", file=sys.stderr)
                return item["result"]
    finally:
        if status is not None:
            status.stop()
        resp.close()
    raise IsoboxError("the daemon ended the stream without a result", hint="see the isoboxd log")


def _lines(resp: Any) -> Any:
    pending = b""
    for chunk in resp.iter_chunks():
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            if line.strip():
                yield json.loads(line)
    if pending.strip():
        yield json.loads(pending)


__all__ = ["build", "image_build", "image_history", "image_import_disk", "image_inspect", "image_load",
           "image_prune", "image_save", "image_tag"]
