"""The way back to the host's network namespace, for a daemon started with ``ISOBOX_NETNS``.

Such a daemon (tests, benchmarks) runs its workloads' networks in a namespace of its own, but
downloads (mmdebstrap fetching Debian packages) must still go out through the host's.
"""

from __future__ import annotations

import os

_host_fd: int | None = None


def enter(path: str) -> None:
    """Move this (single-threaded) process into the namespace at ``path``, keeping a handle
    on the one it leaves."""
    global _host_fd
    from isobox.runtimes.container import syscalls as sc

    host = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        sc.setns(target, sc.CLONE_NEWNET)
    except BaseException:
        os.close(host)
        raise
    finally:
        os.close(target)
    _host_fd = host


def wrap(argv: list[str]) -> list[str]:
    """``argv`` to run in the host's network namespace (unchanged when we never left it)."""
    if _host_fd is None:
        return argv
    return ["nsenter", f"--net=/proc/{os.getpid()}/fd/{_host_fd}", "--", *argv]
