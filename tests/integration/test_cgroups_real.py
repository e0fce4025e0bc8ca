"""Real cgroups: limits enforced by the kernel (v1 on the build machines, v2 wherever the host has it).

Each test works under its own parent (``isobox-test-<uuid>``) and removes it at the end. Children
are forked from the test process; they join the cgroup themselves (``join()`` writes 0, "the
writer") and always leave through ``os._exit``.
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from isobox.errors import RuntimeFailure
from isobox.runtimes.container.cgroups import ALLOW_ALL_DEVICES, Cgroup, Layout, Limits, detect, leftovers

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates cgroups under /sys/fs/cgroup"),
]

MiB = 1 << 20
LIMITS = Limits(memory=32 * MiB, pids=16, cpus=0.5)
HYBRID_UNIFIED = Path("/sys/fs/cgroup/unified")


def _cleanup(layout: Layout, parent: str) -> None:
    """Kill and remove whatever a failed test left, then the parent itself."""
    for path in leftovers(layout, parent):
        try:
            for pid in (path / "cgroup.procs").read_text().split():
                os.kill(int(pid), signal.SIGKILL)
        except (OSError, ValueError):
            pass
    deadline = time.monotonic() + 5
    for path in leftovers(layout, parent) + [h / parent for h in layout.hierarchies()]:
        while path.exists():
            try:
                path.rmdir()
            except OSError as exc:
                if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)


@pytest.fixture
def layout() -> Layout:
    return detect()


@pytest.fixture
def parent(layout: Layout) -> Iterator[str]:
    name = f"isobox-test-{uuid.uuid4().hex[:12]}"
    yield name
    _cleanup(layout, name)
    assert not any((h / name).exists() for h in layout.hierarchies())


def fork_into(cg: Cgroup, body: Callable[[int], None]) -> tuple[int, int]:
    """Fork a child that joins ``cg`` and runs ``body(write_fd)``; returns (pid, read_fd)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 0
        try:
            os.close(read_fd)
            cg.join()
            os.write(write_fd, b"joined\n")
            body(write_fd)
        except BaseException:
            code = 70
        finally:
            os._exit(code)
    os.close(write_fd)
    return pid, read_fd


def read_line(fd: int, timeout: float = 10.0) -> str:
    data = b""
    deadline = time.monotonic() + timeout
    while not data.endswith(b"\n"):
        assert time.monotonic() < deadline, f"child said only {data!r}"
        chunk = os.read(fd, 1)
        if not chunk:
            break
        data += chunk
    return data.decode().strip()


def test_memory_limit_ooms(layout: Layout, parent: str) -> None:
    cg = Cgroup.create(layout, "oom", LIMITS, parent=parent)
    assert cg.stats()["memory_limit"] == 32 * MiB
    assert not cg.oom_killed()

    def allocate(out: int) -> None:
        block = bytearray(100 * MiB)
        for offset in range(0, len(block), 4096):  # touch every page: calloc'd memory is lazily mapped
            block[offset] = 1
        os.write(out, b"survived\n")

    pid, out = fork_into(cg, allocate)
    assert read_line(out) == "joined"
    _, status = os.waitpid(pid, 0)
    rest = os.read(out, 100)
    os.close(out)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (status, rest)
    assert b"survived" not in rest
    assert cg.oom_killed()
    stats = cg.stats()
    assert stats["memory_max_usage"] is None or 16 * MiB < stats["memory_max_usage"] <= 33 * MiB
    cg.destroy()
    assert leftovers(layout, parent) == []


def test_pids_limit_stops_fork_bomb(layout: Layout, parent: str) -> None:
    cg = Cgroup.create(layout, "bomb", LIMITS, parent=parent)

    def bomb(out: int) -> None:
        forked, failure = 0, 0
        for _ in range(64):
            try:
                child = os.fork()
            except OSError as exc:
                failure = exc.errno or -1
                break
            if child == 0:
                os.close(out)
                time.sleep(60)
                os._exit(0)
            forked += 1
        os.write(out, f"{forked} {failure}\n".encode())
        time.sleep(60)

    pid, out = fork_into(cg, bomb)
    try:
        assert read_line(out) == "joined"
        forked, failure = map(int, read_line(out).split())
        assert failure == errno.EAGAIN
        assert forked == 15  # 16 with the child itself
        stats = cg.stats()
        assert stats["pids_current"] == 16 and stats["pids_limit"] == 16
        assert len(cg.pids()) == 16
        cg.kill_all()
    finally:
        os.close(out)
        _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    cg.destroy()  # retries while the reparented grandchildren finish dying
    assert leftovers(layout, parent) == []


