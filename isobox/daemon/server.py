"""``isoboxd``: serve the API on a root-only unix socket.

Start-up order, and why:

1. take ``<socket>.lock`` (a POSIX record lock: fork()ed workload monitors do not inherit it,
   so a daemon restarted while workloads run gets it back) -- two CLIs auto-starting a daemon
   at once end up with one daemon;
2. if the socket answers ``/_ping`` another daemon is live: refuse; otherwise remove the stale
   file (a daemon killed with -9 leaves it behind);
3. bind the socket with a umask, so it is never world-accessible even for an instant, then
   0660 root:root; write the pid file;
4. construct the engine and serve; the lifespan binds the loop and runs ``recover()``.

SIGTERM/SIGINT stop uvicorn gracefully (bounded), then ``engine.close()``.  The workloads are
not the daemon's children and keep running.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import logging
import os
import signal
import socket
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from isobox import __version__, paths
from isobox.daemon import EXIT_ALREADY_RUNNING
from isobox.errors import IsoboxError, RuntimeFailure

log = logging.getLogger("isobox.daemon")

SOCKET_MODE = 0o660
GRACEFUL_SHUTDOWN_S = 3  # open `wait`/`logs -f` requests must not hold up a stop for long
LOCK_PATIENCE_S = 5.0  # for a killed predecessor to finish exiting (see _lock)


class AlreadyRunning(IsoboxError):
    pass


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="isoboxd", description="The isobox daemon (REST API on a unix socket).")
    parser.add_argument("--socket", help=f"API socket (default: $ISOBOX_SOCKET or {paths.socket_path()})")
    parser.add_argument("--debug", action="store_true", help="debug logging, access log")
    parser.add_argument("--version", action="version", version=f"isoboxd {__version__}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s isoboxd[%(process)d] %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    sock_path = Path(args.socket) if args.socket else paths.socket_path()
    try:
        with daemon_files(sock_path) as listener:
            serve(listener, sock_path, debug=args.debug)
    except AlreadyRunning as exc:
        log.error("%s", exc.message)
        return EXIT_ALREADY_RUNNING
    except IsoboxError as exc:
        log.error("%s%s", exc.message, f" (hint: {exc.hint})" if exc.hint else "")
        return 1
    except Exception as exc:
        log.exception("isoboxd failed")
        log.error("isoboxd failed: %s: %s", type(exc).__name__, exc)  # the line the CLI shows
        return 1
    return 0


def enter_netns() -> None:
    """``ISOBOX_NETNS=/run/netns/NAME``: run in that network namespace (tests, benchmarks), so
    that bridges, nftables and DNS servers are that namespace's and nothing touches the host's.
    One daemon per network namespace: each owns the namespace's isobox bridges and table."""
    path = os.environ.get("ISOBOX_NETNS")
    if path:
        from isobox.net import hostns

        hostns.enter(path)


def serve(listener: socket.socket, sock_path: Path, debug: bool) -> None:
    enter_netns()  # before the zygote: container inits make their veth peers in this namespace
    # Start the zygote that forks container monitors now (a fresh interpreter: see zygote.py),
    # so that its imports overlap ours of the web stack.
    from isobox.runtimes.container import launch, zygote

    launch.use_zygote(zygote.start().spawn)

    import threading

    import uvicorn

    from isobox.daemon.app import create_app
    from isobox.engine import Engine

    # uvicorn handles SIGTERM/SIGINT while it serves, then restores these handlers and raises
    # the signal again: exit through SystemExit, so daemon_files() still removes its files.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_cleanly)
    engine = Engine()
    # Compiling the default seccomp profile takes ~100 ms; do it before the first `run` asks.
    threading.Thread(target=engine.prewarm, name="prewarm", daemon=True).start()
    config = uvicorn.Config(
        create_app(engine),
        log_config=None,  # our basicConfig handler: one format, stderr
        log_level=logging.DEBUG if debug else logging.INFO,
        access_log=debug,
        lifespan="on",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    log.info("isoboxd %s listening on %s", __version__, sock_path)
    uvicorn.Server(config).run(sockets=[listener])


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


@contextlib.contextmanager
def daemon_files(sock_path: Path) -> Iterator[socket.socket]:
    """The lock, the listening socket and the pid file, removed again on the way out."""
    created = not sock_path.parent.exists()
    sock_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if created:
        os.chmod(sock_path.parent, 0o700)  # mkdir's mode is filtered by the umask
    lock_fd = _lock(sock_path.with_suffix(".lock"), sock_path)
    pid_path = sock_path.with_suffix(".pid")
    try:
        _remove_stale_socket(sock_path)
        listener = _bind(sock_path)
        ino = os.stat(sock_path).st_ino
        try:
            _write_pid(pid_path)
            yield listener
        finally:
            listener.close()
            with contextlib.suppress(FileNotFoundError):
                if os.stat(sock_path).st_ino == ino:
                    os.unlink(sock_path)
            with contextlib.suppress(OSError):
                if pid_path.read_text().strip() == str(os.getpid()):
                    pid_path.unlink()
    finally:
        os.close(lock_fd)


def _lock(path: Path, sock_path: Path) -> int:
    """The daemon's lock.  A held one is waited for a little: a daemon killed with -9 holds it
    until the kernel has finished its exit, which was seen to take over 0.5 s here, and a
    restart right after the kill (a supervisor's, a test's) must not take that for a rival."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + LOCK_PATIENCE_S
    while True:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EAGAIN) and time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            os.close(fd)
            if exc.errno in (errno.EACCES, errno.EAGAIN):
                raise AlreadyRunning(f"another isoboxd is running or starting on {sock_path}") from None
            raise RuntimeFailure(f"cannot lock {path}: {exc.strerror}") from None


def _remove_stale_socket(path: Path) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise RuntimeFailure(f"{path} exists and is not a socket", hint="remove it or choose another --socket")
    if _answers_ping(path):
        raise AlreadyRunning(f"another isoboxd is already serving {path}")
    log.info("removing stale socket %s", path)
    path.unlink()


def _answers_ping(path: Path, timeout: float = 2.0) -> bool:
    """Connecting is not enough: a listening socket inherited by a leftover process accepts
    connections that nobody will ever answer."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: isobox\r\nConnection: close\r\n\r\n")
            return sock.recv(16).startswith(b"HTTP/1.")
    except OSError:
        return False


def _bind(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o117)
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise RuntimeFailure(f"cannot bind {path}: {exc.strerror}") from None
    finally:
        os.umask(old_umask)
    os.chmod(path, SOCKET_MODE)
    if os.geteuid() == 0:
        os.chown(path, 0, 0)
    sock.listen(128)
    return sock


def _write_pid(path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(f"{os.getpid()}\n")
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
