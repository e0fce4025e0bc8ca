"""``isobox-runtime``: the OCI runtime command line (runc's verbs and the flags engines pass).

    isobox-runtime [--root DIR] [--log FILE] [--log-format text|json] [--systemd-cgroup] COMMAND ...

Start-up time counts (an engine runs this several times per container), so the parser is a
small table instead of argparse and the runtime modules are imported only by the verb that
needs them; none of them imports json, re, enum, dataclasses, pathlib, typing, contextlib,
socket or signal on the way to ``create``/``start``/``state``/``kill``/``delete``/``run`` (see
jsonio.py).  ``scripts/setup.sh`` installs a launcher that starts the interpreter with ``-I -S``.
Errors exit 1 (runc's code); ``run`` and ``exec`` exit with the workload's code.
"""

from __future__ import annotations

import gc
import os
import sys
import time

from isobox.oci import jsonio

TYPE_CHECKING = False  # (typing itself costs ms at start-up)
if TYPE_CHECKING:
    from typing import NoReturn

VERSION = "0.1.0"
OCI_VERSION = "1.0.2"

# flag -> (destination, takes a value, repeatable); aliases share a destination.
_GLOBAL = {
    "--root": ("root", True), "--log": ("log", True), "--log-format": ("log_format", True),
    "--systemd-cgroup": ("systemd_cgroup", False), "--debug": ("debug", False),
    "--rootless": ("rootless", True), "--criu": ("criu", True),
}  # fmt: skip
_CREATE = {
    "--bundle": ("bundle", True), "-b": ("bundle", True), "--pid-file": ("pid_file", True),
    "--console-socket": ("console_socket", True), "--preserve-fds": ("preserve_fds", True),
    "--no-new-keyring": ("no_new_keyring", False), "--no-pivot": ("no_pivot", False),
}  # fmt: skip
_COMMANDS: dict[str, dict[str, tuple[str, bool]]] = {
    "create": _CREATE,
    "run": {**_CREATE, "--detach": ("detach", False), "-d": ("detach", False), "--keep": ("keep", False)},
    "start": {},
    "state": {},
    "kill": {"--all": ("all", False), "-a": ("all", False)},
    "delete": {"--force": ("force", False), "-f": ("force", False)},
    "exec": {
        "--process": ("process", True), "-p": ("process", True), "--detach": ("detach", False),
        "-d": ("detach", False), "--pid-file": ("pid_file", True), "--console-socket": ("console_socket", True),
        "--tty": ("tty", False), "-t": ("tty", False), "--cwd": ("cwd", True), "--env": ("env", True),
        "-e": ("env", True), "--user": ("user", True), "-u": ("user", True), "--cap": ("cap", True),
        "-c": ("cap", True), "--no-new-privs": ("no_new_privs", False), "--preserve-fds": ("preserve_fds", True),
        "--additional-gids": ("additional_gids", True), "-g": ("additional_gids", True),
    },
    "list": {"--format": ("format", True), "-f": ("format", True), "--quiet": ("quiet", False),
             "-q": ("quiet", False)},
    "features": {},
    "version": {},
    "pause": {},
    "resume": {},
}
_REPEATABLE = {"env", "cap", "additional_gids"}
# command -> (fewest, most) positional arguments; None: no upper bound
_POSITIONAL: dict[str, tuple[int, int | None]] = {
    "create": (1, 1), "run": (1, 1), "start": (1, 1), "state": (1, 1), "kill": (1, 2), "delete": (1, 1),
    "exec": (1, None), "list": (0, 0), "features": (0, 0), "version": (0, 0), "pause": (1, 1), "resume": (1, 1),
}


class UsageError(Exception):
    pass


class Args:
    def __init__(self) -> None:
        self.command = ""
        self.opts: dict[str, object] = {}
        self.positional: list[str] = []


