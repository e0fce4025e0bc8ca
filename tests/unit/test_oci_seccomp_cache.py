"""isobox-runtime's cache of compiled seccomp programs (isobox/oci/seccomp_cache.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from isobox.errors import InvalidArgument
from isobox.oci import seccomp_cache
from isobox.runtimes.container import seccomp

PROFILE: dict[str, Any] = {
    "defaultAction": "SCMP_ACT_ERRNO",
    "architectures": ["SCMP_ARCH_X86_64"],
    "syscalls": [
        {"names": ["read", "write", "exit_group"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_PTRACE"]}},
    ],
}
CAPS = ("CAP_KILL", "CAP_CHOWN")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "seccomp"
    monkeypatch.setattr(seccomp_cache, "CACHE_DIR", str(directory))
    return directory


def compiled(profile: dict[str, Any], caps: tuple[str, ...]) -> bytes:
    return seccomp.compile_bpf(seccomp.profile_from_json(profile), caps)


def test_a_miss_compiles_and_stores_a_hit_reads(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bpf = seccomp_cache.compile_bpf(PROFILE, CAPS)
    assert bpf == compiled(PROFILE, CAPS)
    files = list(cache.iterdir())
    assert len(files) == 1 and files[0].read_bytes() == bpf
    assert cache.stat().st_mode & 0o777 == 0o700 and files[0].stat().st_mode & 0o777 == 0o600

    def no_compiling(*_args: object) -> bytes:
        raise AssertionError("compiled on a hit")

    monkeypatch.setattr(seccomp, "compile_bpf", no_compiling)
    assert seccomp_cache.compile_bpf(PROFILE, CAPS) == bpf


def test_what_the_program_depends_on_names_another_file(cache: Path) -> None:
    seccomp_cache.compile_bpf(PROFILE, CAPS)
    with_ptrace = seccomp_cache.compile_bpf(PROFILE, (*CAPS, "CAP_SYS_PTRACE"))
    assert with_ptrace == compiled(PROFILE, (*CAPS, "CAP_SYS_PTRACE")) != compiled(PROFILE, CAPS)
    other = {**PROFILE, "defaultAction": "SCMP_ACT_KILL"}
    assert seccomp_cache.compile_bpf(other, CAPS) == compiled(other, CAPS)
    assert len(list(cache.iterdir())) == 3


@pytest.mark.parametrize("spoil", ["truncated", "empty", "symlink", "group-writable"])
def test_a_spoilt_file_is_not_used(cache: Path, spoil: str) -> None:
    bpf = seccomp_cache.compile_bpf(PROFILE, CAPS)
    (path,) = cache.iterdir()
    other = compiled(PROFILE, (*CAPS, "CAP_SYS_PTRACE"))  # a valid program, but not this one
    assert other != bpf
    if spoil == "truncated":
        path.write_bytes(bpf[:-3])
    elif spoil == "empty":
        path.write_bytes(b"")
    elif spoil == "symlink":
        path.unlink()
        (cache / "elsewhere").write_bytes(other)
        path.symlink_to(cache / "elsewhere")
    else:
        path.write_bytes(other)
        path.chmod(0o620)
    assert seccomp_cache.compile_bpf(PROFILE, CAPS) == bpf
    assert path.read_bytes() == bpf and not path.is_symlink(), "the file is written again"


def test_a_directory_others_can_write_is_not_used(cache: Path) -> None:
    cache.mkdir(mode=0o700)
    cache.chmod(0o777)
    bpf = seccomp_cache.compile_bpf(PROFILE, CAPS)
    assert bpf == compiled(PROFILE, CAPS) and list(cache.iterdir()) == []


def test_a_bad_profile_is_refused_as_without_the_cache(cache: Path) -> None:
    with pytest.raises(InvalidArgument):
        seccomp_cache.compile_bpf({"defaultAction": "SCMP_ACT_BOGUS"}, CAPS)
    assert not cache.exists() or list(cache.iterdir()) == []


def test_an_unwritable_cache_still_compiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setattr(seccomp_cache, "CACHE_DIR", os.path.join(blocker, "seccomp"))
    assert seccomp_cache.compile_bpf(PROFILE, CAPS) == compiled(PROFILE, CAPS)
