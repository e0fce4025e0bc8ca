"""config.json parsing: each supported part lands in the runtime's config; the rest is refused."""

from __future__ import annotations

import copy
import resource
from pathlib import Path
from typing import Any

import pytest

from isobox.errors import InvalidArgument
from isobox.oci import bundle
from isobox.runtimes.container import syscalls as sc
from isobox.runtimes.container.config import CapSets

BASE: dict[str, Any] = {
    "ociVersion": "1.0.2",
    "root": {"path": "rootfs"},
    "process": {"args": ["sh"], "cwd": "/"},
    "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
    "linux": {"namespaces": [{"type": "mount"}, {"type": "pid"}]},
}


def _parse(tmp_path: Path, **changes: Any) -> bundle.Bundle:
    (tmp_path / "rootfs").mkdir(exist_ok=True)
    doc = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        node = doc
        keys = dotted.split("__")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    return bundle.parse(doc, str(tmp_path), "c1")


def test_minimal_bundle(tmp_path: Path) -> None:
    b = _parse(tmp_path)
    assert b.config.rootfs == str(tmp_path / "rootfs")
    assert b.config.lowerdirs == [], "an OCI root is used as it is, without overlay"
    assert b.namespaces.new == sc.CLONE_NEWNS | sc.CLONE_NEWPID and b.namespaces.join == []
    assert b.config.process.argv == ["sh"] and b.config.process.uid == 0
    assert b.config.masked_paths == () and b.config.readonly_paths == ()


def test_process_fields(tmp_path: Path) -> None:
    b = _parse(tmp_path, process={
        "args": ["app", "-x"], "cwd": "/srv", "env": ["A=1", "B=x=y"], "terminal": True,
        "user": {"uid": 1000, "gid": 100, "additionalGids": [5], "umask": 18},
        "capabilities": {"bounding": ["CAP_KILL", "CAP_CHOWN"], "effective": ["CAP_KILL"], "ambient": ["cap_kill"]},
        "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 10, "hard": 20}], "noNewPrivileges": True,
        "oomScoreAdj": 100, "apparmorProfile": "containers-default",
    })
    p = b.config.process
    assert (p.argv, p.cwd, p.env, p.tty) == (["app", "-x"], "/srv", {"A": "1", "B": "x=y"}, True)
    assert (p.uid, p.gid, p.additional_gids, p.umask, p.no_new_privs) == (1000, 100, (5,), 18, True)
    assert p.cap_sets == CapSets(bounding=("KILL", "CHOWN"), effective=("KILL",), ambient=("KILL",))
    assert p.rlimits == ((resource.RLIMIT_NOFILE, 10, 20),)
    assert (b.oom_score_adj, b.apparmor) == (100, "containers-default")


