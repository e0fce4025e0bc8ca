"""The OCI lifecycle (runtime.md "Lifecycle") on top of the container set-up code the daemon uses.

    isobox-runtime create ──fork──> init (PID 1 of the new pid namespace)
         │  makes the cgroup         gets ready to join it (imports, signals, fifo)
         │  ── its files ─────────>  joins the cgroup and namespaces, builds the root
         │                           (setup.setup_container), drops privileges,
         │  <── "ready" ─────────── then blocks reading <state>/exec.fifo
         └ writes state.json and --pid-file, exits: init is re-parented to the nearest
           subreaper (conmon), which reaps it and records its exit code, as with runc.
    isobox-runtime start ── writes one byte into exec.fifo, removes it ──> init execs the workload

The fifo is opened by init O_RDWR before it pivots (so it never needs a host path afterwards and
``start`` never blocks: with no reader left, the write-side open fails with ENXIO).  The cgroup
is made while the init gets ready (two things at once on two cores, instead of one after the
other); the init reports "ready" or its error through a pipe, whose EOF (exit, or exec: it is
close-on-exec) ends the message.

Every verb is a new process, so imports are few and late: ``start``, ``state``, ``kill`` and
``delete`` load neither ctypes nor the bundle parser; ``signal`` is used through ``_signal``
(the module ``signal`` only adds enum wrappers, and the enum import); ``socket`` and
``termios`` only with a terminal; no ``contextlib``.
"""

from __future__ import annotations

import _signal as signal  # the C module under `signal`, without its enums (see above)
import os
import select
import time

from isobox.errors import Conflict, InvalidArgument, IsoboxError, RuntimeFailure
from isobox.oci import jsonio
from isobox.oci.state import State, StateDir, document, process_alive, start_time, status

TYPE_CHECKING = False  # typing costs ms on every runtime call
if TYPE_CHECKING:
    import socket
    from typing import Any

    from isobox.oci import bundle as oci_bundle
    from isobox.runtimes.container.cgroups import Cgroup, Layout
    from isobox.runtimes.container.config import ProcessConfig

DEFAULT_CGROUP_PARENT = "isobox-runtime"
READY_TIMEOUT = 30.0


# --- helpers shared by create and exec -----------------------------------------------------------


def _send(fd: int, msg: object) -> None:
    data = jsonio.dumps(msg).encode()
    while data:
        data = data[os.write(fd, data):]


def _describe(exc: BaseException) -> str:
    if isinstance(exc, IsoboxError):
        return exc.message
    if isinstance(exc, OSError):
        return f"{exc.filename}: {exc.strerror}" if exc.filename else f"{exc.strerror or exc}"
    return f"{type(exc).__name__}: {exc}"


def _reset_signals() -> None:
    for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _wait_message(fd: int) -> dict[str, Any]:
    """The child's message, read until its end of the pipe closes; {} when it sent none."""
    deadline = time.monotonic() + READY_TIMEOUT
    data = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            return {"error": "the container did not get ready in time"}
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    return jsonio.loads(data) if data else {}


def _find_executable(argv0: str, env: dict[str, str]) -> str | None:
    """runc checks the program exists before ``create`` returns: a bad command fails create."""
    if "/" in argv0:
        return argv0 if os.access(argv0, os.X_OK) and not os.path.isdir(argv0) else None
    for d in env.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin").split(":"):
        path = os.path.join(d or ".", argv0)
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
    return None


def _enter_cwd(cwd: str) -> None:
    try:
        os.chdir(cwd)
    except OSError as exc:
        raise RuntimeFailure(f"chdir to cwd ({cwd!r}) set in config.json failed: {exc.strerror}") from None
    # CVE-2024-21626: a working directory reached through a leaked host fd is outside the root.
    if not os.getcwd().startswith("/"):
        raise RuntimeFailure(f"cwd {cwd!r} is outside the container's root")


def _set_apparmor(profile: str) -> None:
    if not profile:
        return
    for path in ("/proc/self/attr/apparmor/exec", "/proc/self/attr/exec"):
        try:
            with open(path, "w") as fh:
                fh.write(f"exec {profile}")
            return
        except FileNotFoundError:
            continue
    raise RuntimeFailure(f"apparmor profile {profile!r} requested, but AppArmor is not available")


