"""The fully resolved description of one container process, built by the daemon before fork.

The child reads it from memory it inherited through fork(2): nothing is serialised on the
start path.  Everything a user could get wrong has been validated before this exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from isobox.spec import Mount

# runc's masked paths plus Podman's additions (DESIGN.md "Security defaults").
MASKED_PATHS = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/devices/virtual/powercap",
    "/sys/firmware",
)
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class ProcessConfig:
    """What is executed, and with which identity and restrictions (shared by run and exec)."""

    argv: list[str]
    env: dict[str, str]
    cwd: str = "/"
    user: str = ""  # "" = root; NAME|UID[:GROUP|GID], resolved inside the container
    caps: list[str] = field(default_factory=list)
    seccomp_bpf: bytes | None = None
    no_new_privs: bool = True
    tty: bool = False
    interactive: bool = False


@dataclass
class ContainerConfig:
    id: str
    lowerdirs: list[str]  # overlayfs order: topmost first
    upperdir: str
    workdir: str
    rootfs: str  # the mount point of the overlay on the host side
    hostname: str
    process: ProcessConfig
    cgroup_procs: list[str]
    mounts: list[Mount] = field(default_factory=list)
    read_only: bool = False
    init: bool = False
    masked_paths: tuple[str, ...] = MASKED_PATHS
    readonly_paths: tuple[str, ...] = READONLY_PATHS
