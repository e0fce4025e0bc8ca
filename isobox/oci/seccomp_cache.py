"""Compiled seccomp programs kept on disk, named by a hash of everything they are compiled from.

Podman puts its whole seccomp profile into every config.json.  Compiling it (importing isobox's
compiler, then libseccomp) takes ~50 ms on the build machine, on every ``create`` and ``exec``;
reading the program back takes a fraction of a millisecond.  The program depends on the profile,
the capabilities it is compiled for, the kernel (``minKernel`` rules), the architecture, the
libseccomp version and isobox's compiler (seccomp.py, seccomp_profile.py): a SHA-256 over all of
them names the file, so a change to any of them means a new file, never a stale program.

The directory is the runtime's user's (root's) and 0700; a file is only used if it is that
user's too, regular, not writable by others and a well-formed program.  Anything that goes wrong
with the cache means compiling, as without it.
"""

from __future__ import annotations

import os

from isobox.oci import jsonio

try:
    from _sha256 import sha256  # hashlib's own C code; hashlib itself loads OpenSSL, ~4 ms
except ImportError:
    from hashlib import sha256

CACHE_DIR = "/var/cache/isobox/seccomp"
FORMAT = b"isobox seccomp bpf 1"
_BPF_MAX_BYTES = 4096 * 8  # BPF_MAXINSNS instructions of 8 bytes


def compile_bpf(profile: dict[str, object], caps: tuple[str, ...]) -> bytes:
    """``seccomp.compile_bpf(seccomp.profile_from_json(profile), caps)``, from the cache if there."""
    path = None
    try:
        path = os.path.join(CACHE_DIR, _key(profile, caps) + ".bpf")
        bpf = _read(path)
        if bpf is not None:
            return bpf
    except OSError:
        pass
    from isobox.runtimes.container import seccomp  # noqa: PLC0415 - only on a miss

    bpf = seccomp.compile_bpf(seccomp.profile_from_json(profile), caps)
    if path is not None:
        _write(path, bpf)
    return bpf


def _key(profile: dict[str, object], caps: tuple[str, ...]) -> str:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sources = [os.path.join(here, "runtimes", "container", name) for name in ("seccomp.py", "seccomp_profile.py")]
    uname = os.uname()
    parts = [
        FORMAT, jsonio.dumps(profile).encode(), "\n".join(sorted(caps)).encode(),
        f"{uname.release} {uname.version} {uname.machine}".encode(),
        repr(_libseccomp_version()).encode(),
        *(repr((st.st_size, st.st_mtime_ns)).encode() for st in map(os.stat, sources)),
    ]
    return sha256(b"\0".join(parts)).hexdigest()


def _libseccomp_version() -> tuple[int, int, int]:
    import ctypes  # noqa: PLC0415 - loaded anyway by create and exec (syscalls.py)

    lib = ctypes.CDLL("libseccomp.so.2")
    lib.seccomp_version.restype = ctypes.POINTER(ctypes.c_uint * 3)
    major, minor, micro = lib.seccomp_version().contents
    return major, minor, micro


def _trusted_dir() -> bool:
    st = os.stat(CACHE_DIR)
    return st.st_uid == os.geteuid() and not st.st_mode & 0o077


def _read(path: str) -> bytes | None:
    if not _trusted_dir():
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() or (st.st_mode & 0o170000) != 0o100000 or st.st_mode & 0o022:
            return None
        if not 0 < st.st_size <= _BPF_MAX_BYTES or st.st_size % 8:
            return None
        data = os.read(fd, _BPF_MAX_BYTES + 1)
        return data if len(data) == st.st_size else None
    finally:
        os.close(fd)


def _write(path: str, bpf: bytes) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(CACHE_DIR, mode=0o700, exist_ok=True)
        if not _trusted_dir():
            return
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            if os.write(fd, bpf) != len(bpf):
                raise OSError("short write")
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except OSError:
        try:  # noqa: SIM105 - (no contextlib on this start-up path)
            os.unlink(tmp)
        except OSError:
            pass