def _terminal_modules(tty: bool) -> None:
    """Import what ``_setup_stdio`` needs with a terminal while the host's root is still ours:
    it runs after pivot_root (create) or setns into the container's mounts (exec)."""
    if tty:
        import fcntl  # noqa: F401, PLC0415
        import socket  # noqa: F401, PLC0415
        import termios  # noqa: F401, PLC0415


def _setup_stdio(tty: bool, console: socket.socket | None) -> None:
    os.setsid()
    if not tty:
        return
    if console is None:
        raise InvalidArgument("process.terminal is set but no --console-socket was given")
    import fcntl  # noqa: PLC0415 - imported by _terminal_modules() before the root changed
    import socket  # noqa: PLC0415
    import termios  # noqa: PLC0415

    from isobox.runtimes.container import syscalls as sc  # noqa: PLC0415

    master, slave = os.openpty()  # in the container's devpts: the name means something inside
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    root = os.open("/", os.O_PATH | os.O_CLOEXEC)
    try:
        target = sc.mkdir_in_root(root, "/dev/console", as_file=True)
        try:  # noqa: SIM105 - (no contextlib import: see the module docstring)
            sc.mount(os.ttyname(slave), sc.fd_path(target), None, sc.MS_BIND)
        except OSError:
            pass
        os.close(target)
    finally:
        os.close(root)
    socket.send_fds(console, [b"/dev/ptmx"], [master])
    os.close(master)
    console.close()
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    os.close(slave)


def _exec_env(proc: ProcessConfig, home: str) -> dict[str, str]:
    env = dict(proc.env)
    env.setdefault("HOME", home)  # runc sets HOME from the passwd entry when the config does not
    return env


def _exec_or_die(proc: ProcessConfig, env: dict[str, str], preserve_fds: int, sync: int | None = None) -> None:
    from isobox.runtimes.container.process import exec_workload  # noqa: PLC0415

    keep = tuple(range(3, 3 + preserve_fds)) + ((sync,) if sync is not None else ())
    code, message = exec_workload(proc, env, keep_fds=keep)
    if sync is not None:
        try:  # noqa: SIM105
            _send(sync, {"exec_error": message, "code": code})
        except OSError:
            pass
    try:  # noqa: SIM105
        os.write(2, f"isobox-runtime: {message}\n".encode())
    except OSError:
        pass
    os._exit(code)


# --- create --------------------------------------------------------------------------------------


def _cgroup_location(b: oci_bundle.Bundle) -> tuple[str, str]:
    parts = [p for p in b.cgroups_path.split("/") if p]
    if not parts:
        return DEFAULT_CGROUP_PARENT, b.id
    if ":" in parts[-1] and len(parts) == 1:
        raise InvalidArgument(f"cgroupsPath {b.cgroups_path!r} is a systemd slice:prefix:name path",
                              hint="isobox-runtime manages cgroupfs directly; use --cgroup-manager cgroupfs")
    return "/".join(parts[:-1]) or DEFAULT_CGROUP_PARENT, parts[-1]


_layout: list[Layout] = []


_created: dict[str, Cgroup] = {}  # container id -> the cgroup create made (for run's delete)


def _cgroup_layout() -> Layout:
    """The host's cgroup layout with str paths (no pathlib import: see cgroups.py's docstring)."""
    from isobox.runtimes.container import cgroups  # noqa: PLC0415

    if not _layout:
        _layout.append(cgroups.detect("/sys/fs/cgroup", "/proc/self/mountinfo"))
    return _layout[0]


def _make_cgroup(b: oci_bundle.Bundle) -> Cgroup:
    from isobox.runtimes.container import cgroups  # noqa: PLC0415

    r = b.resources
    devices: tuple[cgroups.DeviceRule, ...]
    if r.allow_all_devices:
        devices = cgroups.ALLOW_ALL_DEVICES
    else:
        extra = [cgroups.DeviceRule(*rule) for rule in r.device_allow]
        nodes = [cgroups.DeviceRule("b" if n.kind == "b" else "c", n.major, n.minor, "rwm")
                 for n in b.config.devices if n.kind != "p"]
        devices = tuple(dict.fromkeys((*cgroups.DEFAULT_DEVICE_RULES, *extra, *nodes)))
    limits = cgroups.Limits(memory=r.memory, cpus=r.cpus, pids=r.pids, devices=devices, memory_swap=r.memory_swap)
    parent, name = _cgroup_location(b)
    return cgroups.Cgroup.create(_cgroup_layout(), name, limits, parent)


