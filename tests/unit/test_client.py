"""The CLI's client side against real servers started here, on temporary unix sockets.

``FakeDaemon`` is the stdlib's http.server on AF_UNIX answering canned API responses (the
real daemon is tested in test_api.py); ``FakeMonitor`` is the other end of an attach socket,
speaking isobox/attach.py's framing.  The CLI runs in-process (``main()``) or, where stdin
and signals matter, as a real subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from isobox.attach import Decoder, Frame, encode, encode_json
from isobox.cli.client import Client, DaemonUnreachable, path_for, start_daemon
from isobox.cli.main import main
from isobox.errors import Conflict, InvalidArgument, IsoboxError, NotFound

Handler = Callable[["Request"], tuple[int, Any]]


class Request:
    def __init__(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> None:
        self.method, self.path, self.body, self.headers = method, path, body, headers

    def json(self) -> Any:
        return json.loads(self.body)


class Chunked:
    """A response body sent with Transfer-Encoding: chunked, one chunk per item."""

    def __init__(self, chunks: list[bytes], content_type: str = "application/vnd.docker.multiplexed-stream") -> None:
        self.chunks, self.content_type = chunks, content_type


class FakeDaemon:
    def __init__(self, path: str) -> None:
        self.path = path
        self.routes: dict[tuple[str, str], Handler] = {("GET", "/_ping"): lambda r: (200, b"OK")}
        self.requests: list[Request] = []
        self.connections = 0
        daemon = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                daemon.connections += 1
                super().setup()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # (and client_address is '' on a unix socket, which the default trips over)

            def handle_any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                req = Request(self.command, self.path, self.rfile.read(length), dict(self.headers))
                daemon.requests.append(req)
                route = daemon.routes.get((self.command, self.path.split("?")[0]))
                status, body = route(req) if route else (404, {"message": "page not found", "kind": "NotFound"})
                if isinstance(body, Chunked):
                    self.send_response(status)
                    self.send_header("Content-Type", body.content_type)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for chunk in body.chunks:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                    return
                data = body if isinstance(body, bytes) else b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                if status != 204:
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if status != 204:
                    self.wfile.write(data)

            do_GET = do_POST = do_DELETE = handle_any

        self.server = socketserver.ThreadingUnixStreamServer(path, H)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def route(self, method: str, path: str, handler: Handler) -> None:
        self.routes[(method, path)] = handler

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class FakeMonitor:
    """One attach connection: ``script(conn, decoder_frames)`` plays the monitor's part."""

    def __init__(self, path: str, script: Callable[[socket.socket], None]) -> None:
        self.path = path
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(1)
        self.connected = threading.Event()
        self.error: BaseException | None = None

        def serve() -> None:
            try:
                conn, _ = self.listener.accept()
                self.connected.set()
                with conn:
                    script(conn)
            except BaseException as exc:  # surfaced by the test
                self.error = exc

        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.thread.join(10)
        self.listener.close()
        if self.error:
            raise self.error


def read_frames(conn: socket.socket, until: Frame) -> list[tuple[Frame, bytes]]:
    decoder = Decoder()
    got: list[tuple[Frame, bytes]] = []
    while True:
        data = conn.recv(65536)
        if not data:
            return got
        for frame in decoder.feed(data):
            got.append(frame)
            if frame[0] == until:
                return got


