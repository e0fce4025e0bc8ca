"""cgroups on fake cgroupfs trees (no root needed).

The fake kernel replaces the module's ``_mkdir``/``_rmdir``: ``mkdir`` populates a new cgroup with
its interface files (v2: only for controllers enabled in the parent's cgroup.subtree_control, as the
kernel does) and ``rmdir`` removes them, refusing with EBUSY while processes or child cgroups remain.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from isobox.errors import InvalidArgument, NotFound, RuntimeFailure
from isobox.runtimes.container import cgroups
from isobox.runtimes.container.cgroups import (
    ALLOW_ALL_DEVICES,
    DEFAULT_DEVICE_RULES,
    Cgroup,
    DeviceRule,
    Layout,
    Limits,
    detect,
    leftovers,
)

UNLIMITED_V1 = "9223372036854771712\n"
DIR = object()  # a template entry that becomes a directory where the kernel has a file

V1_TEMPLATES: dict[str, dict[str, object]] = {
    "memory": {
        "memory.limit_in_bytes": UNLIMITED_V1,
        "memory.memsw.limit_in_bytes": UNLIMITED_V1,
        "memory.usage_in_bytes": "0\n",
        "memory.max_usage_in_bytes": "0\n",
        "memory.stat": "cache 0\ntotal_inactive_file 0\n",
        "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
    },
    "cpu,cpuacct": {
        "cpu.cfs_period_us": "100000\n",
        "cpu.cfs_quota_us": "-1\n",
        "cpuacct.usage": "0\n",
    },
    "pids": {"pids.max": "max\n", "pids.current": "0\n"},
    "devices": {"devices.allow": "", "devices.deny": "", "devices.list": "a *:* rwm\n"},
    "freezer": {"freezer.state": "THAWED\n"},
    "cpuset": {"cpuset.cpus": "", "cpuset.mems": ""},
    "systemd": {},
}

V2_FILES: dict[str, dict[str, str]] = {
    "": {
        "cgroup.subtree_control": "",
        "cgroup.events": "populated 0\nfrozen 0\n",
        "cgroup.freeze": "0\n",
        "cgroup.kill": "",
        "cpu.stat": "usage_usec 0\nuser_usec 0\nsystem_usec 0\n",
    },
    "memory": {
        "memory.max": "max\n",
        "memory.swap.max": "max\n",
        "memory.current": "0\n",
        "memory.peak": "0\n",
        "memory.stat": "anon 0\ninactive_file 0\n",
        "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n",
    },
    "cpu": {"cpu.max": "max 100000\n", "cpu.weight": "100\n"},
    "pids": {"pids.max": "max\n", "pids.current": "0\n"},
}
V2_ROOT_CONTROLLERS = "cpuset cpu io memory hugetlb pids rdma misc"


def _populate(path: Path, files: dict[str, object]) -> None:
    for name, content in files.items():
        if content is DIR:
            (path / name).mkdir()
        else:
            assert isinstance(content, str)
            (path / name).write_text(content)


class FakeKernel:
    """Stands in for cgroupfs's mkdir/rmdir semantics on a tmpfs-like tree."""

    def __init__(self, root: Path, version: int, templates: dict[str, dict[str, object]] | None = None):
        self.root = root
        self.version = version
        self.templates = templates if templates is not None else V1_TEMPLATES

    def mkdir(self, path: str | os.PathLike[str], mode: int = 0o777) -> None:
        os.mkdir(path, mode)
        path = Path(path)
        files: dict[str, object] = {"cgroup.procs": ""}
        if self.version == 1:
            hierarchy = path.resolve().relative_to(self.root.resolve()).parts[0]
            files.update(self.templates[hierarchy])
        else:
            enabled = (path.parent / "cgroup.subtree_control").read_text().replace("+", " ").split()
            files["cgroup.controllers"] = " ".join(enabled) + "\n"
            for controller in ["", *enabled]:
                files.update(V2_FILES.get(controller, {}))
            files.update(self.templates.get("v2", {}))
        _populate(path, files)

    def rmdir(self, path: str | os.PathLike[str]) -> None:
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
        busy = (path / "cgroup.procs").read_text().split() or any(
            (child / "cgroup.procs").exists() for child in path.iterdir() if child.is_dir()
        )
        if busy:
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), str(path))
        shutil.rmtree(path)