def _open_cgroup(state: State) -> Cgroup | None:
    from isobox.runtimes.container import cgroups  # noqa: PLC0415

    if not state.cgroup_name:
        return None
    made = _created.get(state.id)
    if made is not None and (made.parent, made.name) == (state.cgroup_parent, state.cgroup_name):
        return made
    try:
        return cgroups.Cgroup.open(_cgroup_layout(), state.cgroup_name, state.cgroup_parent)
    except IsoboxError:
        return None


def _compile_seccomp(b: oci_bundle.Bundle) -> bytes | None:
    if b.seccomp is None:
        return None
    from isobox.oci import seccomp_cache  # noqa: PLC0415

    caps = b.config.process.cap_sets.bounding if b.config.process.cap_sets else ()
    return seccomp_cache.compile_bpf(b.seccomp, caps)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _init(b: oci_bundle.Bundle, sdir: StateDir, sync: int, go: int, console: socket.socket | None,
          preserve_fds: int, join: tuple[tuple[int, int], ...]) -> None:
    """The container's first process; never returns.  ``go`` brings the cgroup's files once it
    exists (EOF without them: ``create`` failed)."""
    from isobox.runtimes.container import syscalls as sc  # noqa: PLC0415
    from isobox.runtimes.container.process import become, identity_of  # noqa: PLC0415
    from isobox.runtimes.container.setup import setup_container  # noqa: PLC0415

    try:
        _reset_signals()
        sc.set_dumpable(False)  # CVE-2019-5736, until exec
        if b.oom_score_adj is not None:
            with open("/proc/self/oom_score_adj", "w") as fh:
                fh.write(str(b.oom_score_adj))
        fifo = os.open(sdir.fifo, os.O_RDWR | os.O_CLOEXEC)
        proc = b.config.process
        _terminal_modules(proc.tty)
        cgroup_files = _read_all(go)
        if not cgroup_files:
            os._exit(1)
        os.close(go)
        b.config.cgroup_procs = jsonio.loads(cgroup_files)
        setup_container(b.config, b.namespaces.new & ~sc.CLONE_NEWPID, join)
        ident = identity_of(proc)
        env = _exec_env(proc, ident.home)
        if _find_executable(proc.argv[0], env) is None:
            where = " in $PATH" if "/" not in proc.argv[0] else ""
            raise RuntimeFailure(f'exec: "{proc.argv[0]}": executable file not found{where}'
                                 if where else f'exec: "{proc.argv[0]}": stat {proc.argv[0]}: no such file or directory')
        _enter_cwd(proc.cwd)
        _set_apparmor(b.apparmor)
        _setup_stdio(proc.tty, console)
        become(proc, ident)
        _send(sync, {"ready": True})
        os.close(sync)
        if os.read(fifo, 1) != b"0":
            os._exit(1)
        _exec_or_die(proc, env, preserve_fds)
    except BaseException as exc:  # noqa: BLE001 - reported to `create`
        try:  # noqa: SIM105
            _send(sync, {"error": _describe(exc)})
        except OSError:
            pass
    os._exit(1)


def _connect_console(path: str | None, terminal: bool) -> socket.socket | None:
    if not path:
        return None
    if not terminal:
        raise InvalidArgument("--console-socket was given, but process.terminal is not set")
    import socket  # noqa: PLC0415 - only with a terminal

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as exc:
        sock.close()
        raise RuntimeFailure(f"cannot connect to the console socket {path}: {exc.strerror}") from None
    return sock


def _open_joins(b: oci_bundle.Bundle) -> tuple[list[tuple[int, int]], int | None]:
    """Open the namespaces to join; the pid one is returned apart (the runtime joins it before fork)."""
    from isobox.runtimes.container import syscalls as sc  # noqa: PLC0415

    joins, pid_ns = [], None
    try:
        for path, kind in b.namespaces.join:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                raise RuntimeFailure(f"cannot open namespace {path}: {exc.strerror}") from None
            if kind == sc.CLONE_NEWPID:
                pid_ns = fd
            else:
                joins.append((fd, kind))
    except BaseException:
        for fd, _ in joins:
            os.close(fd)
        raise
    return joins, pid_ns