@pytest.fixture
def tmp() -> Iterator[Path]:
    # Short: a sockaddr_un path holds 108 bytes, pytest's tmp_path can be longer.
    path = Path(tempfile.mkdtemp(prefix="ibx-cli-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def daemon(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeDaemon]:
    sock = str(tmp / "api.sock")
    monkeypatch.setenv("ISOBOX_SOCKET", sock)
    monkeypatch.setenv("ISOBOX_ROOT", str(tmp / "root"))
    monkeypatch.setenv("ISOBOX_RUN", str(tmp / "run"))
    d = FakeDaemon(sock)
    yield d
    d.close()


# -- the HTTP client ----------------------------------------------------------------------------------


def test_json_request_and_keep_alive(daemon: FakeDaemon) -> None:
    daemon.route("GET", "/containers", lambda r: (200, [{"Id": "abc"}]))
    client = Client(autostart=False)
    assert client.call("GET", "/containers") == [{"Id": "abc"}]
    assert client.call("GET", "/containers") == [{"Id": "abc"}]
    assert daemon.connections == 1  # one connection, two requests
    client.close()


def test_post_sends_json_and_204_has_no_body(daemon: FakeDaemon) -> None:
    daemon.route("POST", "/containers/web/stop", lambda r: (204, None))
    daemon.route("POST", "/echo", lambda r: (201, {"got": r.json(), "type": r.headers.get("Content-Type")}))
    client = Client(autostart=False)
    assert client.call("POST", path_for("containers", "web", "stop", query={"t": 3})) is None
    assert daemon.requests[-1].path == "/containers/web/stop?t=3"
    assert client.call("POST", "/echo", {"spec": {"image": "busybox"}}) == {
        "got": {"spec": {"image": "busybox"}}, "type": "application/json"}
    client.close()


def test_chunked_json(daemon: FakeDaemon) -> None:
    daemon.route("GET", "/info", lambda r: (200, Chunked([b'{"a": ', b"1}"], "application/json")))
    assert Client(autostart=False).call("GET", "/info") == {"a": 1}


def test_path_for_escapes_and_drops_none() -> None:
    assert path_for("containers", "a b/c", "logs", query={"follow": True, "tail": None, "timestamps": False}) == \
        "/containers/a%20b%2Fc/logs?follow=true&timestamps=false"


@pytest.mark.parametrize(("status", "kind", "cls"), [
    (400, "InvalidArgument", InvalidArgument), (404, "NotFound", NotFound), (409, "Conflict", Conflict),
    (404, None, NotFound), (500, "RuntimeFailure", IsoboxError),
])
def test_error_answers_become_isobox_errors(daemon: FakeDaemon, status: int, kind: str | None,
                                            cls: type[IsoboxError]) -> None:
    daemon.route("GET", "/x", lambda r: (status, {"message": "it broke", "hint": "fix it", "kind": kind}))
    with pytest.raises(cls) as exc:
        Client(autostart=False).call("GET", "/x")
    assert (exc.value.message, exc.value.hint) == ("it broke", "fix it")


def test_non_json_error_answer(daemon: FakeDaemon) -> None:
    daemon.route("GET", "/x", lambda r: (502, b"bad gateway\nmore"))
    with pytest.raises(IsoboxError, match="answered 502: bad gateway$"):
        Client(autostart=False).call("GET", "/x")


def test_frames_decode_across_chunk_boundaries(daemon: FakeDaemon) -> None:
    stream = encode(Frame.STDOUT, b"hello\n") + encode(Frame.STDERR, b"oops\n") + encode(Frame.STDOUT, b"bye\n")
    daemon.route("GET", "/containers/web/logs", lambda r: (200, Chunked([stream[:3], stream[3:13], stream[13:]])))
    got = list(Client(autostart=False).frames("GET", "/containers/web/logs"))
    assert got == [(Frame.STDOUT, b"hello\n"), (Frame.STDERR, b"oops\n"), (Frame.STDOUT, b"bye\n")]


# -- errors as the user sees them ----------------------------------------------------------------------


def test_error_is_printed_and_exits_125(daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.route("GET", "/containers/nope", lambda r: (404, {
        "message": "no such container: nope", "hint": "isobox ps -a lists them", "kind": "NotFound"}))
    assert main(["inspect", "nope"]) == 125
    captured = capsys.readouterr()
    assert captured.out == "[]\n"
    assert captured.err == "Error: no such container: nope\nhint: isobox ps -a lists them\n"


def test_error_without_hint_is_one_line(daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.route("POST", "/containers/web/stop", lambda r: (409, {"message": "web is not running", "kind": "Conflict"}))
    assert main(["stop", "web"]) == 125
    assert capsys.readouterr().err == "Error: web is not running\n"


def test_multi_container_verbs_go_on_past_failures(daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.route("DELETE", "/containers/a", lambda r: (204, None))
    daemon.route("DELETE", "/containers/c", lambda r: (204, None))
    assert main(["rm", "-f", "a", "b", "c"]) == 125
    captured = capsys.readouterr()
    assert captured.out == "a\nc\n"
    assert captured.err.startswith("Error: page not found")
    assert [r.path for r in daemon.requests] == ["/containers/a?force=true", "/containers/b?force=true",
                                                 "/containers/c?force=true"]


def test_no_daemon_without_autostart(tmp: Path) -> None:
    with pytest.raises(DaemonUnreachable, match="cannot connect to the isobox daemon"):
        Client(tmp / "none.sock", autostart=False).call("GET", "/_ping")


# -- auto-start ---------------------------------------------------------------------------------------


def test_autostart_failure_shows_the_logs_last_line(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ISOBOX_ROOT", str(tmp / "root"))
    cmd = [sys.executable, "-c", "import sys; print('starting'); print('engine: cannot open /dev/kvm', file=sys.stderr); sys.exit(1)"]
    client = Client(tmp / "api.sock", daemon_cmd=cmd, start_timeout=10)
    with pytest.raises(DaemonUnreachable) as exc:
        client.call("GET", "/containers")
    assert exc.value.message == "the isobox daemon failed to start (exit status 1)"
    assert exc.value.hint == "engine: cannot open /dev/kvm"
    assert (tmp / "root" / "isoboxd.log").read_text().splitlines() == ["starting", "engine: cannot open /dev/kvm"]


FAKE_DAEMON_SCRIPT = """
import os, socketserver, sys
from http.server import BaseHTTPRequestHandler
sock, pidfile = sys.argv[1], sys.argv[2]
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        body = b"OK" if self.path == "/_ping" else b'{"started": true}'
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
open(pidfile, "w").write(str(os.getpid()))
socketserver.UnixStreamServer(sock, H).serve_forever()
"""


def test_autostart_spawns_a_detached_daemon(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ISOBOX_ROOT", str(tmp / "root"))
    sock, pidfile = tmp / "api.sock", tmp / "daemon.pid"
    client = Client(sock, daemon_cmd=[sys.executable, "-c", FAKE_DAEMON_SCRIPT, str(sock), str(pidfile)])
    try:
        assert client.call("GET", "/containers") == {"started": True}
        pid = int(pidfile.read_text())
        assert os.getsid(pid) == pid  # its own session: a Ctrl-C in our terminal does not reach it
    finally:
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), signal.SIGTERM)


def test_start_daemon_times_out(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ISOBOX_ROOT", str(tmp / "root"))
    pidfile = tmp / "sleeper.pid"
    cmd = [sys.executable, "-c", f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); "
                                 "print('still recovering', flush=True); time.sleep(30)"]
    try:
        with pytest.raises(DaemonUnreachable, match="did not answer within 1 s") as exc:
            start_daemon(str(tmp / "api.sock"), cmd, timeout=1.0)
        assert exc.value.hint == "still recovering"
    finally:
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), signal.SIGKILL)


# -- listing and streaming verbs ------------------------------------------------------------------------

def containers() -> list[dict[str, Any]]:
    return [
        {"Id": "a" * 64, "Names": ["web"], "Image": "busybox", "Command": "sh -c 'while true; do sleep 1; done'",
         "Created": time.time() - 300, "State": "running", "Status": "Up 5 minutes", "ExitCode": None,
         "Isolation": "container"},
        {"Id": "b" * 64, "Names": ["job"], "Image": "busybox", "Command": "true", "Created": time.time() - 30,
         "State": "exited", "Status": "Exited (0) 20 seconds ago", "ExitCode": 0, "Isolation": "vm"},
    ]


def test_ps_table(daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.route("GET", "/containers", lambda r: (200, containers()))
    assert main(["ps", "-a"]) == 0
    assert daemon.requests[-1].path == "/containers?all=true"
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["CONTAINER", "ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "ISOLATION", "NAMES"]
    assert lines[1].split()[:2] == ["b" * 12, "busybox"]  # newest first
    assert "30 seconds ago" in lines[1] and "Exited (0) 20 seconds ago" in lines[1] and lines[1].endswith("job")
    assert '"sh -c \'while true; …"' in lines[2] and "5 minutes ago" in lines[2] and " container " in lines[2]
    assert lines[0].index("IMAGE") == lines[1].index("busybox") == lines[2].index("busybox")  # aligned


def test_ps_quiet_json_and_template(daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.route("GET", "/containers", lambda r: (200, containers()))
    assert main(["ps", "-q"]) == 0
    assert capsys.readouterr().out == f"{'b' * 12}\n{'a' * 12}\n"
    assert main(["ps", "--format", "json"]) == 0
    assert [c["Names"] for c in json.loads(capsys.readouterr().out)] == [["job"], ["web"]]
    assert main(["ps", "--format", "{{.Names}} {{.Isolation}} {{.State}}"]) == 0
    assert capsys.readouterr().out == "job vm exited\nweb container running\n"


def test_inspect_template(daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.route("GET", "/containers/web", lambda r: (200, {"State": {"Status": "running", "OOMKilled": False},
                                                            "HostConfig": {"CapAdd": ["NET_ADMIN"]}}))
    assert main(["inspect", "-f", "{{.State.Status}} {{.State.OOMKilled}} {{json .HostConfig.CapAdd}}", "web"]) == 0
    assert capsys.readouterr().out == 'running false ["NET_ADMIN"]\n'


def test_logs_write_stdout_and_stderr(daemon: FakeDaemon, capfd: pytest.CaptureFixture[str]) -> None:
    stream = encode(Frame.STDOUT, b"line 1\n") + encode(Frame.STDERR, b"warn\n") + encode(Frame.STDOUT, b"line 2\n")
    daemon.route("GET", "/containers/web/logs", lambda r: (200, Chunked([stream[:10], stream[10:]])))
    assert main(["logs", "--tail", "2", "-t", "web"]) == 0
    assert daemon.requests[-1].path == "/containers/web/logs?tail=2&timestamps=true"
    captured = capfd.readouterr()
    assert (captured.out, captured.err) == ("line 1\nline 2\n", "warn\n")


def test_logs_error_frame(daemon: FakeDaemon, capfd: pytest.CaptureFixture[str]) -> None:
    daemon.route("GET", "/containers/web/logs",
                 lambda r: (200, Chunked([encode(Frame.STDOUT, b"a\n"), encode(Frame.ERROR, b"log file vanished")])))
    assert main(["logs", "web"]) == 125
    assert capfd.readouterr().err == "Error: log file vanished\n"


def test_wait_prints_exit_codes(daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.route("POST", "/containers/a/wait", lambda r: (200, {"StatusCode": 0}))
    daemon.route("POST", "/containers/b/wait", lambda r: (200, {"StatusCode": 137, "OOMKilled": True}))
    assert main(["wait", "a", "b"]) == 0
    assert capsys.readouterr().out == "0\n137\n"


def test_stats_no_stream(daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.route("GET", "/containers", lambda r: (200, containers()[:1]))
    daemon.route("GET", f"/containers/{'a' * 64}/stats", lambda r: (200, {
        "Id": "a" * 64, "Name": "web", "cpu_percent": 12.5, "memory_usage": 64 << 20, "memory_limit": 256 << 20,
        "pids_current": 3}))
    assert main(["stats", "--no-stream"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["CONTAINER", "ID", "NAME", "CPU"]
    assert lines[1].split() == ["a" * 12, "web", "12.50%", "64MiB", "/", "256MiB", "25.00%", "3"]


def test_images_table(daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.route("GET", "/images", lambda r: (200, [
        {"Id": "sha256:" + "c" * 64, "RepoTags": ["busybox:latest", "localhost:5000/bb:1"], "Size": 2 << 20,
         "Created": time.time() - 7200}]))
    assert main(["images"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["busybox", "latest", "c" * 12, "2", "hours", "ago", "2MiB"]
    assert lines[2].split()[:2] == ["localhost:5000/bb", "1"]


# -- attached sessions: run, start -a, exec ------------------------------------------------------------


def created(sock: Path) -> Handler:
    return lambda r: (201, {"Id": "f" * 64, "Name": "web", "AttachSocket": str(sock), "Warnings": []})


def test_run_streams_output_and_exits_with_the_workloads_code(
        daemon: FakeDaemon, tmp: Path, capfd: pytest.CaptureFixture[str]) -> None:
    def script(conn: socket.socket) -> None:
        conn.sendall(encode(Frame.STDOUT, b"hello\n") + encode(Frame.STDERR, b"oops\n"))
        conn.sendall(encode_json(Frame.EXIT, {"exit_code": 3, "oom_killed": False, "error": None}))

    monitor = FakeMonitor(str(tmp / "attach.sock"), script)
    daemon.route("POST", "/containers", created(tmp / "attach.sock"))
    daemon.route("POST", f"/containers/{'f' * 64}/wait", lambda r: (200, {"StatusCode": 3}))
    assert main(["run", "--rm", "busybox", "sh", "-c", "echo hello"]) == 3
    monitor.close()
    captured = capfd.readouterr()
    assert (captured.out, captured.err) == ("hello\n", "oops\n")
    body = next(r for r in daemon.requests if r.path == "/containers").json()
    assert body["start"] is True and body["attach"] is True
    assert body["spec"]["command"] == ["sh", "-c", "echo hello"] and body["spec"]["auto_remove"] is True
    assert daemon.requests[-1].path == f"/containers/{'f' * 64}/wait?condition=removed"


def test_run_detached_prints_the_id(daemon: FakeDaemon, tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.route("POST", "/containers", lambda r: (201, {"Id": "f" * 64, "Name": "web", "AttachSocket": None,
                                                         "Warnings": ["memory limit is low"]}))
    assert main(["run", "-d", "busybox", "sleep", "9"]) == 0
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("f" * 64 + "\n", "WARNING: memory limit is low\n")
    assert daemon.requests[-1].json()["attach"] is False


def test_run_exec_failure_prints_the_error(daemon: FakeDaemon, tmp: Path, capfd: pytest.CaptureFixture[str]) -> None:
    error = 'exec: "nosuch": executable file not found in $PATH'
    monitor = FakeMonitor(str(tmp / "attach.sock"), lambda conn: conn.sendall(
        encode_json(Frame.EXIT, {"exit_code": 127, "oom_killed": False, "error": error})))
    daemon.route("POST", "/containers", created(tmp / "attach.sock"))
    assert main(["run", "busybox", "nosuch"]) == 127
    monitor.close()
    assert capfd.readouterr().err == f"Error: {error}\n"


def test_run_asks_the_daemon_when_the_monitor_vanishes(daemon: FakeDaemon, tmp: Path) -> None:
    monitor = FakeMonitor(str(tmp / "attach.sock"), lambda conn: conn.sendall(encode(Frame.STDOUT, b"partial")))
    daemon.route("POST", "/containers", created(tmp / "attach.sock"))
    daemon.route("POST", f"/containers/{'f' * 64}/wait", lambda r: (200, {"StatusCode": 42}))
    assert main(["run", "busybox", "true"]) == 42
    monitor.close()


def test_start_attach_uses_the_containers_tty_setting(daemon: FakeDaemon, tmp: Path) -> None:
    monitor = FakeMonitor(str(tmp / "attach.sock"), lambda conn: conn.sendall(
        encode_json(Frame.EXIT, {"exit_code": 5, "oom_killed": False, "error": None})))
    daemon.route("GET", "/containers/web", lambda r: (200, {"Config": {"Tty": False}, "HostConfig": {}}))
    daemon.route("POST", "/containers/web/start", created(tmp / "attach.sock"))
    assert main(["start", "-a", "web"]) == 5
    assert daemon.requests[-1].path == "/containers/web/start?attach=true"
    monitor.close()


def test_exec_sends_the_exec_spec(daemon: FakeDaemon, tmp: Path, capfd: pytest.CaptureFixture[str]) -> None:
    monitor = FakeMonitor(str(tmp / "exec.sock"), lambda conn: conn.sendall(
        encode(Frame.STDOUT, b"in\n") + encode_json(Frame.EXIT, {"exit_code": 4, "oom_killed": False, "error": None})))
    daemon.route("POST", "/containers/web/exec", lambda r: (201, {"Id": "e1", "AttachSocket": str(tmp / "exec.sock")}))
    assert main(["exec", "-e", "A=1", "-w", "/tmp", "-u", "nobody", "web", "sh", "-c", "exit 4"]) == 4
    monitor.close()
    assert daemon.requests[-1].json() == {"command": ["sh", "-c", "exit 4"], "env": {"A": "1"}, "workdir": "/tmp",
                                          "user": "nobody", "tty": False, "interactive": False, "privileged": False}
    assert capfd.readouterr().out == "in\n"


def cli(tmp: Path, *args: str, **kw: Any) -> subprocess.Popen[bytes]:
    env = {**os.environ, "ISOBOX_SOCKET": str(tmp / "api.sock"), "ISOBOX_ROOT": str(tmp / "root")}
    return subprocess.Popen([sys.executable, "-m", "isobox.cli.main", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def test_interactive_stdin_becomes_frames(daemon: FakeDaemon, tmp: Path) -> None:
    received: list[tuple[Frame, bytes]] = []

    def echo(conn: socket.socket) -> None:
        frames = read_frames(conn, until=Frame.STDIN_EOF)
        received.extend(frames)
        data = b"".join(p for k, p in frames if k == Frame.STDIN)
        conn.sendall(encode(Frame.STDOUT, data.upper()) + encode_json(Frame.EXIT, {"exit_code": 0}))

    monitor = FakeMonitor(str(tmp / "attach.sock"), echo)
    daemon.route("POST", "/containers", created(tmp / "attach.sock"))
    proc = cli(tmp, "run", "-i", "busybox", "cat", stdin=subprocess.PIPE)
    out, err = proc.communicate(b"shout " * 50000, timeout=30)  # more than a socket buffer
    monitor.close()
    assert (proc.returncode, err) == (0, b"")
    assert out == b"SHOUT " * 50000
    assert received[-1] == (Frame.STDIN_EOF, b"")
    assert daemon.requests[-1].json()["spec"]["interactive"] is True


def test_signals_are_forwarded(daemon: FakeDaemon, tmp: Path) -> None:
    def wait_for_signal(conn: socket.socket) -> None:
        frames = read_frames(conn, until=Frame.SIGNAL)
        signum = int(frames[-1][1])
        conn.sendall(encode_json(Frame.EXIT, {"exit_code": 128 + signum}))

    monitor = FakeMonitor(str(tmp / "attach.sock"), wait_for_signal)
    daemon.route("POST", "/containers", created(tmp / "attach.sock"))
    proc = cli(tmp, "run", "busybox", "sleep", "60", stdin=subprocess.DEVNULL)
    assert monitor.connected.wait(20)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=20)
    monitor.close()
    assert proc.returncode == 128 + signal.SIGTERM


def test_it_without_a_terminal_is_refused(daemon: FakeDaemon, tmp: Path) -> None:
    proc = cli(tmp, "run", "-it", "busybox", "sh", stdin=subprocess.DEVNULL)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 125
    assert err.decode().startswith("Error: the input device is not a TTY")
    assert not [r for r in daemon.requests if r.path == "/containers"]  # nothing was created


def test_rmi_prints_dockers_lines(daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.route("DELETE", "/images/busybox%3Alatest",
                 lambda r: (200, [{"Untagged": "busybox:latest"}, {"Deleted": "sha256:" + "c" * 64}]))
    assert main(["rmi", "busybox:latest"]) == 0
    assert capsys.readouterr().out == f"Untagged: busybox:latest\nDeleted: sha256:{'c' * 64}\n"