def _mountinfo_line(n: int, point: Path, fstype: str, options: str) -> str:
    escaped = str(point).replace(" ", "\\040")
    return f"{30 + n} 23 0:{40 + n} / {escaped} rw,nosuid,nodev,noexec,relatime shared:{n} - {fstype} {fstype} {options}\n"


def make_v1_tree(base: Path, templates: dict[str, dict[str, object]] | None = None) -> tuple[Path, Path]:
    """A hybrid host: v1 hierarchies (cpu,cpuacct co-mounted, with symlinks) + an empty cgroup2."""
    root = base / "sys fs cgroup"  # a space, to exercise mountinfo's \040 escape
    root.mkdir()
    lines = [_mountinfo_line(0, root, "tmpfs", "rw,mode=755")]
    for n, hierarchy in enumerate(
        ["memory", "cpu,cpuacct", "pids", "devices", "freezer", "cpuset", "systemd"], 1
    ):
        (root / hierarchy).mkdir()
        _populate(root / hierarchy, {"cgroup.procs": "1\n"})
        options = "rw,name=systemd" if hierarchy == "systemd" else f"rw,{hierarchy}"
        lines.append(_mountinfo_line(n, root / hierarchy, "cgroup", options))
    (root / "cpu").symlink_to("cpu,cpuacct")
    (root / "cpuacct").symlink_to("cpu,cpuacct")
    (root / "unified").mkdir()
    _populate(root / "unified", {"cgroup.controllers": "", "cgroup.procs": "", "cgroup.subtree_control": ""})
    lines.append(_mountinfo_line(9, root / "unified", "cgroup2", "rw,nsdelegate"))
    lines.append("99 23 0:99 / /proc rw - proc proc rw\n")
    mountinfo = base / "mountinfo"
    mountinfo.write_text("".join(lines))
    return root, mountinfo


def make_v2_tree(base: Path, controllers: str = V2_ROOT_CONTROLLERS) -> tuple[Path, Path]:
    root = base / "cgroup2"
    root.mkdir()
    _populate(
        root,
        {
            "cgroup.controllers": controllers + "\n",
            "cgroup.subtree_control": "",
            "cgroup.procs": "1\n",
            "cpu.stat": "usage_usec 1\n",
        },
    )
    mountinfo = base / "mountinfo"
    mountinfo.write_text(_mountinfo_line(1, root, "cgroup2", "rw,nsdelegate,memory_recursiveprot"))
    return root, mountinfo


@pytest.fixture
def v1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Layout]:
    def build(templates: dict[str, dict[str, object]] | None = None) -> Layout:
        root, mountinfo = make_v1_tree(tmp_path, templates)
        kernel = FakeKernel(root, 1, templates)
        monkeypatch.setattr(cgroups, "_mkdir", kernel.mkdir)
        monkeypatch.setattr(cgroups, "_rmdir", kernel.rmdir)
        return detect(root, mountinfo)

    return build