def run_hooks(kind: str, hooks: list[Any], doc: dict[str, object]) -> None:
    if not hooks:
        return
    import subprocess  # noqa: PLC0415 - only bundles with hooks pay for it

    for hook in hooks:
        hook = hook if isinstance(hook, dict) else vars(hook)
        env = dict(e.split("=", 1) for e in hook.get("env") or [] if "=" in e)
        try:
            proc = subprocess.run(hook["args"] or [hook["path"]], executable=hook["path"], env=env,
                                  input=jsonio.dumps(doc).encode(), capture_output=True,
                                  timeout=hook.get("timeout") or None, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RuntimeFailure(f"{kind} hook {hook['path']} failed: {exc}") from None
        if proc.returncode != 0:
            raise RuntimeFailure(f"{kind} hook {hook['path']} exited {proc.returncode}: "
                                 f"{proc.stderr.decode(errors='replace').strip()}")


def create(root: str, container_id: str, bundle_dir: str, *, pid_file: str | None = None,
           console_socket: str | None = None, preserve_fds: int = 0) -> tuple[StateDir, State]:
    """Set the container up and leave its process blocked before exec.  The init is our child:
    ``run`` waits for it; ``create`` exits and lets the subreaper above (conmon) adopt it."""
    from isobox.oci import bundle as oci_bundle  # noqa: PLC0415
    from isobox.runtimes.container import syscalls as sc  # noqa: PLC0415

    b = oci_bundle.load(bundle_dir, container_id)
    sdir = StateDir(root, container_id)
    sdir.create()
    child = 0
    cgroup = None
    try:
        b.config.process.seccomp_bpf = _compile_seccomp(b)
        _cgroup_location(b)  # (its errors before any process exists)
        console = _connect_console(console_socket, b.config.process.tty)
        joins, pid_ns = _open_joins(b)
        own_pid_ns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        sync, child_sync = os.pipe2(os.O_CLOEXEC)
        child_go, go = os.pipe2(os.O_CLOEXEC)
        if pid_ns is not None:
            sc.setns(pid_ns, sc.CLONE_NEWPID)
        elif b.namespaces.new & sc.CLONE_NEWPID:
            sc.unshare(sc.CLONE_NEWPID)
        child = os.fork()
        if child == 0:
            os.close(sync)
            os.close(go)
            _init(b, sdir, child_sync, child_go, console, preserve_fds, tuple(joins))
        sc.setns(own_pid_ns, sc.CLONE_NEWPID)  # later forks (hooks) stay in our own pid namespace
        os.close(own_pid_ns)
        os.close(child_sync)
        os.close(child_go)
        for fd in [fd for fd, _ in joins] + ([pid_ns] if pid_ns is not None else []):
            os.close(fd)
        if console is not None:
            console.close()
        cgroup = _make_cgroup(b)
        _created[container_id] = cgroup
        _send(go, [str(p) for p in cgroup.self_join_files()])
        os.close(go)
        msg = _wait_message(sync)
        os.close(sync)
        if not msg.get("ready"):
            raise RuntimeFailure(str(msg.get("error", "the container's init died during set-up")))
        all_ns = b.namespaces.new | sum({k for _, k in b.namespaces.join})
        state = State(container_id, child, start_time(child) or 0, b.path, b.config.rootfs,
                      time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime()), b.annotations,
                      cgroup.parent, cgroup.name, all_ns,
                      [vars(h) for h in b.hooks.get("poststop", [])])
        sdir.save(state)
        if b.hooks.get("createRuntime") or b.hooks.get("prestart"):
            doc = document(sdir, state)
            run_hooks("createRuntime", b.hooks.get("createRuntime", []), doc)
            run_hooks("prestart", b.hooks.get("prestart", []), doc)
        if b.hooks.get("poststart"):
            with open(os.path.join(sdir.path, "poststart.json"), "w") as fh:
                fh.write(jsonio.dumps([vars(h) for h in b.hooks["poststart"]]))
        if pid_file:
            _write_pid_file(pid_file, child)
        return sdir, state
    except BaseException:
        if child:
            try:  # noqa: SIM105
                os.kill(child, signal.SIGKILL)
            except OSError:
                pass
            try:  # noqa: SIM105
                os.waitpid(child, 0)
            except ChildProcessError:
                pass
        if cgroup is not None:
            try:  # noqa: SIM105
                cgroup.destroy()
            except Exception:  # noqa: BLE001 - the original error is what the user needs
                pass
        sdir.remove()
        raise