def test_mounts_options(tmp_path: Path) -> None:
    b = _parse(tmp_path, mounts=[
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755", "size=1m"]},
        {"destination": "/data", "type": "bind", "source": "data", "options": ["rbind", "ro", "rprivate", "Z"]},
        {"destination": "/x", "source": "/etc/hosts", "options": ["bind"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["ro", "nodev"]},
    ])
    assert b.config.mount_plan is not None
    dev, data, x, cg = b.config.mount_plan
    assert (dev.fstype, dev.flags, dev.data, dev.bind) == ("tmpfs", sc.MS_NOSUID, "mode=755,size=1m", False)
    assert (data.bind, data.recursive, data.flags, data.source) == (True, True, sc.MS_RDONLY, str(tmp_path / "data"))
    assert data.propagation == sc.MS_PRIVATE | sc.MS_REC
    assert (x.bind, x.recursive, x.fstype) == (True, False, None)
    assert (cg.fstype, cg.flags) == ("cgroup", sc.MS_RDONLY | sc.MS_NODEV)


def test_linux_fields(tmp_path: Path) -> None:
    b = _parse(tmp_path, linux={
        "namespaces": [{"type": "mount"}, {"type": "network", "path": "/proc/1/ns/net"}, {"type": "uts"}],
        "devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 0o600}],
        "cgroupsPath": "/parent/c1", "sysctl": {"net.ipv4.ip_forward": "1"},
        "maskedPaths": ["/proc/kcore"], "readonlyPaths": ["/proc/sys"], "rootfsPropagation": "private",
        "resources": {"memory": {"limit": 1 << 20, "swap": 2 << 20}, "cpu": {"quota": 50000, "period": 100000},
                      "pids": {"limit": 10},
                      "devices": [{"allow": False, "access": "rwm"},
                                  {"allow": True, "type": "c", "major": 10, "minor": 229, "access": "rw"}]},
        "seccomp": {"defaultAction": "SCMP_ACT_ALLOW"},
    }, hostname="h")
    assert b.namespaces.new == sc.CLONE_NEWNS | sc.CLONE_NEWUTS
    assert b.namespaces.join == [("/proc/1/ns/net", sc.CLONE_NEWNET)]
    assert b.config.devices[0].path == "/dev/fuse" and b.config.devices[0].mode == 0o600
    assert b.cgroups_path == "/parent/c1" and b.config.sysctl == {"net.ipv4.ip_forward": "1"}
    assert b.config.masked_paths == ("/proc/kcore",) and b.config.readonly_paths == ("/proc/sys",)
    assert b.config.root_propagation == sc.MS_PRIVATE and b.config.hostname == "h"
    r = b.resources
    assert (r.memory, r.memory_swap, r.cpus, r.pids) == (1 << 20, 2 << 20, 0.5, 10)
    assert r.device_allow == [("c", 10, 229, "rw")] and not r.allow_all_devices
    assert b.seccomp == {"defaultAction": "SCMP_ACT_ALLOW"}


def test_hooks(tmp_path: Path) -> None:
    b = _parse(tmp_path, hooks={"prestart": [{"path": "/bin/hook", "args": ["hook", "x"], "timeout": 5}],
                                "poststop": [{"path": "/bin/stop"}]})
    assert b.hooks["prestart"][0].args == ["hook", "x"] and b.hooks["prestart"][0].timeout == 5
    assert b.hooks["poststop"][0].args == ["/bin/stop"]


@pytest.mark.parametrize("dotted,value,message", [
    ("linux__namespaces", [{"type": "user"}, {"type": "mount"}], "user namespaces are not supported"),
    ("linux__namespaces", [{"type": "pid"}], "mount namespace is required"),
    ("linux__namespaces", [{"type": "mount"}, {"type": "mount"}], "listed twice"),
    ("linux__uidMappings", [{"containerID": 0, "hostID": 1, "size": 1}], "linux.uidMappings: not supported"),
    ("linux__intelRdt", {"closID": "x"}, "linux.intelRdt"),
    ("linux__resources__blockIO", {"weight": 10}, "linux.resources.blockIO"),
    ("linux__resources__memory__disableOOMKiller", True, "disableOOMKiller"),
    ("linux__resources__cpu__shares", 512, "linux.resources.cpu.shares"),
    ("linux__resources__devices", [{"allow": True}, {"allow": False, "type": "c", "major": 1}], "deny"),
    ("process__selinuxLabel", "x", "process.selinuxLabel"),
    ("process__ioPriority", {"class": "IOPRIO_CLASS_RT"}, "process.ioPriority"),
    ("process__cwd", "/proc/self/fd/7", "CVE-2024-21626"),
    ("process__cwd", "relative", "not an absolute path"),
    ("process__args", [], "must name the program"),
    ("process__capabilities", {"bounding": ["CAP_NOPE"]}, "unknown capability"),
    ("process__rlimits", [{"type": "RLIMIT_BOGUS", "soft": 1, "hard": 1}], "unknown rlimit"),
    ("hooks__createContainer", [{"path": "/bin/true"}], "hooks.createContainer"),
    ("hooks__prestart", [{"path": "relative"}], "not absolute"),
    ("mounts", [{"destination": "/x", "type": "nfs", "source": "s"}], "'nfs' is not supported"),
    ("mounts", [{"destination": "/x", "type": "tmpfs", "options": ["idmap"]}], "'idmap' is not supported"),
    ("mounts", [{"destination": "x", "type": "tmpfs"}], "not an absolute path"),
    ("mounts", [{"destination": "/x", "options": ["bind"]}], "needs a source"),
    ("domainname", "example.com", "domainname"),
    ("ociVersion", "2.0.0", "not a supported version"),
    ("hostname", "h", "needs a new uts namespace"),
    ("windows", {"layerFolders": ["x"]}, "windows"),
])
def test_refused(tmp_path: Path, dotted: str, value: Any, message: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        _parse(tmp_path, **{dotted: value})
    assert message in err.value.message


def test_empty_unsupported_fields_are_accepted(tmp_path: Path) -> None:
    b = _parse(tmp_path, linux__uidMappings=[], linux__mountLabel="", process__selinuxLabel="")
    assert b.config.process.argv == ["sh"]


def test_missing_config_and_bad_json(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="no such file"):
        bundle.load(str(tmp_path), "c1")
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(InvalidArgument, match="not valid JSON"):
        bundle.load(str(tmp_path), "c1")