@pytest.fixture
def v2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Layout]:
    def build(controllers: str = V2_ROOT_CONTROLLERS, extra: dict[str, object] | None = None) -> Layout:
        root, mountinfo = make_v2_tree(tmp_path, controllers)
        kernel = FakeKernel(root, 2, {"v2": extra or {}})
        monkeypatch.setattr(cgroups, "_mkdir", kernel.mkdir)
        monkeypatch.setattr(cgroups, "_rmdir", kernel.rmdir)
        return detect(root, mountinfo)

    return build


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Every (file name, value) written, in order."""
    log: list[tuple[str, str]] = []
    real = cgroups._write

    def spy(path: Path, value: str, hints: dict[int, str] | None = None) -> None:
        log.append((path.name, value))
        real(path, value, hints)

    monkeypatch.setattr(cgroups, "_write", spy)
    return log


def _dirs_under(root: Path) -> list[Path]:
    """Every directory below the top-level hierarchies, i.e. anything a create left behind."""
    return sorted(
        p
        for top in root.iterdir()
        if top.is_dir() and not top.is_symlink()
        for p in top.rglob("*")
        if p.is_dir()
    )


# --- detect --------------------------------------------------------------------------------------


def test_detect_v1_hybrid(tmp_path: Path) -> None:
    root, mountinfo = make_v1_tree(tmp_path)
    layout = detect(root, mountinfo)
    assert layout.version == 1
    assert layout.root == root
    assert layout.mounts["memory"] == root / "memory"
    assert layout.mounts["cpu"] == layout.mounts["cpuacct"] == root / "cpu,cpuacct"
    assert layout.controllers == {"memory", "cpu", "cpuacct", "pids", "devices", "freezer", "cpuset"}
    assert "systemd" not in layout.mounts and "unified" not in layout.mounts
    assert layout.hierarchies(cgroups.V1_CONTROLLERS) == [
        root / "memory",
        root / "cpu,cpuacct",
        root / "pids",
        root / "devices",
        root / "freezer",
    ]


def test_detect_v2(tmp_path: Path) -> None:
    root, mountinfo = make_v2_tree(tmp_path)
    layout = detect(root, mountinfo)
    assert layout.version == 2
    assert layout.mounts == {"unified": root}
    assert layout.controllers == set(V2_ROOT_CONTROLLERS.split())


def test_detect_hybrid_unified_mount_itself_is_v2(tmp_path: Path) -> None:
    root, mountinfo = make_v1_tree(tmp_path)
    layout = detect(root / "unified", mountinfo)
    assert layout.version == 2 and layout.controllers == frozenset()


@pytest.mark.parametrize("make", [make_v1_tree, make_v2_tree])
def test_detect_probes_the_tree_without_mountinfo(
    tmp_path: Path, make: Callable[[Path], tuple[Path, Path]]
) -> None:
    root, _ = make(tmp_path)
    by_mountinfo = detect(root, tmp_path / "mountinfo")
    probed = detect(root, tmp_path / "missing")
    assert probed == by_mountinfo


def test_detect_nothing_there(tmp_path: Path) -> None:
    with pytest.raises(RuntimeFailure, match="no cgroup file system"):
        detect(tmp_path, tmp_path / "missing")


# --- create: v1 ----------------------------------------------------------------------------------


def test_create_v1_writes_limits(v1: Callable[..., Layout], writes: list[tuple[str, str]]) -> None:
    layout = v1()
    cg = Cgroup.create(layout, "web", Limits(memory=64 << 20, cpus=0.5, pids=100), parent="isobox")
    root = layout.root
    assert cg.paths == [
        root / h / "isobox" / "web" for h in ["memory", "cpu,cpuacct", "pids", "devices", "freezer"]
    ]
    mem = root / "memory/isobox/web"
    assert (mem / "memory.limit_in_bytes").read_text() == str(64 << 20)
    assert (mem / "memory.memsw.limit_in_bytes").read_text() == str(64 << 20)
    assert (root / "cpu/isobox/web/cpu.cfs_period_us").read_text() == "100000"
    assert (root / "cpu/isobox/web/cpu.cfs_quota_us").read_text() == "50000"
    assert (root / "pids/isobox/web/pids.max").read_text() == "100"
    assert not (root / "cpuset/isobox").exists()
    # memory before memsw (memsw may not go below memory), period before quota, deny before allow.
    names = [name for name, _ in writes]
    assert names.index("memory.limit_in_bytes") < names.index("memory.memsw.limit_in_bytes")
    assert names.index("cpu.cfs_period_us") < names.index("cpu.cfs_quota_us")
    device_writes = [w for w in writes if w[0].startswith("devices.")]
    assert device_writes[0] == ("devices.deny", "a")
    assert device_writes[1:] == [("devices.allow", str(rule)) for rule in DEFAULT_DEVICE_RULES]
    assert cg.applied["version"] == 1
    assert cg.applied["cpu.cfs_quota_us"] == "50000"
    assert cg.applied["devices.allow"] == [
        "c *:* m",
        "b *:* m",
        "c 1:3 rwm",
        "c 1:5 rwm",
        "c 1:7 rwm",
        "c 1:8 rwm",
        "c 1:9 rwm",
        "c 5:0 rwm",
        "c 5:2 rwm",
        "c 136:* rwm",
    ]
    assert cg.warnings == []


def test_create_v1_unlimited(v1: Callable[..., Layout], writes: list[tuple[str, str]]) -> None:
    layout = v1()
    cg = Cgroup.create(layout, "c1", Limits(devices=ALLOW_ALL_DEVICES), parent="isobox")
    assert (layout.root / "pids/isobox/c1/pids.max").read_text() == "max"
    assert (layout.root / "cpu/isobox/c1/cpu.cfs_quota_us").read_text() == "-1\n"  # untouched
    assert writes == [("pids.max", "max")]
    assert cg.applied == {"version": 1, "pids.max": "max"}


def test_create_v1_without_swap_accounting(v1: Callable[..., Layout]) -> None:
    templates = {**V1_TEMPLATES, "memory": dict(V1_TEMPLATES["memory"])}
    del templates["memory"]["memory.memsw.limit_in_bytes"]
    layout = v1(templates)
    cg = Cgroup.create(layout, "c1", Limits(memory=1 << 30), parent="isobox")
    assert "memory.memsw.limit_in_bytes" not in cg.applied
    assert cg.applied["memory.limit_in_bytes"] == str(1 << 30)


def test_create_v1_uses_env_parent(v1: Callable[..., Layout], monkeypatch: pytest.MonkeyPatch) -> None:
    layout = v1()
    monkeypatch.setenv("ISOBOX_CGROUP_PARENT", "/machine/isobox/")
    cg = Cgroup.create(layout, "c1", Limits())
    assert cg.parent == "machine/isobox"
    assert cg.paths[0] == layout.root / "memory/machine/isobox/c1"


# --- create: v2 ----------------------------------------------------------------------------------


def test_create_v2_writes_limits_and_enables_controllers(
    v2: Callable[..., Layout], writes: list[tuple[str, str]]
) -> None:
    layout = v2()
    cg = Cgroup.create(layout, "web", Limits(memory=64 << 20, cpus=0.5, pids=100), parent="isobox")
    leaf = layout.root / "isobox/web"
    assert cg.paths == [leaf]
    assert cg.procs_files() == [leaf / "cgroup.procs"]
    for level in (layout.root, layout.root / "isobox"):
        assert set((level / "cgroup.subtree_control").read_text().split()) == {"+memory", "+cpu", "+pids"}
    assert (leaf / "memory.max").read_text() == str(64 << 20)
    assert (leaf / "memory.swap.max").read_text() == "0"
    assert (leaf / "cpu.max").read_text() == "50000 100000"
    assert (leaf / "pids.max").read_text() == "100"
    assert not any(name.startswith("devices.") for name, _ in writes)
    assert len(cg.warnings) == 1 and "device" in cg.warnings[0]
    assert cg.applied == {
        "version": 2,
        "memory.max": str(64 << 20),
        "memory.swap.max": "0",
        "cpu.max": "50000 100000",
        "pids.max": "100",
    }


def test_create_v2_second_container_skips_enabling(
    v2: Callable[..., Layout], writes: list[tuple[str, str]]
) -> None:
    layout = v2()
    Cgroup.create(layout, "a", Limits(), parent="isobox")
    writes.clear()
    cg = Cgroup.create(layout, "b", Limits(devices=ALLOW_ALL_DEVICES), parent="isobox")
    assert writes == [("pids.max", "max")]
    assert cg.warnings == []


def test_create_v2_nested_parent(v2: Callable[..., Layout]) -> None:
    layout = v2()
    Cgroup.create(layout, "c1", Limits(memory=1 << 20), parent="a/b")
    for level in ("", "a", "a/b"):
        assert "+memory" in (layout.root / level / "cgroup.subtree_control").read_text()
    assert (layout.root / "a/b/c1/memory.max").read_text() == str(1 << 20)


def test_create_v2_without_swap_accounting(
    v2: Callable[..., Layout], monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = v2()
    monkeypatch.delitem(V2_FILES["memory"], "memory.swap.max")
    cg = Cgroup.create(layout, "c1", Limits(memory=1 << 20), parent="isobox")
    assert "memory.swap.max" not in cg.applied


def test_create_v2_missing_controller(v2: Callable[..., Layout]) -> None:
    layout = v2(controllers="cpu io memory")
    with pytest.raises(RuntimeFailure, match="pids not available"):
        Cgroup.create(layout, "c1", Limits(pids=10), parent="isobox")
    assert _dirs_under(layout.root) == []
    cg = Cgroup.create(layout, "c1", Limits(memory=1 << 20), parent="isobox")
    assert "pids.max" not in cg.applied
    assert set((layout.root / "cgroup.subtree_control").read_text().split()) == {"+memory", "+cpu"}


# --- all or nothing ------------------------------------------------------------------------------


def test_v1_failure_removes_everything(v1: Callable[..., Layout]) -> None:
    # A kernel without CONFIG_CFS_BANDWIDTH has no cpu.cfs_quota_us.
    templates = {**V1_TEMPLATES, "cpu,cpuacct": dict(V1_TEMPLATES["cpu,cpuacct"])}
    del templates["cpu,cpuacct"]["cpu.cfs_quota_us"]
    layout = v1(templates)
    with pytest.raises(RuntimeFailure) as info:
        Cgroup.create(layout, "c1", Limits(memory=1 << 20, cpus=1.5), parent="isobox/deep")
    assert "cpu.cfs_quota_us" in info.value.message and "[ENOENT]" in info.value.message
    assert info.value.hint
    assert _dirs_under(layout.root) == []


def test_v1_failure_on_directory_instead_of_file(v1: Callable[..., Layout]) -> None:
    templates = {**V1_TEMPLATES, "devices": {**V1_TEMPLATES["devices"], "devices.allow": DIR}}
    layout = v1(templates)
    (layout.root / "memory/isobox").mkdir()  # a parent that exists already stays
    with pytest.raises(RuntimeFailure, match=r"devices\.allow: Is a directory \[EISDIR\]"):
        Cgroup.create(layout, "c1", Limits(pids=5), parent="isobox")
    assert _dirs_under(layout.root) == [layout.root / "memory/isobox"]


def test_v1_existing_cgroup_is_refused_and_kept(v1: Callable[..., Layout]) -> None:
    layout = v1()
    (layout.root / "pids/isobox/c1").mkdir(parents=True)
    with pytest.raises(RuntimeFailure, match=r"pids/isobox/c1: File exists \[EEXIST\]"):
        Cgroup.create(layout, "c1", Limits(), parent="isobox")
    assert _dirs_under(layout.root) == [layout.root / "pids/isobox", layout.root / "pids/isobox/c1"]


def test_v2_failure_removes_everything(v2: Callable[..., Layout]) -> None:
    layout = v2(extra={"pids.max": DIR})
    with pytest.raises(RuntimeFailure, match=r"pids\.max.*\[EISDIR\]"):
        Cgroup.create(layout, "c1", Limits(memory=1 << 20, pids=5), parent="isobox/deep")
    assert _dirs_under(layout.root) == []


def test_interrupt_also_cleans_up(v1: Callable[..., Layout], monkeypatch: pytest.MonkeyPatch) -> None:
    layout = v1()

    def interrupted(path: Path, value: str, hints: dict[int, str] | None = None) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cgroups, "_write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        Cgroup.create(layout, "c1", Limits(), parent="isobox")
    assert _dirs_under(layout.root) == []


# --- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", "a/b", "..", ".", ".hidden", "x\n", "a b", "a" * 256, "../etc"])
def test_invalid_names(v1: Callable[..., Layout], name: str) -> None:
    layout = v1()
    with pytest.raises(InvalidArgument):
        Cgroup.create(layout, name, Limits(), parent="isobox")
    assert _dirs_under(layout.root) == []


@pytest.mark.parametrize("parent", ["", "/", "a/../b", "..", "a/./b"])
def test_invalid_parents(v1: Callable[..., Layout], parent: str) -> None:
    with pytest.raises(InvalidArgument):
        Cgroup.create(v1(), "c1", Limits(), parent=parent)


@pytest.mark.parametrize(
    "limits",
    [Limits(memory=0), Limits(memory=-1), Limits(cpus=0), Limits(cpus=0.001), Limits(pids=0)],
)
def test_invalid_limits(v1: Callable[..., Layout], limits: Limits) -> None:
    layout = v1()
    with pytest.raises(InvalidArgument):
        Cgroup.create(layout, "c1", limits, parent="isobox")
    assert _dirs_under(layout.root) == []


@pytest.mark.parametrize(
    ("args"), [("x", 1, 3, "rwm"), ("c", 1, 3, ""), ("c", 1, 3, "rwx"), ("c", 1, 3, "rr"), ("c", -1, 3, "r")]
)
def test_invalid_device_rules(args: tuple[str, int, int, str]) -> None:
    with pytest.raises(InvalidArgument):
        DeviceRule(*args)


def test_device_rule_syntax() -> None:
    assert str(DeviceRule("c", 136, None, "rwm")) == "c 136:* rwm"
    assert str(DeviceRule("b", None, None, "m")) == "b *:* m"
    assert DeviceRule("a", None, None, "mwr").allows_everything


# --- processes, stats, oom -----------------------------------------------------------------------


def test_join_and_pids(v1: Callable[..., Layout]) -> None:
    layout = v1()
    cg = Cgroup.create(layout, "c1", Limits(), parent="isobox")
    cg.join(4242)
    assert [p.read_text() for p in cg.procs_files()] == ["4242"] * 5
    (cg.paths[0] / "cgroup.procs").write_text("4242\n4243\n")
    assert cg.pids() == [4242, 4243]


def test_stats_and_oom_v1(v1: Callable[..., Layout]) -> None:
    layout = v1()
    cg = Cgroup.create(layout, "c1", Limits(memory=64 << 20, pids=16), parent="isobox")
    mem = layout.root / "memory/isobox/c1"
    (mem / "memory.usage_in_bytes").write_text("10485760\n")
    (mem / "memory.stat").write_text("cache 4096\ninactive_file 1\ntotal_inactive_file 2097152\n")
    (mem / "memory.max_usage_in_bytes").write_text("20971520\n")
    (layout.root / "cpuacct/isobox/c1/cpuacct.usage").write_text("123456789\n")
    (layout.root / "pids/isobox/c1/pids.current").write_text("3\n")
    assert cg.stats() == {
        "memory_usage": 8 << 20,
        "memory_limit": 64 << 20,
        "memory_max_usage": 20 << 20,
        "cpu_usage_ns": 123456789,
        "pids_current": 3,
        "pids_limit": 16,
    }
    assert not cg.oom_killed()
    (mem / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 1\n")
    assert cg.oom_killed()
    (mem / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\n")  # kernel < 4.13
    assert not cg.oom_killed()


def test_stats_v1_unlimited(v1: Callable[..., Layout]) -> None:
    cg = Cgroup.create(v1(), "c1", Limits(), parent="isobox")
    stats = cg.stats()
    assert stats["memory_limit"] is None and stats["pids_limit"] is None


def test_stats_and_oom_v2(v2: Callable[..., Layout]) -> None:
    layout = v2()
    cg = Cgroup.create(layout, "c1", Limits(memory=64 << 20), parent="isobox")
    leaf = cg.paths[0]
    (leaf / "memory.current").write_text("10485760\n")
    (leaf / "memory.stat").write_text("anon 8388608\nfile 2097152\ninactive_file 2097152\n")
    (leaf / "memory.peak").write_text("20971520\n")
    (leaf / "cpu.stat").write_text("usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n")
    (leaf / "pids.current").write_text("2\n")
    assert cg.stats() == {
        "memory_usage": 8 << 20,
        "memory_limit": 64 << 20,
        "memory_max_usage": 20 << 20,
        "cpu_usage_ns": 1_500_000,
        "pids_current": 2,
        "pids_limit": None,
    }
    assert not cg.oom_killed()
    (leaf / "memory.events").write_text("low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n")
    assert cg.oom_killed()


def test_stats_v2_without_controllers(v2: Callable[..., Layout]) -> None:
    """The hybrid's empty cgroup2: no memory/pids files, core accounting only."""
    layout = v2(controllers="")
    cg = Cgroup.create(layout, "c1", Limits(devices=ALLOW_ALL_DEVICES), parent="isobox")
    (cg.paths[0] / "cgroup.procs").write_text("7\n8\n")
    assert cg.stats() == {
        "memory_usage": 0,
        "memory_limit": None,
        "memory_max_usage": None,
        "cpu_usage_ns": 0,
        "pids_current": 2,
        "pids_limit": None,
    }
    assert not cg.oom_killed()


