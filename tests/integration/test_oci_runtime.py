"""isobox-runtime on generated OCI bundles: each config.json part, the lifecycle, runc side by side,
fd hygiene, the console socket, and Podman driving it as its --runtime."""

from __future__ import annotations

import copy
import difflib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require

VENV_BIN = Path(sys.executable).parent
RUNTIME = str(VENV_BIN / "isobox-runtime")
BUSYBOX = "/bin/busybox"
CGROUP_PARENT = "isobox-oci-test"

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]
require(BUSYBOX, "runc", "podman")

CAPS = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
BASE_CONFIG: dict[str, Any] = {
    "ociVersion": "1.0.2",
    "process": {
        "terminal": False, "user": {"uid": 0, "gid": 0}, "args": ["true"],
        "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "cwd": "/",
        "capabilities": {k: CAPS for k in ("bounding", "effective", "permitted", "ambient")},
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}], "noNewPrivileges": True,
    },
    "root": {"path": "rootfs", "readonly": True},
    "hostname": "oci",
    "mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
    ],
    "linux": {
        "resources": {"devices": [{"allow": False, "access": "rwm"}]},
        "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
        "maskedPaths": ["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
        "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
    },
}


class Bundles:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.root = base / "state"
        self.runc_root = base / "runc-state"

    def make(self, cmd: str | list[str], **changes: Any) -> tuple[Path, str]:
        """A bundle running ``sh -c cmd``; ``changes`` are dotted paths into config.json."""
        cid = "t" + secrets.token_hex(4)
        path = self.base / cid
        path.mkdir()
        cfg = copy.deepcopy(BASE_CONFIG)
        cfg["root"]["path"] = str(self.base / "rootfs")
        cfg["process"]["args"] = ["sh", "-c", cmd] if isinstance(cmd, str) else cmd
        cfg["linux"]["cgroupsPath"] = f"/{CGROUP_PARENT}/{cid}"
        for dotted, value in changes.items():
            node = cfg
            keys = dotted.split("__")
            for key in keys[:-1]:
                node = node.setdefault(key, {})
            if value is None:
                node.pop(keys[-1], None)
            else:
                node[keys[-1]] = value
        (path / "config.json").write_text(json.dumps(cfg))
        return path, cid

    def runtime(self, *args: str, timeout: float = 30, **kw: Any) -> subprocess.CompletedProcess[str]:
        """Output goes through files: a created container inherits the runtime's stdio (as with
        runc), so pipes would stay open until it exits."""
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = subprocess.run([RUNTIME, "--root", str(self.root), *args], stdout=out, stderr=err,
                                  timeout=timeout, **kw)
            out.seek(0)
            err.seek(0)
            return subprocess.CompletedProcess(proc.args, proc.returncode, out.read().decode(), err.read().decode())

    def run(self, bundle: Path, cid: str, runtime: str = RUNTIME) -> subprocess.CompletedProcess[str]:
        root = self.root if runtime == RUNTIME else self.runc_root
        return subprocess.run([runtime, "--root", str(root), "run", "--bundle", str(bundle), cid + runtime[-1]],
                              capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bundles]:
    base = Path(f"/tmp/ibx-oci-{secrets.token_hex(3)}")
    base.mkdir()
    rootfs = base / "rootfs"
    for d in ("bin", "etc", "proc", "sys", "dev", "tmp", "data"):
        (rootfs / d).mkdir(parents=True)
    shutil.copy2(BUSYBOX, rootfs / "bin/busybox")
    for applet in subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout.split():
        if applet != "busybox":
            (rootfs / "bin" / applet).symlink_to("busybox")
    (rootfs / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:u:/home/user:/bin/sh\n")
    (rootfs / "etc/group").write_text("root:x:0:\nuser:x:1000:\n")
    box = Bundles(base)
    try:
        yield box
    finally:
        for root, exe in ((box.root, RUNTIME), (box.runc_root, "runc")):
            if root.is_dir() and shutil.which(exe):
                for cid in os.listdir(root):
                    subprocess.run([exe, "--root", str(root), "delete", "--force", cid], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
        for hierarchy in Path("/sys/fs/cgroup").iterdir():
            parent = hierarchy / CGROUP_PARENT
            if parent.is_dir():
                for child in parent.iterdir():
                    if child.is_dir():
                        child.rmdir()
                parent.rmdir()


def _run(bundles: Bundles, cmd: str, **changes: Any) -> subprocess.CompletedProcess[str]:
    path, cid = bundles.make(cmd, **changes)
    return bundles.run(path, cid)


# --- lifecycle -----------------------------------------------------------------------------------


def test_run_passes_exit_code_and_output(bundles: Bundles) -> None:
    proc = _run(bundles, "echo out; echo err >&2; exit 3")
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "out\n", "err\n")
    assert not list(bundles.root.iterdir()), "run leaves no state behind"


def test_create_start_state_kill_delete(bundles: Bundles) -> None:
    path, cid = bundles.make("echo started > /dev/shm/x; exec sleep 100", annotations={"org.example/a": "b"})
    pid_file = bundles.base / f"{cid}.pid"
    created = bundles.runtime("create", "--bundle", str(path), "--pid-file", str(pid_file), cid,
                              stdin=subprocess.DEVNULL)
    assert created.returncode == 0, created.stderr
    state = json.loads(bundles.runtime("state", cid).stdout)
    pid = int(pid_file.read_text())
    assert state == {**state, "ociVersion": "1.0.2", "id": cid, "status": "created", "pid": pid,
                     "bundle": str(path), "annotations": {"org.example/a": "b"}}
    # Blocked before exec: still our runtime's code, not the workload.
    assert b"isobox-runtime" in Path(f"/proc/{pid}/cmdline").read_bytes()
    assert bundles.runtime("start", cid).returncode == 0
    deadline = time.monotonic() + 5
    while b"sleep" not in Path(f"/proc/{pid}/cmdline").read_bytes() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert json.loads(bundles.runtime("state", cid).stdout)["status"] == "running"
    assert bundles.runtime("start", cid).returncode == 1, "a running container cannot start again"
    refused = bundles.runtime("delete", cid)
    assert refused.returncode == 1 and "not stopped" in refused.stderr
    listed = json.loads(bundles.runtime("list", "--format", "json").stdout)
    assert [d["id"] for d in listed] == [cid]
    assert bundles.runtime("kill", cid, "KILL").returncode == 0
    deadline = time.monotonic() + 5
    while json.loads(bundles.runtime("state", cid).stdout)["status"] != "stopped":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert bundles.runtime("kill", cid, "TERM").returncode == 1, "nothing to signal"
    assert bundles.runtime("delete", cid).returncode == 0
    gone = bundles.runtime("state", cid)
    assert gone.returncode == 1 and "does not exist" in gone.stderr
    assert not any((h / CGROUP_PARENT / cid).exists() for h in Path("/sys/fs/cgroup").iterdir())
    assert bundles.runtime("delete", "--force", cid).returncode == 0, "force on a missing id is fine (runc)"


def test_delete_force_kills_a_running_container(bundles: Bundles) -> None:
    path, cid = bundles.make(["sleep", "100"])
    assert bundles.runtime("run", "-d", "--bundle", str(path), cid, stdin=subprocess.DEVNULL).returncode == 0
    pid = json.loads(bundles.runtime("state", cid).stdout)["pid"]
    assert bundles.runtime("delete", "--force", cid).returncode == 0
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3]