def _take(argv: list[str], i: int, table: dict[str, tuple[str, bool]], opts: dict[str, object],
          where: str) -> int:
    arg = argv[i]
    name, eq, value = arg.partition("=")
    if name not in table:
        raise UsageError(f"unknown flag {name!r} for {where}")
    dest, takes_value = table[name]
    if not takes_value:
        if eq:
            opts[dest] = value.lower() not in ("false", "0")
        else:
            opts[dest] = True
        return i + 1
    if not eq:
        if i + 1 >= len(argv):
            raise UsageError(f"flag {name} of {where} needs a value")
        value, i = argv[i + 1], i + 1
    if dest in _REPEATABLE:
        opts.setdefault(dest, [])
        opts[dest].append(value)  # type: ignore[attr-defined]
    else:
        opts[dest] = value
    return i + 1


def parse(argv: list[str]) -> Args:
    args = Args()
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        if argv[i] in ("--version", "-v"):
            args.command = "version"
            return args
        if argv[i] in ("--help", "-h"):
            args.command = "help"
            return args
        i = _take(argv, i, _GLOBAL, args.opts, "isobox-runtime")
    if i >= len(argv):
        raise UsageError("no command given")
    args.command = argv[i]
    if args.command not in _COMMANDS:
        raise UsageError(f"unknown command {args.command!r}")
    table = _COMMANDS[args.command]
    i += 1
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            args.positional += argv[i + 1:]
            break
        if arg.startswith("-") and len(arg) > 1 and not (args.command == "exec" and len(args.positional) >= 1):
            i = _take(argv, i, table, args.opts, args.command)
            continue
        args.positional.append(arg)
        i += 1
    lo, hi = _POSITIONAL[args.command]
    if len(args.positional) < lo or (hi is not None and len(args.positional) > hi):
        raise UsageError(f"{args.command}: expected {lo if lo == hi else f'{lo} or more'} argument(s), "
                         f"got {len(args.positional)}")
    return args


# --- logging -------------------------------------------------------------------------------------


class Log:
    def __init__(self, path: str | None, fmt: str) -> None:
        self.path, self.json = path, fmt == "json"

    def error(self, message: str, hint: str | None = None) -> None:
        text = message + (f" ({hint})" if hint else "")
        sys.stderr.write(f"isobox-runtime: {text}\n")
        if self.path:
            if self.json:
                line = jsonio.dumps({"level": "error", "msg": text,
                                   "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
            else:
                line = f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} error: {text}"
            try:
                with open(self.path, "a") as fh:
                    fh.write(line + "\n")
            except OSError:
                pass


# --- verbs ---------------------------------------------------------------------------------------

HELP = """isobox-runtime: isobox's container runtime behind the OCI runtime command line

usage: isobox-runtime [--root DIR] [--log FILE] [--log-format text|json] COMMAND [FLAGS] ...

commands:
  create [--bundle DIR] [--pid-file F] [--console-socket S] [--preserve-fds N] ID
  start ID            run the created container's process
  state ID            print the OCI state document
  kill [--all] ID [SIGNAL]
  delete [--force] ID
  run [--bundle DIR] [--detach] [--pid-file F] [--console-socket S] ID   (create + start + wait)
  exec [--process FILE | ARGS...] [--detach] [--pid-file F] [--tty] [--cwd D] [--env K=V] [--user U[:G]] ID
  pause ID / resume ID   freeze / thaw every process (cgroup freezer)
  list [--format table|json] [--quiet]
  features            what this runtime implements (runtime-spec features.md)
"""


def _bundle(opts: dict[str, object]) -> str:
    return str(opts.get("bundle") or os.getcwd())


def _int_opt(opts: dict[str, object], key: str) -> int:
    value = opts.get(key) or 0
    try:
        return int(value)  # type: ignore[call-overload]
    except ValueError:
        raise UsageError(f"--{key.replace('_', '-')} takes a number, got {value!r}") from None


def _refuse_unsupported(args: Args) -> None:
    if args.opts.get("systemd_cgroup"):
        raise UsageError("--systemd-cgroup is not supported: isobox-runtime manages cgroupfs itself "
                         "(with podman: --cgroup-manager cgroupfs)")
    if args.opts.get("no_pivot"):
        raise UsageError("--no-pivot is not supported: the container root is always entered with pivot_root")
    if str(args.opts.get("rootless", "false")) not in ("false", "auto") or (
            args.opts.get("rootless") == "auto" and os.geteuid() != 0):
        raise UsageError("rootless mode is not supported yet")


def _exec_process_doc(args: Args) -> dict[str, object]:
    opts = args.opts
    if opts.get("process"):
        with open(str(opts["process"]), "rb") as fh:
            doc = jsonio.loads(fh.read())
        if not isinstance(doc, dict):
            raise UsageError("--process: expected a JSON object")
        return doc
    argv = args.positional[1:]
    if not argv:
        raise UsageError("exec: give the command to run, or --process FILE")
    user, _, group = str(opts.get("user") or "0:0").partition(":")
    caps = [c if c.upper().startswith("CAP_") else "CAP_" + c for c in opts.get("cap", [])]  # type: ignore[attr-defined]
    return {
        "args": argv, "cwd": opts.get("cwd") or "/", "terminal": bool(opts.get("tty")),
        "env": list(opts.get("env", [])) or ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],  # type: ignore[call-overload]
        "user": {"uid": int(user or 0), "gid": int(group or 0),
                 "additionalGids": [int(g) for g in opts.get("additional_gids", [])]},  # type: ignore[attr-defined]
        "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
        "noNewPrivileges": bool(opts.get("no_new_privs")),
    }