def test_kill_all_v2_uses_cgroup_kill(v2: Callable[..., Layout], writes: list[tuple[str, str]]) -> None:
    cg = Cgroup.create(v2(), "c1", Limits(), parent="isobox")
    writes.clear()
    cg.kill_all()
    assert writes == [("cgroup.kill", "1")]


def test_kill_all_v1_freezes_signals_and_thaws(
    v1: Callable[..., Layout], writes: list[tuple[str, str]]
) -> None:
    cg = Cgroup.create(v1(), "c1", Limits(), parent="isobox")
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        (cg.paths[0] / "cgroup.procs").write_text(f"{sleeper.pid}\n")
        writes.clear()
        cg.kill_all()
        assert sleeper.wait(timeout=5) == -signal.SIGKILL
    finally:
        sleeper.kill()
        sleeper.wait()
    assert writes == [("freezer.state", "FROZEN"), ("freezer.state", "THAWED")]
    cg.kill_all()  # the pid is gone now: no error


# --- open, destroy, leftovers --------------------------------------------------------------------


def test_open_readopts_existing(v1: Callable[..., Layout]) -> None:
    layout = v1()
    Cgroup.create(layout, "c1", Limits(memory=1 << 20, pids=9), parent="isobox")
    cg = Cgroup.open(layout, "c1", parent="isobox")
    assert len(cg.paths) == 5
    assert cg.applied["memory.limit_in_bytes"] == str(1 << 20)
    assert cg.applied["pids.max"] == "9"
    with pytest.raises(NotFound):
        Cgroup.open(layout, "c2", parent="isobox")
    shutil.rmtree(layout.root / "freezer/isobox/c1")
    assert len(Cgroup.open(layout, "c1", parent="isobox").paths) == 4


