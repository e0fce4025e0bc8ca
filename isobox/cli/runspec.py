"""``run``/``create`` flags -> the workload spec.

``spec_body`` turns the parsed flags into the spec's JSON (what ``POST /containers`` takes),
``spec_from_args`` into a validated ``WorkloadSpec``.  Both are pure functions of the flags
and the caller's environment; they read only the files the flags name (``--env-file``,
``--security-opt seccomp=FILE``) and check that ``-v`` host paths exist.  Each bad value is
one ``InvalidArgument`` line, which the CLI prints and exits 125 on, as Docker does.

Why two: ``isobox.spec`` is made of dataclasses, and importing ``dataclasses`` (with
``inspect``, ``ast``, ``dis``...) costs ~15 ms, a fifth of ``isobox run``'s start-up.  So the
CLI sends ``spec_body`` and lets the daemon run ``WorkloadSpec.from_dict(...).validate()``,
which answers a bad name or hostname with the same one-line error.  The flag syntax that
``isobox.spec`` also parses (``-e``, ``-v``) is mirrored here; a unit test keeps the two equal.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from isobox.errors import InvalidArgument
from isobox.units import parse_cpus, parse_size

if TYPE_CHECKING:
    from isobox.spec import WorkloadSpec

ISOLATIONS = ("container", "gvisor", "vm")
VOLUME_OPTIONS = ("ro", "rw", "z", "Z")


def spec_from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> WorkloadSpec:
    from isobox.spec import WorkloadSpec

    return WorkloadSpec.from_dict(spec_body(args, environ)).validate()


def spec_body(args: argparse.Namespace, environ: Mapping[str, str]) -> dict[str, Any]:
    """The spec as JSON, with only what the flags set (the spec's defaults fill the rest)."""
    if args.isolation not in ISOLATIONS:
        raise InvalidArgument(f"invalid --isolation {args.isolation!r}", hint="use container, gvisor or vm")
    body: dict[str, Any] = {"image": args.image, "command": list(args.command), "isolation": args.isolation,
                            "network": args.network}
    if args.publish:
        from dataclasses import asdict

        from isobox.net.ports import check_publishable, parse_publish

        check_publishable(args.network)
        body["ports"] = [asdict(m) for spec in args.publish for m in parse_publish(spec)]
    for key in ("name", "workdir", "user", "hostname", "firmware"):
        if getattr(args, key) is not None:
            body[key] = getattr(args, key)
    if args.entrypoint is not None:
        body["entrypoint"] = [args.entrypoint] if args.entrypoint else []  # "" clears the image's
    env: dict[str, str] = {}
    for path in args.env_file:
        env.update(parse_env(read_env_file(path), environ))
    env.update(parse_env(args.env, environ))
    if env:
        body["env"] = env
    if args.volume:
        body["mounts"] = [bind_mount(v) for v in args.volume]
    if res := resources(args):
        body["resources"] = res
    if sec := security(args.security_opt, args.cap_add, args.cap_drop):
        body["security"] = sec
    for key in ("read_only", "init", "tty", "interactive", "auto_remove"):
        if getattr(args, key):
            body[key] = True
    if args.stop_timeout is not None:
        body["stop_timeout"] = parse_int(args.stop_timeout, "--stop-timeout")
    return body


def resources(args: argparse.Namespace) -> dict[str, Any]:
    res: dict[str, Any] = {}
    if args.memory is not None:
        res["memory"] = parse_size(args.memory, "--memory")
    if args.cpus is not None:
        res["cpus"] = parse_cpus(args.cpus)
    if args.pids_limit is not None:
        limit = parse_int(args.pids_limit, "--pids-limit")
        res["pids_limit"] = None if limit <= 0 else limit  # Docker: 0 and -1 mean unlimited
    return res


def security(opts: list[str], cap_add: list[str], cap_drop: list[str]) -> dict[str, Any]:
    sec: dict[str, Any] = {}
    if cap_add:
        sec["cap_add"] = capabilities(cap_add)
    if cap_drop:
        sec["cap_drop"] = capabilities(cap_drop)
    for opt in opts:
        # Docker accepts both "key=value" and the older "key:value".
        key, _, value = opt.partition("=" if "=" in opt else ":")
        if key == "seccomp" and value:
            if value == "unconfined":
                sec["seccomp"], sec["seccomp_profile"] = "unconfined", None
            else:
                sec["seccomp"], sec["seccomp_profile"] = "custom", read_seccomp_profile(value)
        elif key == "no-new-privileges" and value in ("", "true", "false"):
            sec["no_new_privileges"] = value != "false"
        elif key == "no-new-privileges":
            raise InvalidArgument(f"invalid --security-opt {opt!r}", hint="no-new-privileges[=true|false]")
        else:
            raise InvalidArgument(f"unsupported --security-opt {opt!r}",
                                  hint="isobox knows seccomp=unconfined|FILE.json and no-new-privileges[=true|false]")
    return sec


def capabilities(items: list[str]) -> list[str]:
    """``net_admin``, ``CAP_NET_ADMIN`` -> ``NET_ADMIN``; comma lists allowed; ``ALL`` kept."""
    caps = []
    for item in items:
        for name in item.split(","):
            name = name.strip().upper().removeprefix("CAP_")
            if not name:
                continue
            if not name.replace("_", "").isalnum():
                raise InvalidArgument(f"invalid capability {item!r}")
            caps.append(name)
    return caps


def parse_env(items: list[str], lookup: Mapping[str, str]) -> dict[str, str]:
    """``-e KEY=VALUE``, or ``-e KEY`` taken from the caller's environment (skipped if unset).
    Mirrors ``isobox.spec.parse_env``."""
    env: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not key:
            raise InvalidArgument(f"invalid environment variable {item!r}")
        if not sep:
            if key not in lookup:
                continue
            value = lookup[key]
        env[key] = value
    return env


def parse_volume(text: str) -> dict[str, Any]:
    """``-v HOST:CTR[:ro|rw]`` as a mount object.  Mirrors ``isobox.spec.parse_volume``."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise InvalidArgument(f"invalid volume {text!r}", hint="use -v /host/path:/container/path[:ro]")
    readonly = False
    if len(parts) == 3:
        opts = parts[2].split(",")
        if any(opt not in VOLUME_OPTIONS for opt in opts):
            raise InvalidArgument(f"invalid volume option in {text!r}")
        readonly = "ro" in opts
    return {"source": parts[0], "target": parts[1], "readonly": readonly}


def bind_mount(text: str) -> dict[str, Any]:
    mount = parse_volume(text)
    source = mount["source"]
    if source in (".", "..") or source.startswith(("./", "../")):
        source = os.path.abspath(source)  # Docker 23+ resolves explicit relative paths too
    elif not source.startswith("/"):
        raise InvalidArgument(f"invalid volume {text!r}: {source!r} is not an absolute host path",
                              hint="named volumes come later; use /abs/path or ./rel/path")
    if not os.path.exists(source):
        raise InvalidArgument(f"bind source path does not exist: {source}")
    mount["source"] = source
    return mount


def read_env_file(path: str) -> list[str]:
    """Docker's --env-file: KEY=VALUE or KEY lines; blank lines and # comments skipped."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise InvalidArgument(f"cannot read --env-file {path}: {exc.strerror}") from None
    return [ln.lstrip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def read_seccomp_profile(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            profile = json.load(f)
    except OSError as exc:
        raise InvalidArgument(f"opening seccomp profile ({path}) failed: {exc.strerror}") from None
    except ValueError as exc:
        raise InvalidArgument(f"seccomp profile {path} is not valid JSON: {exc}") from None
    if not isinstance(profile, dict):
        raise InvalidArgument(f"seccomp profile {path} is not a JSON object")
    return profile


def parse_int(text: str, flag: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise InvalidArgument(f"invalid {flag} {text!r}: not an integer") from None
