"""Bad input: one clear line, exit 125, nothing left behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import Isobox
from tests.integration.helpers import (
    assert_daemon_reaped,
    assert_gone,
    cgroup_dirs,
    container_ids,
    processes_under,
)

pytestmark = pytest.mark.root


def refused(box: Isobox, *args: str) -> str:
    before = container_ids(box)
    proc = box.cli(*args)
    assert proc.returncode == 125, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stderr.strip(), "no error message"
    assert len(proc.stderr.strip().splitlines()) <= 2  # the error, and at most one hint line
    assert container_ids(box) == before, "a container was left behind"
    return proc.stderr


def test_unknown_image(isobox: Isobox) -> None:
    assert "no-such-image" in refused(isobox, "run", "--rm", "no-such-image", "true")


def test_bad_memory(isobox: Isobox) -> None:
    assert "memory" in refused(isobox, "run", "--rm", "--memory", "abc", "busybox", "true").lower()


def test_empty_command(isobox: Isobox) -> None:
    refused(isobox, "run", "--rm", "busybox", "")


def test_name_clash(isobox: Isobox) -> None:
    cid = isobox.cli("create", "--name", "taken", "busybox", "true", check=True).stdout.strip()
    try:
        assert "already in use" in refused(isobox, "run", "--name", "taken", "busybox", "true")
    finally:
        isobox.cli("rm", cid, check=True)


def test_missing_volume_source(isobox: Isobox) -> None:
    assert "/no/such/dir" in refused(isobox, "run", "--rm", "-v", "/no/such/dir:/data", "busybox", "true")


def test_unknown_flag_and_capability(isobox: Isobox) -> None:
    refused(isobox, "run", "--no-such-flag", "busybox", "true")
    assert "capability" in refused(isobox, "run", "--rm", "--cap-add", "FLY", "busybox", "true").lower()


def test_unknown_container(isobox: Isobox) -> None:
    assert "no such container" in refused(isobox, "stop", "ghost").lower()


def test_failed_start_leaves_nothing(isobox: Isobox, tmp_path) -> None:
    # A file where the image has a directory: the bind mount fails inside the new namespace,
    # after the cgroup and directories were made.  All of it must be undone.
    source = tmp_path / "file"
    source.write_text("x")
    before_cgroups = cgroup_dirs(isobox)
    refused(isobox, "run", "--rm", "-v", f"{source}:/etc", "busybox", "true")
    assert cgroup_dirs(isobox) == before_cgroups
    run_dirs = list((isobox.run_root / "c").iterdir()) if (isobox.run_root / "c").exists() else []
    data_dirs = list((isobox.root / "containers").iterdir()) if (isobox.root / "containers").exists() else []
    live = container_ids(isobox)
    assert all(any(cid.startswith(d.name) for cid in live) for d in run_dirs)
    assert all(d.name in live for d in data_dirs)


def test_a_cgroup_the_monitor_cannot_make_fails_the_start_cleanly(isobox: Isobox) -> None:
    # The monitor makes the cgroup while the init builds the root (launch._container_monitor):
    # a failure there must stop that init and undo both sides, as a failure in the daemon does.
    cid = isobox.cli("create", "busybox", "true", check=True).stdout.strip()
    hierarchy = Path("/sys/fs/cgroup/pids")
    clash = (hierarchy if hierarchy.is_dir() else Path("/sys/fs/cgroup")) / isobox.cgroup_parent / cid
    clash.mkdir(parents=True)  # taken: the monitor's mkdir meets EEXIST
    proc = isobox.cli("start", cid)
    assert proc.returncode == 125, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert lines and "cgroup" in lines[0] and len(lines) <= 2, proc.stderr
    assert cgroup_dirs(isobox, cid) == [], "cgroup left behind"
    assert processes_under(isobox.run_root / "c" / cid[:16]) == [], "the init outlived the failed start"
    assert_daemon_reaped(isobox)
    state = json.loads(isobox.cli("inspect", cid, check=True).stdout)[0]["State"]
    assert (state["Status"], state["Pid"]) == ("created", 0)  # as Docker leaves a failed start
    isobox.cli("rm", cid, check=True)
    assert_gone(isobox, cid)