def test_open_v2(v2: Callable[..., Layout]) -> None:
    layout = v2()
    Cgroup.create(layout, "c1", Limits(cpus=2), parent="isobox")
    cg = Cgroup.open(layout, "c1", parent="isobox")
    assert cg.paths == [layout.root / "isobox/c1"]
    assert cg.applied["cpu.max"] == "200000 100000"


@pytest.mark.parametrize("version", [1, 2])
def test_destroy_is_idempotent_and_leftovers(
    v1: Callable[..., Layout], v2: Callable[..., Layout], version: int
) -> None:
    layout = v1() if version == 1 else v2()
    assert leftovers(layout, "isobox") == []
    a = Cgroup.create(layout, "a", Limits(), parent="isobox")
    Cgroup.create(layout, "b", Limits(), parent="isobox")
    expected = sorted(h / "isobox" / n for h in layout.hierarchies(cgroups.V1_CONTROLLERS) for n in "ab")
    assert leftovers(layout, "isobox") == expected
    a.destroy()
    a.destroy()
    assert all(path.name == "b" for path in leftovers(layout, "isobox"))
    Cgroup.open(layout, "b", parent="isobox").destroy()
    assert leftovers(layout, "isobox") == []
    # Parents are shared and stay.
    assert (layout.hierarchies()[0] / "isobox").is_dir()


