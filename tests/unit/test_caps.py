"""Capabilities: Docker's --cap-add/--cap-drop arithmetic, and applying a set in a forked child."""

from __future__ import annotations

import json
import os
import traceback
from collections.abc import Callable

import pytest

from isobox.errors import InvalidArgument
from isobox.runtimes.container import caps


def test_names_cover_the_kernel_header() -> None:
    assert caps.CAPS["CHOWN"] == 0
    assert caps.CAPS["CHECKPOINT_RESTORE"] == 40
    assert sorted(caps.CAPS.values()) == list(range(41))
    assert all(name.isupper() and not name.startswith("CAP_") for name in caps.CAPS)
    assert len(caps.DEFAULT_CAPS) == 11 and set(caps.DEFAULT_CAPS) <= set(caps.CAPS)


def test_resolve_defaults() -> None:
    assert caps.resolve([], []) == sorted(caps.DEFAULT_CAPS)


def test_resolve_add_and_drop_any_spelling() -> None:
    got = caps.resolve(["net_admin", "CAP_SYS_PTRACE"], ["cap_chown", "Kill"])
    assert got == sorted((set(caps.DEFAULT_CAPS) - {"CHOWN", "KILL"}) | {"NET_ADMIN", "SYS_PTRACE"})


def test_resolve_drop_all_keeps_only_the_added() -> None:
    assert caps.resolve(["NET_RAW"], ["ALL"]) == ["NET_RAW"]
    assert caps.resolve([], ["all"]) == []


def test_resolve_add_all() -> None:
    everything = caps.all_caps()
    assert caps.resolve(["ALL"], []) == sorted(everything)
    assert caps.resolve(["all"], ["SYS_ADMIN"]) == sorted(set(everything) - {"SYS_ADMIN"})
    assert all(caps.CAPS[name] <= caps.last_cap() for name in everything)


def test_resolve_added_and_dropped_is_kept() -> None:
    # Docker applies the drops to the base set first, then the adds.
    assert "NET_ADMIN" in caps.resolve(["NET_ADMIN"], ["NET_ADMIN"])


def test_resolve_other_base() -> None:
    assert caps.resolve(["KILL"], ["CHOWN"], base=["CHOWN", "MKNOD"]) == ["KILL", "MKNOD"]


@pytest.mark.parametrize("name", ["cap_foo", "SYS_EVERYTHING", ""])
def test_resolve_unknown_name(name: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        caps.resolve([name], [])
    assert exc.value.message == f'unknown capability "{name}"'
    with pytest.raises(InvalidArgument):
        caps.resolve([], [name])


def test_mask() -> None:
    assert caps.mask([]) == 0
    assert caps.mask(["CHOWN", "cap_kill"]) == 1 | 1 << 5
    assert caps.mask(["CHECKPOINT_RESTORE"]) == 1 << 40


def test_last_cap_matches_the_kernel() -> None:
    with open("/proc/sys/kernel/cap_last_cap") as f:
        assert caps.last_cap() == int(f.read())


def test_current_effective_parses_proc() -> None:
    eff, _, _ = caps.capget()
    assert caps.current_effective() == eff


# --- applying, in a forked child ---------------------------------------------------------------

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or caps.mask(caps.DEFAULT_CAPS) & ~caps.current_set("CapPrm") != 0,
    reason="needs root holding Podman's default capabilities",
)


def in_child(body: Callable[[], dict[str, int]]) -> dict[str, int]:
    """Run ``body`` in a forked child; return what it returned (or raise what it raised)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(read_end)
            result: dict[str, object] = {"ok": body()}
        except BaseException:
            result, code = {"error": traceback.format_exc()}, 1
        os.write(write_end, json.dumps(result).encode())
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    report = json.loads(data)
    assert "error" not in report, report.get("error")
    assert os.waitstatus_to_exitcode(status) == 0
    return report["ok"]


def cap_sets() -> dict[str, int]:
    return {field: caps.current_set(field) for field in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")}


@needs_root
def test_apply_as_root() -> None:
    def body() -> dict[str, int]:
        caps.keep_caps_across_setuid()
        os.setgroups([0])
        os.setgid(0)
        os.setuid(0)
        caps.apply(list(caps.DEFAULT_CAPS), root_user=True)
        return cap_sets()

    want = caps.mask(caps.DEFAULT_CAPS)
    assert in_child(body) == {"CapInh": 0, "CapPrm": want, "CapEff": want, "CapBnd": want, "CapAmb": 0}


@needs_root
def test_apply_as_other_user() -> None:
    # After setuid to a non-zero uid the effective set is empty: apply must raise it again to
    # drop the bounding set, then leave nothing permitted.
    def body() -> dict[str, int]:
        caps.keep_caps_across_setuid()
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
        caps.apply(["CHOWN", "NET_BIND_SERVICE"], root_user=False)
        return cap_sets()

    got = in_child(body)
    assert got == {
        "CapInh": 0,
        "CapPrm": 0,
        "CapEff": 0,
        "CapBnd": caps.mask(["CHOWN", "NET_BIND_SERVICE"]),
        "CapAmb": 0,
    }


@needs_root
def test_apply_nothing() -> None:
    def body() -> dict[str, int]:
        caps.drop_bounding([])  # what the runtime does before setuid; apply must cope
        caps.apply([], root_user=True)
        return cap_sets()

    assert in_child(body) == {"CapInh": 0, "CapPrm": 0, "CapEff": 0, "CapBnd": 0, "CapAmb": 0}


def test_a_pooled_inits_rehearsal_changes_nothing() -> None:
    """process.rehearse runs in every pooled init before its container is known: the
    capability sets, uid and environment it leaves must be the ones it found."""
    from isobox.runtimes.container.process import rehearse

    before = (caps.capget(), os.getuid(), os.getgid(), os.getgroups(), dict(os.environ))
    rehearse()
    assert (caps.capget(), os.getuid(), os.getgid(), os.getgroups(), dict(os.environ)) == before


def test_the_rest_of_a_pooled_inits_rehearsal_leaves_no_fd_and_no_filter() -> None:
    """launch._rehearse_init (the "ready" message, the seal's Python side) in a fork, as in a
    pooled init: no fd it opened stays open and no seccomp filter is loaded."""
    from isobox.runtimes.container import launch, seccomp
    from isobox.runtimes.container.config import ContainerConfig, ProcessConfig

    bpf = seccomp.compile_bpf(seccomp.default_profile(), caps.DEFAULT_CAPS)
    sample = ContainerConfig(id="x", lowerdirs=[], upperdir="", workdir="", rootfs="", hostname="h",
                             process=ProcessConfig(["/bin/true"], {}, seccomp_bpf=bpf), cgroup_procs=[])
    pid = os.fork()
    if pid == 0:  # (its own process: _reset_signals would take pytest's handlers away)
        code = 1
        try:
            fds = sorted(os.listdir("/proc/self/fd"))
            launch._rehearse_init(sample)
            with open("/proc/self/status") as fh:
                status = fh.read()
            seccomp_mode = next(line.split()[1] for line in status.splitlines() if line.startswith("Seccomp:"))
            code = 0 if sorted(os.listdir("/proc/self/fd")) == fds and seccomp_mode == "0" else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
