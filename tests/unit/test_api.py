"""The REST API (isobox/daemon) in-process: FastAPI's TestClient over ``create_app(Engine())``.

The engine is the real one on temporary roots.  Most tests here exercise what the API layer
itself decides (body validation, error shapes, the OpenAPI document) and touch the engine
only for lookups; ``test_container_lifecycle`` runs a real container and needs root.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.types import Receive, Scope, Send

from isobox.attach import Decoder, Frame
from isobox.daemon.app import CatchAllMiddleware, create_app
from isobox.runtimes.container import syscalls as sc
from tests.conftest import stop_dns

ERROR_KEYS = {"message", "hint", "kind"}


@pytest.fixture
def roots(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    base = Path(f"/tmp/ibx-api-{secrets.token_hex(4)}")  # short: attach sockets must fit sockaddr_un
    base.mkdir(mode=0o711)
    monkeypatch.setenv("ISOBOX_ROOT", str(base / "root"))
    monkeypatch.setenv("ISOBOX_RUN", str(base / "run"))
    monkeypatch.setenv("ISOBOX_CGROUP_PARENT", f"isobox-test-{base.name}")
    monkeypatch.delenv("ISOBOX_SOCKET", raising=False)
    # An engine owns its network namespace's isobox bridges and nft table, so this one gets a
    # namespace of its own (this thread's; the threads it starts are born in it).
    outer = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    sc.unshare(sc.CLONE_NEWNET)
    try:
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        yield base
    finally:
        stop_dns(base / "run")
        sc.setns(outer, sc.CLONE_NEWNET)
        os.close(outer)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def api(roots: Path) -> Iterator[TestClient]:
    from isobox.engine import Engine

    engine = Engine()
    with TestClient(create_app(engine)) as client:  # runs the lifespan: bind_loop, recover, close
        yield client


def assert_error(resp: Any, status: int, kind: str, contains: str = "") -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == ERROR_KEYS, body
    assert body["kind"] == kind
    assert "\n" not in body["message"] and body["message"], body
    assert contains in body["message"], body
    return body


# -- system ------------------------------------------------------------------------------------------


def test_ping_and_version(api: TestClient) -> None:
    assert api.get("/_ping").text == "OK"
    assert api.head("/_ping").status_code == 200
    version = api.get("/version").json()
    assert version["Version"] and version["ApiVersion"] and version["Os"] == "linux"


def test_system_info_is_the_engines(api: TestClient) -> None:
    info = api.get("/system/info").json()
    assert isinstance(info, dict) and info


# -- request validation: one line, 400, nothing reaches the engine -------------------------------------


def test_garbage_json_is_400(api: TestClient) -> None:
    resp = api.post("/containers", content=b"{not json", headers={"Content-Type": "application/json"})
    assert_error(resp, 400, "InvalidArgument", "invalid JSON body")


def test_empty_body_is_400(api: TestClient) -> None:
    assert_error(api.post("/containers"), 400, "InvalidArgument", "no body")


def test_body_must_be_an_object(api: TestClient) -> None:
    assert_error(api.post("/containers", json=["busybox"]), 400, "InvalidArgument")


def test_missing_spec_is_400(api: TestClient) -> None:
    assert_error(api.post("/containers", json={"start": True}), 400, "InvalidArgument", "missing field 'spec'")


@pytest.mark.parametrize(("body", "field"), [
    ({"spec": {"image": "busybox", "bogus": 1}}, "spec.bogus"),
    ({"spec": {"image": "busybox", "resources": {"memroy": 1 << 30}}}, "spec.resources.memroy"),
    ({"spec": {"image": "busybox", "security": {"seccomp": "default", "caps": []}}}, "spec.security.caps"),
    ({"spec": {"image": "busybox", "mounts": [{"source": "/tmp", "target": "/x", "mode": "ro"}]}}, "spec.mounts.0.mode"),
    ({"spec": {"image": "busybox"}, "detach": True}, "detach"),
])
def test_unknown_fields_are_rejected_at_any_depth(api: TestClient, body: dict[str, Any], field: str) -> None:
    assert_error(api.post("/containers", json=body), 400, "InvalidArgument", f"unknown field {field!r}")


@pytest.mark.parametrize(("spec", "field"), [
    ({"image": "busybox", "command": "ls -l"}, "spec.command"),
    ({"image": "busybox", "resources": {"memory": "512m"}}, "spec.resources.memory"),
    ({"image": "busybox", "tty": "yes"}, "spec.tty"),
    ({"image": "busybox", "isolation": "chroot"}, "spec.isolation"),
    ({"image": 7}, "spec.image"),
])
def test_wrong_types_are_400(api: TestClient, spec: dict[str, Any], field: str) -> None:
    assert_error(api.post("/containers", json={"spec": spec}), 400, "InvalidArgument", f"invalid value for {field!r}")


def test_start_must_be_a_bool(api: TestClient) -> None:
    resp = api.post("/containers", json={"spec": {"image": "busybox"}, "start": "yes"})
    assert_error(resp, 400, "InvalidArgument", "'start'")


def test_spec_rules_apply(api: TestClient) -> None:
    body = assert_error(api.post("/containers", json={"spec": {"image": "busybox", "name": "no spaces"}}),
                        400, "InvalidArgument", "invalid container name")
    assert body["hint"]
    assert_error(api.post("/containers", json={"spec": {"image": "busybox", "resources": {"memory": 1024}}}),
                 400, "InvalidArgument", "minimum memory limit")


def test_cpus_may_be_an_integer(api: TestClient) -> None:
    # JSON has one number type: 2 is a valid float.  (Then the unknown image is the problem.)
    resp = api.post("/containers", json={"spec": {"image": "no-such-image", "resources": {"cpus": 2}}})
    assert_error(resp, 404, "NotFound")


def test_query_parameters_are_validated(api: TestClient) -> None:
    assert_error(api.post("/containers/x/stop?t=soon"), 400, "InvalidArgument", "invalid query parameter 't'")
    assert_error(api.post("/containers/x/stop?t=-1"), 400, "InvalidArgument", "'t'")
    assert_error(api.post("/containers/x/wait?condition=next-exit"), 400, "InvalidArgument", "'condition'")
    assert_error(api.get("/containers?all=maybe"), 400, "InvalidArgument", "'all'")
    assert_error(api.get("/containers/x/logs?tail=lots"), 400, "InvalidArgument", "invalid tail")


def test_exec_body_is_strict(api: TestClient) -> None:
    assert_error(api.post("/containers/x/exec", json={"command": "ls"}), 400, "InvalidArgument", "'command'")
    assert_error(api.post("/containers/x/exec", json={"command": ["ls"], "detach": True}), 400, "InvalidArgument",
                 "unknown field 'detach'")
    assert_error(api.post("/containers/x/exec", json={"command": []}), 400, "InvalidArgument", "needs a command")


def test_build_body_is_strict(api: TestClient) -> None:
    assert_error(api.post("/images/build", json={"kind": 1}), 400, "InvalidArgument", "'kind'")
    assert_error(api.post("/images/build", json={"kind": "busybox", "pull": True}), 400, "InvalidArgument", "'pull'")


# -- errors from the engine and the router keep the same shape ------------------------------------------


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/containers/nope"), ("POST", "/containers/nope/start"), ("POST", "/containers/nope/stop"),
    ("POST", "/containers/nope/kill"), ("DELETE", "/containers/nope"), ("POST", "/containers/nope/wait"),
    ("GET", "/containers/nope/logs"), ("GET", "/containers/nope/stats"), ("DELETE", "/images/nope:latest"),
])
def test_unknown_container_or_image_is_404(api: TestClient, method: str, path: str) -> None:
    assert_error(api.request(method, path), 404, "NotFound", "nope")


def test_exec_in_unknown_container_is_404(api: TestClient) -> None:
    assert_error(api.post("/containers/nope/exec", json={"command": ["ls"]}), 404, "NotFound")


def test_unknown_image_is_404(api: TestClient) -> None:
    assert_error(api.post("/containers", json={"spec": {"image": "no-such-image"}}), 404, "NotFound")


def test_unknown_image_kind_is_400(api: TestClient) -> None:
    assert_error(api.post("/images/build", json={"kind": "windows"}), 400, "InvalidArgument")


def test_routing_errors_have_the_shape(api: TestClient) -> None:
    assert_error(api.get("/no/such/path"), 404, "NotFound", "GET /no/such/path")
    assert_error(api.delete("/_ping"), 405, "InvalidArgument", "DELETE /_ping")


def test_empty_lists(api: TestClient) -> None:
    assert api.get("/containers").json() == []
    assert api.get("/containers?all=true").json() == []
    assert api.get("/images").json() == []


def test_unexpected_exceptions_are_500_in_the_shape(caplog: pytest.LogCaptureFixture) -> None:
    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("disk on fire")

    client = TestClient(CatchAllMiddleware(broken))  # (no `with`: that would run a lifespan)
    body = assert_error(client.get("/anything"), 500, "IsoboxError", "disk on fire")
    assert body["hint"] == "see the isoboxd log"
    assert "disk on fire" in caplog.text and "Traceback" in caplog.text


# -- the OpenAPI document ---------------------------------------------------------------------------


def test_openapi_lists_the_routes_and_the_spec(api: TestClient) -> None:
    doc = api.get("/openapi.json").json()
    paths = doc["paths"]
    expected = {
        "/_ping": {"get", "head"}, "/version": {"get"}, "/system/info": {"get"},
        "/containers": {"get", "post"}, "/containers/{ref}": {"get", "delete"},
        "/containers/{ref}/start": {"post"}, "/containers/{ref}/stop": {"post"}, "/containers/{ref}/kill": {"post"},
        "/containers/{ref}/wait": {"post"}, "/containers/{ref}/logs": {"get"}, "/containers/{ref}/exec": {"post"},
        "/containers/{ref}/stats": {"get"}, "/images": {"get"}, "/images/build": {"post"}, "/images/{ref}": {"delete"},
    }
    for path, methods in expected.items():
        assert methods <= set(paths[path]), (path, set(paths.get(path, {})))
    schemas = doc["components"]["schemas"]
    create_body = paths["/containers"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert create_body == {"$ref": "#/components/schemas/CreateContainerRequest"}
    assert schemas["CreateContainerRequest"]["properties"]["spec"] == {"$ref": "#/components/schemas/WorkloadSpec"}
    spec = schemas["WorkloadSpec"]
    assert {"image", "command", "isolation", "resources", "security", "mounts"} <= set(spec["properties"])
    assert spec["required"] == ["image"] and spec["additionalProperties"] is False
    assert schemas["Resources"]["additionalProperties"] is False
    assert schemas["Isolation"]["enum"] == ["container", "gvisor", "vm"]
    exec_body = paths["/containers/{ref}/exec"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert exec_body == {"$ref": "#/components/schemas/ExecConfig"}
    assert "command" in schemas["ExecConfig"]["required"]
    assert {p["name"] for p in paths["/containers/{ref}/stop"]["post"]["parameters"]} == {"ref", "t"}


# -- a real container through the API (root) -------------------------------------------------------------


def frames(data: bytes) -> list[tuple[Frame, bytes]]:
    return list(Decoder().feed(data))


@pytest.mark.root
def test_container_lifecycle(api: TestClient, roots: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("runs a container: needs root")
    try:
        built = api.post("/images/build", json={"kind": "busybox", "tag": None})
        assert built.status_code == 201, built.text
        spec = {"image": "busybox", "command": ["sh", "-c", "echo out; echo err >&2; exit 3"], "name": "api-test"}
        created = api.post("/containers", json={"spec": spec, "start": False})
        assert created.status_code == 201, created.text
        cid = created.json()["Id"]
        assert created.json()["Name"] == "api-test" and created.json()["AttachSocket"] is None
        assert_error(api.post("/containers", json={"spec": spec}), 409, "Conflict")
        assert [c["Id"] for c in api.get("/containers?all=true").json()] == [cid]

        started = api.post("/containers/api-test/start")
        assert started.status_code == 200, started.text
        assert api.post(f"/containers/{cid}/wait").json()["StatusCode"] == 3
        assert api.get("/containers/api-test").json()["State"]["ExitCode"] == 3
        logs = frames(api.get("/containers/api-test/logs").content)
        assert (Frame.STDOUT, b"out\n") in logs and (Frame.STDERR, b"err\n") in logs

        assert api.delete("/containers/api-test").status_code == 204
        assert_error(api.get(f"/containers/{cid}"), 404, "NotFound")
        removed = api.delete("/images/busybox:latest").json()
        assert removed == [{"Untagged": "busybox:latest"}, {"Deleted": built.json()["Id"]}]
    finally:
        from tests.conftest import _remove_cgroup_parent

        for c in api.get("/containers?all=true").json():
            api.delete(f"/containers/{c['Id']}?force=true")
        _remove_cgroup_parent(os.environ["ISOBOX_CGROUP_PARENT"])


# -- isoboxd: its socket, pid file and lock --------------------------------------------------------------


def test_daemon_files_modes_and_cleanup(roots: Path) -> None:
    from isobox.daemon.server import daemon_files

    sock = roots / "d" / "api.sock"
    with daemon_files(sock) as listener:
        assert stat.S_IMODE(sock.stat().st_mode) == 0o660 and stat.S_ISSOCK(sock.stat().st_mode)
        assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
        assert (roots / "d" / "api.pid").read_text() == f"{os.getpid()}\n"
        assert listener.fileno() >= 0
    assert not sock.exists() and not (roots / "d" / "api.pid").exists()


def test_stale_socket_is_replaced(roots: Path) -> None:
    from isobox.daemon.server import daemon_files

    sock = roots / "api.sock"
    leftover = socket.socket(socket.AF_UNIX)
    leftover.bind(str(sock))  # a daemon killed with -9 leaves its socket file behind
    leftover.close()
    with daemon_files(sock):
        assert sock.exists()


def test_refuses_when_a_daemon_answers(roots: Path) -> None:
    from isobox.daemon.server import AlreadyRunning, daemon_files

    sock = roots / "api.sock"
    live = socket.socket(socket.AF_UNIX)
    live.bind(str(sock))
    live.listen(1)

    def answer() -> None:
        conn, _ = live.accept()
        conn.recv(1024)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK")
        conn.close()

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    with pytest.raises(AlreadyRunning, match="already serving"), daemon_files(sock):
        pass
    thread.join(5)
    live.close()
    assert sock.exists()  # not ours to remove


def _lock_holder(sock: Path, seconds: float) -> subprocess.Popen[bytes]:
    """Another process holding the daemon's lock for ``seconds``, once it has printed 'locked'."""
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(sock.with_suffix('.lock'))!r}, os.O_RDWR | os.O_CREAT)\n"
        f"fcntl.lockf(fd, fcntl.LOCK_EX)\nprint('locked', flush=True)\ntime.sleep({seconds})\n")],
        stdout=subprocess.PIPE)
    assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
    return holder