def test_destroy_busy_times_out(v2: Callable[..., Layout]) -> None:
    cg = Cgroup.create(v2(), "c1", Limits(), parent="isobox")
    (cg.paths[0] / "cgroup.procs").write_text("4242\n")
    with pytest.raises(RuntimeFailure, match=r"\[EBUSY\]") as info:
        cg.destroy(timeout=0.01)
    assert info.value.hint and "processes" in info.value.hint
    (cg.paths[0] / "cgroup.procs").write_text("")
    cg.destroy()
    assert not cg.paths[0].exists()


def test_v2_enabling_in_a_busy_parent_explains_itself(
    v2: Callable[..., Layout], monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = v2()
    real_write = os.write

    def write(fd: int, data: bytes) -> int:
        if os.readlink(f"/proc/self/fd/{fd}").endswith("/busy/cgroup.subtree_control"):
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))
        return real_write(fd, data)

    monkeypatch.setattr(cgroups.os, "write", write)
    with pytest.raises(RuntimeFailure, match=r"busy/cgroup.subtree_control.*\[EBUSY\]") as info:
        Cgroup.create(layout, "c1", Limits(), parent="busy")
    assert info.value.hint and "no internal processes" in info.value.hint
    assert _dirs_under(layout.root) == []


def test_v1_without_usable_hierarchies(v1: Callable[..., Layout]) -> None:
    full = v1()
    layout = Layout(1, full.root, {"cpuset": full.root / "cpuset"}, frozenset({"cpuset"}))
    with pytest.raises(RuntimeFailure, match="none of the cgroup v1 controllers"):
        Cgroup.create(layout, "c1", Limits(devices=ALLOW_ALL_DEVICES), parent="isobox")
    with pytest.raises(RuntimeFailure, match="devices not available"):
        Cgroup.create(layout, "c1", Limits(), parent="isobox")
    assert _dirs_under(full.root) == []