def test_pause_and_resume(bundles: Bundles) -> None:
    path, cid = bundles.make(["sleep", "100"])
    assert bundles.runtime("run", "-d", "--bundle", str(path), cid, stdin=subprocess.DEVNULL).returncode == 0
    try:
        pid = json.loads(bundles.runtime("state", cid).stdout)["pid"]
        assert bundles.runtime("pause", cid).returncode == 0
        assert json.loads(bundles.runtime("state", cid).stdout)["status"] == "paused"
        freezer = [ln for ln in Path(f"/proc/{pid}/cgroup").read_text().splitlines() if ":freezer:" in ln]
        if freezer:
            state_file = Path("/sys/fs/cgroup/freezer") / freezer[0].split(":", 2)[2].lstrip("/") / "freezer.state"
            assert state_file.read_text().strip() == "FROZEN"
        assert bundles.runtime("pause", cid).returncode == 1, "already paused"
        assert bundles.runtime("resume", cid).returncode == 0
        assert json.loads(bundles.runtime("state", cid).stdout)["status"] == "running"
    finally:
        assert bundles.runtime("delete", "--force", cid).returncode == 0


def test_bad_command_fails_create(bundles: Bundles) -> None:
    path, cid = bundles.make(["no-such-program"])
    proc = bundles.runtime("create", "--bundle", str(path), cid)
    assert proc.returncode == 1 and "executable file not found" in proc.stderr
    assert not (bundles.root / cid).exists()


