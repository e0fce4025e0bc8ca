"""The fully resolved description of one container process, built by the daemon before fork.

The child reads it from memory it inherited through fork(2): nothing is serialised on the
start path.  Everything a user could get wrong has been validated before this exists.
"""

from __future__ import annotations

# dataclasses' semantics without the import cost on isobox-runtime's start-up path (records.py)
from isobox.runtimes.container.records import dataclass, field

TYPE_CHECKING = False  # (not typing's: the OCI runtime imports this module on its start-up path)
if TYPE_CHECKING:
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


@dataclass(frozen=True)
class CapSets:
    """The five capability sets of an OCI ``process.capabilities`` (names without ``CAP_``)."""

    bounding: tuple[str, ...] = ()
    effective: tuple[str, ...] = ()
    permitted: tuple[str, ...] = ()
    inheritable: tuple[str, ...] = ()
    ambient: tuple[str, ...] = ()


@dataclass(frozen=True)
class MountSpec:
    """One explicit mount (an OCI ``mounts`` entry), already parsed into mount(2) arguments."""

    destination: str
    fstype: str | None  # None for a bind mount
    source: str | None
    flags: int = 0  # MS_* flags, without MS_BIND/MS_REC
    data: str | None = None
    bind: bool = False
    recursive: bool = False
    propagation: int = 0  # MS_SHARED/MS_SLAVE/MS_PRIVATE/MS_UNBINDABLE (| MS_REC), applied after


@dataclass(frozen=True)
class DeviceNode:
    """A device node to create in the container's /dev (OCI ``linux.devices``)."""

    path: str
    kind: str  # c, b, u (unbuffered char), p (fifo)
    major: int
    minor: int
    mode: int = 0o666
    uid: int = 0
    gid: int = 0


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
    # Set by explicit (OCI) configurations; the defaults keep the daemon's behaviour.
    uid: int | None = None  # when set, user is ignored: uid/gid/additional_gids are used as given
    gid: int = 0
    additional_gids: tuple[int, ...] = ()
    cap_sets: CapSets | None = None  # when set, replaces caps
    rlimits: tuple[tuple[int, int, int], ...] = ()  # (RLIMIT_*, soft, hard)
    umask: int | None = None


@dataclass(frozen=True)
class InterfaceConfig:
    """The container's ``eth0`` on an isobox network; its peer ``host_link`` joins the bridge."""

    host_link: str
    bridge_index: int
    mac: str
    address: str
    prefixlen: int
    gateway: str


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
    # An explicit mount list (OCI) replaces the default /proc, /sys, /dev and the volumes;
    # with no lowerdirs the root is ``rootfs`` itself, bind-mounted (no overlay).
    mount_plan: list[MountSpec] | None = None
    devices: tuple[DeviceNode, ...] = ()
    sysctl: dict[str, str] = field(default_factory=dict)
    root_propagation: int = 0  # 0: MS_REC|MS_PRIVATE
    interface: InterfaceConfig | None = None  # None: loopback only
    host_network: bool = False  # --network host: the init rejoins the host's network namespace