def _write_pid_file(path: str, pid: int) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        fh.write(str(pid))
    os.rename(tmp, path)


# --- start, kill, delete -------------------------------------------------------------------------


def start(root: str, container_id: str, state: State | None = None) -> None:
    """``state``: what ``create`` returned, when ``run`` starts what it created."""
    sdir = StateDir(root, container_id)
    state = state if state is not None else sdir.load()
    st = status(sdir, state)
    if st != "created":
        raise Conflict(f"cannot start a container that is {st}", hint="only a created container can start")
    try:
        fd = os.open(sdir.fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:  # ENXIO: nobody holds the read side any more
        raise RuntimeFailure(f"the container's init is gone ({exc.strerror})") from None
    try:
        os.write(fd, b"0")
    finally:
        os.close(fd)
    os.unlink(sdir.fifo)
    hooks_file = os.path.join(sdir.path, "poststart.json")
    if os.path.exists(hooks_file):
        with open(hooks_file, "rb") as fh:
            hooks = jsonio.loads(fh.read())
        try:  # noqa: SIM105
            run_hooks("poststart", hooks, document(sdir, state))
        except RuntimeFailure:  # poststart failures are logged, not fatal (spec)
            pass


def parse_signal(text: str) -> int:
    if text.isdigit():
        return int(text)  # what engines pass
    import signal as signal_module  # noqa: PLC0415 - only for names (it imports enum)

    signals = {s.name: int(s) for s in signal_module.Signals}
    name = text.upper()
    name = name if name.startswith("SIG") else "SIG" + name
    if name not in signals:
        raise InvalidArgument(f"unknown signal {text!r}")
    return signals[name]


def kill(root: str, container_id: str, sig: int, all_processes: bool = False) -> None:
    sdir = StateDir(root, container_id)
    state = sdir.load()
    if status(sdir, state) == "stopped":
        raise Conflict("container not running")
    if all_processes:
        cgroup = _open_cgroup(state)
        for pid in cgroup.pids() if cgroup is not None else [state.pid]:
            try:  # noqa: SIM105
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        return
    os.kill(state.pid, sig)


def pause(root: str, container_id: str, frozen: bool) -> None:
    """``pause``/``resume``: the cgroup freezer (v1 freezer.state, v2 cgroup.freeze)."""
    sdir = StateDir(root, container_id)
    state = sdir.load()
    st = status(sdir, state)
    if st not in (("running",) if frozen else ("paused",)):
        raise Conflict(f"cannot {'pause' if frozen else 'resume'} a container that is {st}")
    cgroup = _open_cgroup(state)
    if cgroup is None or cgroup._freezer_file() is None:
        raise RuntimeFailure("the container's cgroup has no freezer")
    marker = os.path.join(sdir.path, "paused")
    if frozen:
        cgroup._freeze()
        with open(marker, "w"):
            pass
    else:
        cgroup._thaw()
        os.unlink(marker)


def _wait_gone(state: State, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while process_alive(state.pid, state.start_time) and time.monotonic() < deadline:
        try:
            if os.waitpid(state.pid, os.WNOHANG)[0]:
                break
        except ChildProcessError:
            pass
        time.sleep(0.005)


def delete(root: str, container_id: str, force: bool = False, state: State | None = None) -> None:
    """``state``: what ``create`` returned, when ``run`` deletes what it created."""
    sdir = StateDir(root, container_id)
    try:
        state = state if state is not None else sdir.load()
    except IsoboxError:
        if force or os.path.isdir(sdir.path):
            sdir.remove()  # an aborted create leaves a directory without state.json
            if force:
                return
        raise
    st = status(sdir, state)
    if st == "running" and not force:
        raise Conflict(f"cannot delete container {container_id} that is not stopped: {st}",
                       hint="stop it first, or use delete --force")
    cgroup = _open_cgroup(state)
    if st != "stopped":
        if cgroup is not None:
            cgroup.kill_all(signal.SIGKILL)
        try:  # noqa: SIM105
            os.kill(state.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _wait_gone(state)
    if cgroup is not None:
        try:  # noqa: SIM105
            cgroup.destroy()
        except Exception:  # noqa: BLE001 - as before: a cgroup still busy is left behind
            pass
    doc = document(sdir, state) if state.poststop else {}
    sdir.remove()
    try:  # noqa: SIM105
        run_hooks("poststop", state.poststop, doc)
    except RuntimeFailure:
        pass


# --- exec ----------------------------------------------------------------------------------------


def exec_process(root: str, container_id: str, proc_doc: dict[str, Any], *, detach: bool,
                 pid_file: str | None, console_socket: str | None, preserve_fds: int = 0) -> int:
    """Run one more process in the container's namespaces and cgroup; returns its exit code
    (0 at once with ``detach``: the subreaper above adopts it)."""
    from isobox.oci import bundle as oci_bundle  # noqa: PLC0415
    from isobox.runtimes.container import syscalls as sc  # noqa: PLC0415
    from isobox.runtimes.container.process import become, identity_of  # noqa: PLC0415

    sdir = StateDir(root, container_id)
    state = sdir.load()
    if status(sdir, state) != "running":
        raise Conflict("cannot exec in a container that is not running")
    oci_proc = oci_bundle.parse_process(proc_doc)
    proc = oci_proc.proc
    b = oci_bundle.load(state.bundle, container_id)
    proc.seccomp_bpf = _compile_seccomp(b)
    cgroup = _open_cgroup(state)
    cgroup_files = [str(p) for p in cgroup.self_join_files()] if cgroup is not None else []
    console = _connect_console(console_socket, proc.tty)
    _terminal_modules(proc.tty)
    pidfd = os.pidfd_open(state.pid)
    own_pid_ns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    sync, child_sync = os.pipe2(os.O_CLOEXEC)
    if state.namespaces & sc.CLONE_NEWPID:
        sc.setns(pidfd, sc.CLONE_NEWPID)
    child = os.fork()
    if child == 0:
        try:
            os.close(sync)
            _reset_signals()
            sc.set_dumpable(False)
            for path in cgroup_files:
                with open(path, "w") as fh:
                    fh.write("0")
            others = state.namespaces & ~sc.CLONE_NEWPID
            if others:
                sc.setns(pidfd, others)
            os.close(pidfd)
            ident = identity_of(proc)
            env = _exec_env(proc, ident.home)
            _enter_cwd(proc.cwd)
            _set_apparmor(oci_proc.apparmor)
            _setup_stdio(proc.tty, console)
            become(proc, ident)
            _exec_or_die(proc, env, preserve_fds, child_sync)
        except BaseException as exc:  # noqa: BLE001
            try:  # noqa: SIM105
                _send(child_sync, {"exec_error": _describe(exc), "code": 126})
            except OSError:
                pass
        os._exit(126)
    sc.setns(own_pid_ns, sc.CLONE_NEWPID)
    os.close(own_pid_ns)
    os.close(pidfd)
    os.close(child_sync)
    if console is not None:
        console.close()
    msg = _wait_message(sync)
    os.close(sync)
    if msg:
        os.waitpid(child, 0)
        raise RuntimeFailure(str(msg.get("exec_error", "exec failed")))
    if pid_file:
        _write_pid_file(pid_file, child)
    if detach:
        return 0
    return wait_forwarding(child)


FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
             signal.SIGWINCH)


def wait_forwarding(child: int) -> int:
    """Wait for our child, passing on the signals we get (as ``runc run`` does); its exit code."""
    for sig in FORWARDED:
        signal.signal(sig, lambda signum, _frame: os.kill(child, signum))
    while True:
        try:
            _pid, wstatus = os.waitpid(child, 0)
            break
        except InterruptedError:
            continue
    if os.WIFSIGNALED(wstatus):
        return 128 + os.WTERMSIG(wstatus)
    return os.WEXITSTATUS(wstatus)