def _features() -> dict[str, object]:
    from isobox.oci import bundle  # noqa: PLC0415
    from isobox.runtimes.container.caps import all_caps  # noqa: PLC0415

    return {
        "ociVersionMin": "1.0.0", "ociVersionMax": "1.2.0",
        "hooks": list(bundle.HOOK_KINDS),
        "mountOptions": sorted([*bundle.MOUNT_FLAGS, *bundle.PROPAGATION, "bind", "rbind"]),
        "linux": {
            "namespaces": sorted(bundle.NAMESPACES),
            "capabilities": ["CAP_" + c for c in all_caps()],
            "cgroup": {"v1": True, "v2": True, "systemd": False, "systemdUser": False},
            "seccomp": {"enabled": True},
            "apparmor": {"enabled": True}, "selinux": {"enabled": False},
        },
        "annotations": {"io.isobox.runtime.version": VERSION},
    }


def _list(root: str, opts: dict[str, object]) -> None:
    from isobox.oci.state import StateDir, all_ids, document  # noqa: PLC0415

    docs = []
    for cid in all_ids(root):
        sdir = StateDir(root, cid)
        try:
            docs.append(document(sdir, sdir.load()))
        except Exception:  # noqa: BLE001 - a half-created container: leave it out, as runc does
            continue
    if opts.get("quiet"):
        print("\n".join(str(d["id"]) for d in docs))
    elif opts.get("format") == "json":
        print(jsonio.dumps(docs))
    else:
        print(f"{'ID':<24}{'PID':<10}{'STATUS':<10}{'BUNDLE':<40}{'CREATED':<32}OWNER")
        for d in docs:
            print(f"{d['id']!s:<24}{d['pid']!s:<10}{d['status']!s:<10}{d['bundle']!s:<40}{d['created']!s:<32}root")