def test_errors_go_to_the_json_log(bundles: Bundles) -> None:
    log = bundles.base / "log.json"
    proc = subprocess.run([RUNTIME, "--root", str(bundles.root), "--log", str(log), "--log-format", "json",
                           "state", "nope"], capture_output=True, text=True)
    assert proc.returncode == 1
    entry = json.loads(log.read_text().splitlines()[-1])
    assert entry["level"] == "error" and "does not exist" in entry["msg"]


# --- config.json parts, checked from inside ------------------------------------------------------


def test_process_identity_env_cwd(bundles: Bundles) -> None:
    proc = _run(bundles, "id; pwd; echo $FOO $HOME; umask", process__user={"uid": 1000, "gid": 1000,
                "additionalGids": [5, 7], "umask": 0o27}, process__cwd="/tmp",
                process__env=["PATH=/bin", "FOO=bar"])
    assert proc.stdout.split("\n") == ["uid=1000(user) gid=1000(user) groups=5,7", "/tmp", "bar /home/user",
                                       "0027", ""], proc.stderr


def test_hostname_rlimits_nnp_caps(bundles: Bundles) -> None:
    proc = _run(bundles, "hostname; ulimit -n; grep -E '^(Cap|NoNewPrivs)' /proc/self/status",
                process__rlimits=[{"type": "RLIMIT_NOFILE", "hard": 200, "soft": 100}])
    lines = proc.stdout.split("\n")
    assert lines[:2] == ["oci", "100"]
    assert "NoNewPrivs:\t1" in lines
    assert "CapBnd:\t0000000020000420" in lines and "CapEff:\t0000000020000420" in lines


