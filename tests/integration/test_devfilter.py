"""The cgroup v2 device filter (an eBPF program), tested for real on a cgroup2 hierarchy.

This host is cgroup v1 hybrid, but its (controller-less) cgroup2 at /sys/fs/cgroup/unified
still runs BPF device programs, so the v2 path is exercised here, not only on a fake tree.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

import pytest

from isobox.runtimes.container import cgroups, devfilter

pytestmark = pytest.mark.root

UNIFIED = Path("/sys/fs/cgroup/unified")


def _cgroup2_root() -> Path:
    for candidate in (Path("/sys/fs/cgroup"), UNIFIED):
        if candidate.is_dir() and devfilter.is_cgroup2(str(candidate)):
            return candidate
    pytest.skip("no cgroup2 hierarchy mounted on this host")


def _try_in_cgroup(leaf: Path, attempts: list[tuple[str, int]]) -> list[str]:
    """Fork a child into ``leaf`` that opens each path; return "ok" or the error per path."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            (leaf / "cgroup.procs").write_text("0")
            results = []
            for path, flags in attempts:
                try:
                    os.close(os.open(path, flags))
                    results.append("ok")
                except OSError as exc:
                    results.append(exc.strerror or "error")
            os.write(write_end, "\n".join(results).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    with os.fdopen(read_end) as fh:
        return fh.read().split("\n")


def test_default_rules_allow_minimal_dev_only(tmp_path: Path) -> None:
    root = _cgroup2_root()
    leaf = root / f"isobox-devtest-{secrets.token_hex(4)}"
    leaf.mkdir()
    try:
        rules = [(r.kind, r.major, r.minor, r.access) for r in cgroups.DEFAULT_DEVICE_RULES]
        devfilter.attach(str(leaf), devfilter.program(rules))
        os.mknod(tmp_path / "full", 0o600 | stat.S_IFCHR, os.makedev(1, 7))
        os.mknod(tmp_path / "disk", 0o600 | stat.S_IFBLK, os.makedev(7, 0))
        os.mknod(tmp_path / "mem", 0o600 | stat.S_IFCHR, os.makedev(1, 1))
        results = _try_in_cgroup(leaf, [
            ("/dev/null", os.O_RDWR),
            ("/dev/urandom", os.O_RDONLY),
            (str(tmp_path / "full"), os.O_RDONLY),
            (str(tmp_path / "disk"), os.O_RDONLY),
            (str(tmp_path / "mem"), os.O_RDONLY),
        ])
        assert results == ["ok", "ok", "ok", "Operation not permitted", "Operation not permitted"]
    finally:
        leaf.rmdir()


def test_access_bits_are_enforced(tmp_path: Path) -> None:
    root = _cgroup2_root()
    leaf = root / f"isobox-devtest-{secrets.token_hex(4)}"
    leaf.mkdir()
    try:
        devfilter.attach(str(leaf), devfilter.program([("c", 1, 3, "r")]))  # /dev/null read-only
        results = _try_in_cgroup(leaf, [("/dev/null", os.O_RDONLY), ("/dev/null", os.O_WRONLY)])
        assert results == ["ok", "Operation not permitted"]
    finally:
        leaf.rmdir()


def test_program_shape() -> None:
    code = devfilter.program([("c", 1, 3, "rwm"), ("a", None, None, "m")])
    assert len(code) % 8 == 0
    # prologue (7) + rule 1: 3 checks + 2 + 1 + 2 + rule 2: 0 checks + 5 + epilogue (2)
    assert len(code) // 8 == 7 + 8 + 5 + 2