def test_cpu_quota_and_usage(layout: Layout, parent: str) -> None:
    cg = Cgroup.create(layout, "cpu", LIMITS, parent=parent)
    spin = 1.0

    def burn(out: int) -> None:
        end = time.monotonic() + spin
        while time.monotonic() < end:
            pass

    pid, out = fork_into(cg, burn)
    assert read_line(out) == "joined"
    _, status = os.waitpid(pid, 0)
    os.close(out)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    used = cg.stats()["cpu_usage_ns"]
    assert used is not None
    # Half a CPU for a second of wall time, plus at most one 100 ms period of slack.
    assert 0.05e9 < used < 0.65e9, used
    cg.destroy()
    assert leftovers(layout, parent) == []


def test_devices_minimal_dev_only(layout: Layout, parent: str, tmp_path: Path) -> None:
    # v1: the devices controller; v2: the eBPF device filter (devfilter.py). Same rules, same result.
    cg = Cgroup.create(layout, "dev", LIMITS, parent=parent)

    def make_and_open(out: int) -> None:
        # 'c *:* m' lets any node be made; only the minimal /dev (null here) may be opened, not kmsg.
        results = []
        for name, minor in (("null", 3), ("kmsg", 11)):
            node = tmp_path / name
            try:
                os.mknod(node, stat.S_IFCHR | 0o600, os.makedev(1, minor))
                os.close(os.open(node, os.O_RDONLY))
                results.append("ok")
            except OSError as exc:
                results.append(errno.errorcode[exc.errno or 0])
        os.write(out, (" ".join(results) + "\n").encode())

    pid, out = fork_into(cg, make_and_open)
    assert read_line(out) == "joined"
    assert read_line(out) == "ok EPERM"
    assert (tmp_path / "kmsg").is_char_device()
    os.close(out)
    os.waitpid(pid, 0)
    cg.destroy()


def test_failure_leaves_nothing(layout: Layout, parent: str) -> None:
    with pytest.raises(RuntimeFailure, match=r"\[EINVAL\]"):
        Cgroup.create(layout, "huge", Limits(cpus=1e9), parent=parent)  # quota beyond the kernel's bound
    assert leftovers(layout, parent) == []
    assert not any((h / parent).exists() for h in layout.hierarchies())


def test_create_join_destroy_and_reopen(layout: Layout, parent: str) -> None:
    cg = Cgroup.create(layout, "c1", LIMITS, parent=parent)
    assert all(path.is_dir() for path in cg.paths)
    pid, out = fork_into(cg, lambda out: time.sleep(60))
    assert read_line(out) == "joined"
    assert cg.pids() == [pid]
    again = Cgroup.open(layout, "c1", parent=parent)
    assert again.paths == cg.paths and again.pids() == [pid]
    again.kill_all()
    os.close(out)
    os.waitpid(pid, 0)
    again.destroy()
    cg.destroy()
    assert leftovers(layout, parent) == []


@pytest.mark.skipif(
    not (HYBRID_UNIFIED / "cgroup.procs").exists(), reason="no hybrid cgroup2 at /sys/fs/cgroup/unified"
)
def test_v2_mechanics_on_hybrid_unified(parent: str) -> None:
    """A hybrid host's cgroup2 has no controllers, but mkdir/join/cgroup.kill/rmdir are real v2."""
    layout = detect(HYBRID_UNIFIED)
    assert layout.version == 2
    try:
        cg = Cgroup.create(layout, "c1", Limits(devices=ALLOW_ALL_DEVICES), parent=parent)
        pid, out = fork_into(cg, lambda out: time.sleep(60))
        assert read_line(out) == "joined"
        assert cg.pids() == [pid]
        assert cg.stats()["pids_current"] == 1
        cg.kill_all()
        os.close(out)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        cg.destroy()
        assert leftovers(layout, parent) == []
    finally:
        _cleanup(layout, parent)