def test_refuses_while_another_holds_the_lock(roots: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from isobox.daemon import server
    from isobox.daemon.server import AlreadyRunning, daemon_files

    monkeypatch.setattr(server, "LOCK_PATIENCE_S", 0.3)
    sock = roots / "api.sock"
    holder = _lock_holder(sock, 30)
    try:
        started = time.monotonic()
        with pytest.raises(AlreadyRunning, match="running or starting"), daemon_files(sock):
            pass
        assert time.monotonic() - started >= 0.3
        assert not sock.exists()
    finally:
        holder.kill()
        holder.wait()


def test_waits_for_a_dying_predecessor_to_release_the_lock(roots: Path) -> None:
    """A daemon killed -9 holds its lock until its exit is done; a restart right after waits."""
    from isobox.daemon.server import daemon_files

    sock = roots / "api.sock"
    holder = _lock_holder(sock, 0.5)
    try:
        with daemon_files(sock) as listener:
            assert holder.poll() is not None  # it got the lock only once the holder was gone
            assert listener.getsockname() == str(sock)
    finally:
        holder.kill()
        holder.wait()


def test_isoboxd_serves_and_stops_cleanly_on_sigterm(roots: Path) -> None:
    from isobox.cli.client import Client, ping
    from isobox.daemon import EXIT_ALREADY_RUNNING

    if os.geteuid() != 0:
        pytest.skip("the engine needs root")
    sock = roots / "run" / "isobox.sock"
    log = roots / "isoboxd.log"
    with open(log, "wb") as out:
        daemon = subprocess.Popen([sys.executable, "-m", "isobox.daemon.server", "--socket", str(sock)],
                                  stdout=out, stderr=out, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not ping(str(sock)):
            assert daemon.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        assert Client(sock, autostart=False).call("GET", "/containers") == []
        second = subprocess.run([sys.executable, "-m", "isobox.daemon.server", "--socket", str(sock)],
                                capture_output=True, text=True, timeout=30)
        assert second.returncode == EXIT_ALREADY_RUNNING
        assert "another isoboxd is running or starting" in second.stderr
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(15) == 0, log.read_text()
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    assert not sock.exists() and not sock.with_suffix(".pid").exists()