def dispatch(args: Args) -> int:
    from isobox.oci.state import DEFAULT_ROOT  # noqa: PLC0415

    root = str(args.opts.get("root") or DEFAULT_ROOT)
    cmd, pos, opts = args.command, args.positional, args.opts
    if cmd == "help":
        sys.stdout.write(HELP)
        return 0
    if cmd == "version":
        print(f"isobox-runtime version {VERSION}\nspec: {OCI_VERSION}")
        return 0
    if cmd == "features":
        print(jsonio.dumps(_features(), indent=2))
        return 0
    if cmd == "list":
        _list(root, opts)
        return 0
    _refuse_unsupported(args)
    if cmd == "state":  # (the most frequent call: it needs only the state module)
        from isobox.oci.state import StateDir, document  # noqa: PLC0415

        sdir = StateDir(root, pos[0])
        print(jsonio.dumps(document(sdir, sdir.load()), indent=2))
        return 0
    from isobox.oci import lifecycle  # noqa: PLC0415

    if cmd in ("create", "run"):
        sdir, state = lifecycle.create(root, pos[0], _bundle(opts), pid_file=opts.get("pid_file"),  # type: ignore[arg-type]
                                       console_socket=opts.get("console_socket"),  # type: ignore[arg-type]
                                       preserve_fds=_int_opt(opts, "preserve_fds"))
        if cmd == "create":
            return 0
        lifecycle.start(root, pos[0], state)
        if opts.get("detach"):
            return 0
        code = lifecycle.wait_forwarding(state.pid)
        if not opts.get("keep"):
            lifecycle.delete(root, pos[0], force=True, state=state)
        return code
    if cmd == "start":
        lifecycle.start(root, pos[0])
    elif cmd == "kill":
        lifecycle.kill(root, pos[0], lifecycle.parse_signal(pos[1] if len(pos) > 1 else "SIGTERM"),
                       bool(opts.get("all")))
    elif cmd in ("pause", "resume"):
        lifecycle.pause(root, pos[0], frozen=cmd == "pause")
    elif cmd == "delete":
        lifecycle.delete(root, pos[0], bool(opts.get("force")))
    elif cmd == "exec":
        return lifecycle.exec_process(root, pos[0], _exec_process_doc(args), detach=bool(opts.get("detach")),
                                      pid_file=opts.get("pid_file"),  # type: ignore[arg-type]
                                      console_socket=opts.get("console_socket"),  # type: ignore[arg-type]
                                      preserve_fds=_int_opt(opts, "preserve_fds"))
    return 0


def main(argv: list[str] | None = None) -> int:
    # A process that lives a few milliseconds: the cycle collector only costs time here (one
    # collection among the imports a verb makes is ~1 ms).  Restored for in-process callers.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _main(sys.argv[1:] if argv is None else argv)
    finally:
        if collecting:
            gc.enable()


def _main(argv: list[str]) -> int:
    log = Log(None, "text")
    try:
        args = parse(argv)
        log = Log(args.opts.get("log"), str(args.opts.get("log_format") or "text"))  # type: ignore[arg-type]
        if args.opts.get("log_format") not in (None, "text", "json"):
            raise UsageError(f"--log-format must be text or json, not {args.opts['log_format']!r}")
        return dispatch(args)
    except UsageError as exc:
        log.error(str(exc), "see isobox-runtime --help")
        return 1
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line (and the log entry)
        from isobox.errors import IsoboxError  # noqa: PLC0415

        if isinstance(exc, IsoboxError):
            log.error(exc.message, exc.hint)
        elif isinstance(exc, OSError):
            log.error(f"{exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}")
        else:
            log.error(f"{type(exc).__name__}: {exc}")
        if os.environ.get("ISOBOX_RUNTIME_DEBUG"):
            raise
        return 1


def entry() -> NoReturn:
    """The process's entry point (the launcher's and the console script's): ``main()``, then exit
    without the interpreter's finalization.  Tearing every module and object down takes ~5 ms
    here, and a runtime call has nothing left to clean up: no threads, no atexit handlers, its
    files closed; only Python's own output buffers, flushed here."""
    code = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            code = code or 120  # the interpreter's own exit status when its output cannot be flushed
    os._exit(code)


if __name__ == "__main__":
    entry()