def test_mounts_masks_and_readonly_root(bundles: Bundles) -> None:
    extra = bundles.base / "extra"
    extra.mkdir(exist_ok=True)
    (extra / "f").write_text("from host\n")
    mounts = [*BASE_CONFIG["mounts"],
              {"destination": "/data", "type": "bind", "source": str(extra), "options": ["rbind", "ro"]},
              {"destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["size=1m", "noexec"]}]
    proc = _run(bundles, "cat /data/f; touch /data/x 2>&1; touch /x 2>&1; grep -E ' /(scratch|data) ' "
                "/proc/mounts; cat /proc/kcore | wc -c; (echo x > /proc/sys/kernel/domainname) 2>&1; echo ok > /scratch/y && cat /scratch/y",
                mounts=mounts)
    out = proc.stdout
    assert out.startswith("from host\n")
    assert "touch: /data/x: Read-only file system" in out and "touch: /x: Read-only file system" in out
    assert "tmpfs /scratch tmpfs rw,noexec,relatime,size=1024k" in out
    assert "/data " in out and " ro," in out.split("/data ")[1].split("\n")[0]
    assert "\n0\n" in out, "kcore is masked"
    assert "can't create /proc/sys/kernel/domainname: Read-only file system" in out and out.endswith("ok\n")


def test_devices_and_sysctl(bundles: Bundles) -> None:
    proc = _run(bundles, "ls -l /dev/null /dev/mydev; readlink /dev/fd; cat /proc/sys/net/ipv4/ip_forward",
                linux__devices=[{"path": "/dev/mydev", "type": "c", "major": 1, "minor": 5, "fileMode": 0o600}],
                linux__sysctl={"net.ipv4.ip_forward": "1"}, linux__readonlyPaths=[])
    assert "crw-rw-rw-" in proc.stdout and "crw-------" in proc.stdout and "1,   5" in proc.stdout
    assert "/proc/self/fd\n1\n" in proc.stdout, proc.stderr


def test_resources_reach_the_cgroup(bundles: Bundles) -> None:
    proc = _run(bundles, "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max "
                "/sys/fs/cgroup/cpu/cpu.cfs_quota_us; cat /proc/self/oom_score_adj",
                linux__resources={"memory": {"limit": 64 << 20}, "pids": {"limit": 42},
                                  "cpu": {"quota": 50000, "period": 100000},
                                  "devices": [{"allow": False, "access": "rwm"}]},
                process__oomScoreAdj=300)
    assert proc.stdout.split() == [str(64 << 20), "42", "50000", "300"], proc.stderr


def test_namespaces_new_and_joined(bundles: Bundles) -> None:
    holder = subprocess.Popen(["unshare", "--net", "sleep", "60"])
    try:
        time.sleep(0.2)
        netns = f"/proc/{holder.pid}/ns/net"
        proc = _run(bundles, "for n in net pid uts; do readlink /proc/self/ns/$n; done; echo $$",
                    linux__namespaces=[{"type": "pid"}, {"type": "mount"}, {"type": "uts"},
                                       {"type": "network", "path": netns}])
        assert len(proc.stdout.split()) == 4, proc.stderr
        net, pid, uts, me = proc.stdout.split()
        assert net == os.readlink(netns)
        assert pid != os.readlink("/proc/self/ns/pid") and uts != os.readlink("/proc/self/ns/uts")
        assert me == "1"
    finally:
        holder.kill()
        holder.wait()


def test_seccomp_section(bundles: Bundles) -> None:
    seccomp = {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
               "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}
    proc = _run(bundles, "mkdir /tmp/x 2>&1; echo done", linux__seccomp=seccomp, root__readonly=False)
    assert "Operation not permitted" in proc.stdout and proc.stdout.endswith("done\n")


def test_hooks_get_the_state(bundles: Bundles) -> None:
    out = bundles.base / "hooks.out"
    hook = {"path": "/bin/sh", "args": ["sh", "-c", f"cat >> {out}; echo >> {out}"]}
    proc = _run(bundles, "true", hooks={"prestart": [hook], "poststart": [hook], "poststop": [hook]})
    assert proc.returncode == 0, proc.stderr
    docs = [json.loads(line) for line in out.read_text().splitlines() if line]
    assert [d["status"] for d in docs] == ["created", "running", "stopped"]
    assert docs[0]["pid"] > 0 and docs[0]["bundle"].startswith(str(bundles.base))


@pytest.mark.parametrize("field,value,message", [
    ("linux__namespaces", [{"type": "user"}, {"type": "mount"}], "user namespaces"),
    ("linux__uidMappings", [{"containerID": 0, "hostID": 1000, "size": 1}], "linux.uidMappings"),
    ("process__selinuxLabel", "system_u:system_r:container_t:s0", "process.selinuxLabel"),
    ("linux__resources__blockIO", {"weight": 10}, "linux.resources.blockIO"),
    ("hooks__createContainer", [{"path": "/bin/true"}], "hooks.createContainer"),
    ("process__cwd", "/proc/self/fd/3", "CVE-2024-21626"),
    ("domainname", "example.com", "domainname"),
])
def test_unsupported_fields_fail_loudly(bundles: Bundles, field: str, value: Any, message: str) -> None:
    path, cid = bundles.make("true", **{field: value})
    proc = bundles.runtime("run", "--bundle", str(path), cid)
    assert proc.returncode == 1 and message in proc.stderr
    assert not (bundles.root / cid).exists()


# --- fds -----------------------------------------------------------------------------------------


def test_no_fd_leaks_and_preserve_fds(bundles: Bundles) -> None:
    path, cid = bundles.make("ls /proc/$$/fd; exit 0")
    proc = bundles.runtime("run", "--bundle", str(path), cid, stdin=subprocess.DEVNULL)
    assert proc.stdout.split() == ["0", "1", "2"], proc.stderr
    path, cid = bundles.make("sleep 2 & sleep 0.3; ls /proc/$!/fd | xargs; cat <&3")
    r, w = os.pipe()
    os.write(w, b"through fd 3\n")
    os.close(w)
    try:
        proc = subprocess.run(["bash", "-c", f'exec 3<&{r} {r}<&-; exec "$@"', "bash", RUNTIME, "--root",
                               str(bundles.root), "run", "--preserve-fds", "1", "--bundle", str(path), cid],
                              pass_fds=(r,), capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    finally:
        os.close(r)
    assert proc.stdout.split("\n")[:2] == ["0 1 2 3", "through fd 3"], proc.stderr


# --- terminal ------------------------------------------------------------------------------------


def test_console_socket_receives_the_pty(bundles: Bundles) -> None:
    sock_path = bundles.base / "console.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(sock_path))
    server.listen(1)
    got: dict[str, Any] = {}

    def accept() -> None:
        conn, _ = server.accept()
        _msg, fds, _flags, _addr = socket.recv_fds(conn, 1024, 1)
        got["fd"] = fds[0]
        conn.close()

    thread = threading.Thread(target=accept)
    thread.start()
    path, cid = bundles.make("tty; echo hello", process__terminal=True)
    created = bundles.runtime("create", "--bundle", str(path), "--console-socket", str(sock_path), cid)
    thread.join(10)
    assert created.returncode == 0, created.stderr
    assert bundles.runtime("start", cid).returncode == 0
    out = b""
    try:
        while True:
            chunk = os.read(got["fd"], 1024)
            if not chunk:
                break
            out += chunk
    except OSError:
        pass  # EIO once the last slave fd closes
    os.close(got["fd"])
    assert out.replace(b"\r", b"") == b"/dev/pts/0\nhello\n"
    bundles.runtime("delete", "--force", cid)


# --- exec ----------------------------------------------------------------------------------------


def test_exec_joins_the_container(bundles: Bundles) -> None:
    path, cid = bundles.make(["sleep", "100"])
    assert bundles.runtime("run", "-d", "--bundle", str(path), cid, stdin=subprocess.DEVNULL).returncode == 0
    try:
        proc = bundles.runtime("exec", cid, "sh", "-c", "hostname; echo $$; sleep 2 & sleep 0.3; ls /proc/$!/fd | xargs; exit 4", stdin=subprocess.DEVNULL)
        assert proc.returncode == 4 and proc.stdout.split("\n")[0] == "oci"
        assert int(proc.stdout.split("\n")[1]) > 1
        assert proc.stdout.split("\n")[2] == "0 1 2", "no fd of the runtime reaches an exec'd process"
        process = bundles.base / f"{cid}-process.json"
        process.write_text(json.dumps({**BASE_CONFIG["process"], "args": ["sleep", "50"]}))
        pid_file = bundles.base / f"{cid}-exec.pid"
        detached = bundles.runtime("exec", "--detach", "--process", str(process), "--pid-file", str(pid_file), cid)
        assert detached.returncode == 0, detached.stderr
        exec_pid = int(pid_file.read_text())
        container_pid = json.loads(bundles.runtime("state", cid).stdout)["pid"]
        assert os.readlink(f"/proc/{exec_pid}/ns/pid") == os.readlink(f"/proc/{container_pid}/ns/pid")
        assert os.readlink(f"/proc/{exec_pid}/ns/mnt") == os.readlink(f"/proc/{container_pid}/ns/mnt")
    finally:
        bundles.runtime("delete", "--force", cid)


# --- side by side with runc ----------------------------------------------------------------------

PROBE = ("hostname; id; ulimit -n; grep -E '^(Cap|NoNewPrivs|Seccomp:)' /proc/self/status; "
         "for ns in net pid uts ipc mnt cgroup; do [ \"$(readlink /proc/self/ns/$ns)\" = \"$HOSTNS_$ns\" ] "
         "&& echo $ns:host || echo $ns:own; done; cut -d' ' -f2,3,4 /proc/mounts | sort; "
         "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max; ls /dev; "
         "cat /proc/sys/net/ipv4/ip_forward; mkdir /dev/shm/d 2>&1; exit 5")

SIDE_BY_SIDE = {
    "default": {},
    "user-and-limits": {"process__user": {"uid": 1000, "gid": 1000, "additionalGids": [1000]},
                        "process__rlimits": [{"type": "RLIMIT_NOFILE", "hard": 512, "soft": 256}],
                        "linux__resources": {"memory": {"limit": 32 << 20}, "pids": {"limit": 64}}},
    "shared-net-ipc": {"linux__namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "uts"}]},
    "mounts-sysctl-seccomp": {
        "mounts": [*BASE_CONFIG["mounts"],
                   {"destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["size=1m", "noexec"]},
                   {"destination": "/data", "type": "bind", "source": "/etc", "options": ["rbind", "ro", "nosuid"]}],
        "linux__sysctl": {"net.ipv4.ip_forward": "1"},
        "linux__seccomp": {"defaultAction": "SCMP_ACT_ALLOW",
                           "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]},
    },
    "writable-root-more-caps": {"root__readonly": False,
                                "process__capabilities": {k: ["CAP_SYS_ADMIN", "CAP_CHOWN"]
                                                          for k in ("bounding", "effective", "permitted")}},
}


@pytest.mark.parametrize("name", sorted(SIDE_BY_SIDE))
def test_same_result_as_runc(bundles: Bundles, name: str) -> None:
    hostns = {ns: os.readlink(f"/proc/self/ns/{ns}") for ns in ("net", "pid", "uts", "ipc", "mnt", "cgroup")}
    probe = PROBE.replace("$HOSTNS_$ns", "$(eval echo \\$HOSTNS_$ns)")
    env = ["PATH=/bin"] + [f"HOSTNS_{k}={v}" for k, v in hostns.items()]
    path, cid = bundles.make(probe, process__env=env, **SIDE_BY_SIDE[name])
    ours = bundles.run(path, cid)
    theirs = bundles.run(path, cid, runtime="runc")
    assert ours.returncode == theirs.returncode == 5
    assert ours.stderr == theirs.stderr
    ours_lines, theirs_lines = _normalise_mounts(ours.stdout), _normalise_mounts(theirs.stdout)
    assert ours_lines == theirs_lines, "\n".join(difflib.unified_diff(theirs_lines, ours_lines, "runc", "isobox",
                                                                      lineterm=""))


def _normalise_mounts(text: str) -> list[str]:
    """Known, deliberate differences, compared by mount point and type only:
    - masked paths: isobox binds the host's /dev/null (devtmpfs) where runc binds the container's
      (tmpfs), same device; a masked directory's tmpfs has size=0;
    - read-only /proc paths: isobox adds nosuid,nodev,noexec to the read-only remount;
    - /sys/fs/cgroup on v1: with "ro", isobox makes the tmpfs holding the hierarchies read-only too."""
    relaxed = {*BASE_CONFIG["linux"]["maskedPaths"], *BASE_CONFIG["linux"]["readonlyPaths"], "/sys/fs/cgroup"}
    out = []
    for line in text.splitlines():
        fields = line.split(" ")
        if len(fields) == 3 and fields[0] in relaxed:
            line = f"{fields[0]} {fields[1].replace('devtmpfs', 'tmpfs')}"
        out.append(line)
    return out


# --- podman --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def podman(bundles: Bundles) -> Iterator[list[str]]:
    base = bundles.base / "podman"
    cmd = ["podman", "--root", str(base / "root"), "--runroot", str(base / "run"), "--cgroup-manager", "cgroupfs",
           "--events-backend", "file", "--runtime", RUNTIME]
    try:
        yield cmd
    finally:
        subprocess.run([*cmd, "rm", "-af", "-t", "0"], capture_output=True, timeout=60)
        for line in Path("/proc/self/mountinfo").read_text().splitlines()[::-1]:
            mountpoint = line.split()[4]
            if mountpoint.startswith(str(base)):
                subprocess.run(["umount", "-l", mountpoint], capture_output=True)


PODMAN_RUN = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", "--network", "none"]


def _podman(cmd: list[str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_podman_run_rm(podman: list[str], bundles: Bundles) -> None:
    proc = _podman(podman, "run", "--rm", *PODMAN_RUN, "--rootfs", str(bundles.base / "rootfs"),
                   "sh", "-c", "echo hello; sleep 2 & ls /proc/$!/fd | xargs; exit 6")
    assert (proc.returncode, proc.stdout) == (6, "hello\n0 1 2\n"), proc.stderr


def test_podman_detached_logs_exec_stop_kill(podman: list[str], bundles: Bundles) -> None:
    script = "echo started; trap 'echo got term; exit 3' TERM; while true; do sleep 0.1; done"
    run = _podman(podman, "run", "-d", *PODMAN_RUN, "--memory", "64m", "--pids-limit", "50",
                  "--rootfs", str(bundles.base / "rootfs"), "sh", "-c", script)
    assert run.returncode == 0, run.stderr
    cid = run.stdout.strip()
    time.sleep(0.5)
    assert _podman(podman, "logs", cid).stdout == "started\n"
    exec_ = _podman(podman, "exec", cid, "sh", "-c",
                    "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max; exit 7")
    assert exec_.returncode == 7 and exec_.stdout.split() == [str(64 << 20), "50"], exec_.stderr
    assert _podman(podman, "stop", "-t", "5", cid).returncode == 0
    inspect = _podman(podman, "inspect", cid, "--format", "{{.State.ExitCode}} {{.State.Status}}")
    assert inspect.stdout.strip() == "3 exited"
    assert "got term" in _podman(podman, "logs", cid).stdout
    assert _podman(podman, "rm", cid).returncode == 0

    run = _podman(podman, "run", "-d", *PODMAN_RUN, "--rootfs", str(bundles.base / "rootfs"), "sleep", "100")
    cid = run.stdout.strip()
    assert _podman(podman, "kill", cid).returncode == 0
    _podman(podman, "wait", cid)
    inspect = _podman(podman, "inspect", cid, "--format", "{{.State.ExitCode}} {{.State.Status}}")
    assert inspect.stdout.strip() == "137 exited"
    assert _podman(podman, "rm", cid).returncode == 0