@pytest.mark.parametrize("version", [1, 2])
def test_str_paths_in_str_paths_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: int) -> None:
    """detect() given str paths (the OCI runtime's way: no pathlib import) gives the same cgroup
    with str paths throughout."""
    root, mountinfo = make_v1_tree(tmp_path) if version == 1 else make_v2_tree(tmp_path)
    kernel = FakeKernel(root, version) if version == 1 else FakeKernel(root, 2, {"v2": {}})
    monkeypatch.setattr(cgroups, "_mkdir", kernel.mkdir)
    monkeypatch.setattr(cgroups, "_rmdir", kernel.rmdir)
    with_path, with_str = detect(root, mountinfo), detect(str(root), str(mountinfo))
    assert (with_str.version, with_str.root, with_str.controllers) == (
        with_path.version, str(with_path.root), with_path.controllers)
    assert with_str.mounts == {name: str(path) for name, path in with_path.mounts.items()}
    cg = Cgroup.create(with_str, "c1", Limits(memory=1 << 20, pids=5), parent="isobox")
    files = [*cg.paths, *cg.procs_files(), *cg.self_join_files(), cg.oom_events_file()]
    assert all(type(path) is str for path in files)
    same = Cgroup.open(with_path, "c1", parent="isobox")
    assert [str(path) for path in same.paths] == cg.paths
    assert same.applied["pids.max"] == cg.applied["pids.max"] == "5"
    assert leftovers(with_str, "isobox") == [str(path) for path in leftovers(with_path, "isobox")]
    cg.destroy()
    assert leftovers(with_path, "isobox") == []
