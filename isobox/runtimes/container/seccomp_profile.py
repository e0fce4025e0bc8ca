"""The seccomp profile model and isobox's default profile, as plain data.

One model serves the default profile and user profiles in the OCI / Docker JSON format
(``seccomp.profile_from_json``); ``seccomp.compile_bpf`` turns either into a BPF program.

The default profile is containers/common's (Podman's) with Docker's stricter capability gates:

* Unknown syscalls fail with ENOSYS (containers/common's ``defaultErrnoRet: 38``), so that a
  syscall newer than this list looks "not implemented" and glibc falls back (clone3 -> clone,
  fchmodat2 -> fchmodat, ...).  A blanket EPERM would make such callers fail for good.
* The dangerous syscalls fail with EPERM, explicitly, so that callers see "not permitted".
* Namespace creation, mounting, setns, module loading, clock setting, reboot, ptrace, ... are
  allowed only when the container holds the capability that the kernel checks for them
  (Docker's scheme).  containers/common allows mount/unshare/setns/keyctl for everyone, which
  lets ``unshare -Urn`` give a process CAP_NET_ADMIN over a fresh network namespace inside a
  container (containers/common#1988); Docker and CRI-O gate them on CAP_SYS_ADMIN, as we do.

libseccomp allows one comparison per argument in a rule and gives no precedence between
overlapping conditional rules with different actions (an unconditional rule replaces all of a
syscall's conditional ones).  The argument-filtered syscalls below (clone, unshare, socket,
personality) are therefore spelled out as rule sets whose conditions never overlap across actions.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
from dataclasses import dataclass
from enum import StrEnum


class Action(StrEnum):
    ALLOW = "SCMP_ACT_ALLOW"
    ERRNO = "SCMP_ACT_ERRNO"
    KILL = "SCMP_ACT_KILL"  # kills the thread; OCI also spells it SCMP_ACT_KILL_THREAD
    KILL_PROCESS = "SCMP_ACT_KILL_PROCESS"
    TRAP = "SCMP_ACT_TRAP"
    LOG = "SCMP_ACT_LOG"
    TRACE = "SCMP_ACT_TRACE"


class Op(StrEnum):
    NE = "SCMP_CMP_NE"
    LT = "SCMP_CMP_LT"
    LE = "SCMP_CMP_LE"
    EQ = "SCMP_CMP_EQ"
    GE = "SCMP_CMP_GE"
    GT = "SCMP_CMP_GT"
    MASKED_EQ = "SCMP_CMP_MASKED_EQ"  # (arg & value) == value_two, as in the OCI spec


@dataclass(frozen=True)
class ArgCondition:
    index: int  # 0..5
    value: int
    value_two: int = 0
    op: Op = Op.EQ


@dataclass(frozen=True)
class Rule:
    """``names`` get ``action`` when all ``args`` match and the filters below select the rule.

    Capability names are without ``CAP_``.  ``includes_caps``: all must be held;
    ``excludes_caps``: none may be held.  Arches are Docker's names (amd64, arm64, s390x, ...)
    compared with the host's.  ``min_kernel`` is "MAJOR.MINOR".
    """

    names: tuple[str, ...]
    action: Action
    errno: int | None = None  # for ERRNO and TRACE; None means EPERM
    args: tuple[ArgCondition, ...] = ()
    includes_caps: tuple[str, ...] = ()
    excludes_caps: tuple[str, ...] = ()
    includes_arches: tuple[str, ...] = ()
    excludes_arches: tuple[str, ...] = ()
    min_kernel: str | None = None


@dataclass(frozen=True)
class Profile:
    default_action: Action
    default_errno: int | None = None
    rules: tuple[Rule, ...] = ()
    # libseccomp names ("x86_64", "x86", "x32", "aarch64", ...).  Empty: the native architecture
    # and the ones it can also run (x86_64 -> x86, x32), as Docker's archMap does.
    architectures: tuple[str, ...] = ()

    @functools.cached_property
    def _hash(self) -> int:
        return hash((self.default_action, self.default_errno, self.rules, self.architectures))

    def __hash__(self) -> int:
        # A profile is the key of compile_bpf's cache, hashed at every container start: hashing
        # its few hundred rules and names once, not every time, keeps a cache hit at microseconds.
        return self._hash


DEFAULT_ERRNO = errno.ENOSYS

# Docker's default allow list (moby profiles/seccomp/default.json) -- the most widely exercised
# one, and containers/common's minus the syscalls gated below -- with the harmless newer ones
# Docker has since added (cachestat, futex_wait/wake/requeue, map_shadow_stack) and fchmodat2
# (fchmodat with a flags argument; glibc 2.39 uses it for lchmod).
#
# io_uring_setup/enter/register are left out, as in containers/common and in Docker since 25.0:
# io_uring has been the source of a long run of kernel privilege escalations (Google disabled
# it on ChromeOS, Android and its servers), and with ENOSYS liburing users fall back to
# epoll/threads.
#
# Names the installed libseccomp does not know (mseal with Debian 12's 2.5.4) are skipped and
# so get ENOSYS, which callers treat as an old kernel.
ALLOWED: tuple[str, ...] = (
    "_llseek", "_newselect", "accept", "accept4", "access", "adjtimex", "alarm", "bind", "brk",
    "cachestat", "capget", "capset", "chdir", "chmod", "chown", "chown32",
    "clock_adjtime", "clock_adjtime64", "clock_getres", "clock_getres_time64", "clock_gettime",
    "clock_gettime64", "clock_nanosleep", "clock_nanosleep_time64", "close", "close_range",
    "connect", "copy_file_range", "creat", "dup", "dup2", "dup3",
    "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait", "epoll_pwait2",
    "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2", "execve", "execveat", "exit",
    "exit_group", "faccessat", "faccessat2", "fadvise64", "fadvise64_64", "fallocate",
    "fanotify_mark", "fchdir", "fchmod", "fchmodat", "fchmodat2", "fchown", "fchown32",
    "fchownat", "fcntl", "fcntl64", "fdatasync", "fgetxattr", "flistxattr", "flock", "fork",
    "fremovexattr", "fsetxattr", "fstat", "fstat64", "fstatat64", "fstatfs", "fstatfs64",
    "fsync", "ftruncate", "ftruncate64", "futex", "futex_requeue", "futex_time64", "futex_wait",
    "futex_waitv", "futex_wake", "futimesat", "get_robust_list", "get_thread_area", "getcpu",
    "getcwd", "getdents", "getdents64", "getegid", "getegid32", "geteuid", "geteuid32",
    "getgid", "getgid32", "getgroups", "getgroups32", "getitimer", "getpeername", "getpgid",
    "getpgrp", "getpid", "getppid", "getpriority", "getrandom", "getresgid", "getresgid32",
    "getresuid", "getresuid32", "getrlimit", "getrusage", "getsid", "getsockname",
    "getsockopt", "gettid", "gettimeofday", "getuid", "getuid32", "getxattr",
    "inotify_add_watch", "inotify_init", "inotify_init1", "inotify_rm_watch", "io_cancel",
    "io_destroy", "io_getevents", "io_pgetevents", "io_pgetevents_time64", "io_setup",
    "io_submit", "ioctl", "ioprio_get", "ioprio_set", "ipc", "kill",
    "landlock_add_rule", "landlock_create_ruleset", "landlock_restrict_self",
    "lchown", "lchown32", "lgetxattr", "link", "linkat", "listen", "listxattr", "llistxattr",
    "lremovexattr", "lseek", "lsetxattr", "lstat", "lstat64", "madvise", "map_shadow_stack",
    "membarrier", "memfd_create", "memfd_secret", "mincore", "mkdir", "mkdirat", "mknod",
    "mknodat", "mlock", "mlock2", "mlockall", "mmap", "mmap2", "mprotect", "mq_getsetattr",
    "mq_notify", "mq_open", "mq_timedreceive", "mq_timedreceive_time64", "mq_timedsend",
    "mq_timedsend_time64", "mq_unlink", "mremap", "msgctl", "msgget", "msgrcv", "msgsnd",
    "msync", "munlock", "munlockall", "munmap", "name_to_handle_at", "nanosleep", "newfstatat",
    "open", "openat", "openat2", "pause", "pidfd_open", "pidfd_send_signal", "pipe", "pipe2",
    "pkey_alloc", "pkey_free", "pkey_mprotect", "poll", "ppoll", "ppoll_time64", "prctl",
    "pread64", "preadv", "preadv2", "prlimit64", "process_mrelease", "pselect6",
    "pselect6_time64", "pwrite64", "pwritev", "pwritev2", "read", "readahead", "readlink",
    "readlinkat", "readv", "recv", "recvfrom", "recvmmsg", "recvmmsg_time64", "recvmsg",
    "remap_file_pages", "removexattr", "rename", "renameat", "renameat2", "restart_syscall",
    "rmdir", "rseq", "rt_sigaction", "rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo",
    "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait", "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo", "sched_get_priority_max", "sched_get_priority_min",
    "sched_getaffinity", "sched_getattr", "sched_getparam", "sched_getscheduler",
    "sched_rr_get_interval", "sched_rr_get_interval_time64", "sched_setaffinity",
    "sched_setattr", "sched_setparam", "sched_setscheduler", "sched_yield", "seccomp",
    "select", "semctl", "semget", "semop", "semtimedop", "semtimedop_time64", "send",
    "sendfile", "sendfile64", "sendmmsg", "sendmsg", "sendto", "set_robust_list",
    "set_thread_area", "set_tid_address", "setfsgid", "setfsgid32", "setfsuid", "setfsuid32",
    "setgid", "setgid32", "setgroups", "setgroups32", "setitimer", "setpgid", "setpriority",
    "setregid", "setregid32", "setresgid", "setresgid32", "setresuid", "setresuid32",
    "setreuid", "setreuid32", "setrlimit", "setsid", "setsockopt", "setuid", "setuid32",
    "setxattr", "shmat", "shmctl", "shmdt", "shmget", "shutdown", "sigaltstack", "signalfd",
    "signalfd4", "sigprocmask", "sigreturn", "socketcall", "socketpair", "splice", "stat",
    "stat64", "statfs", "statfs64", "statx", "symlink", "symlinkat", "sync", "sync_file_range",
    "syncfs", "sysinfo", "tee", "tgkill", "time", "timer_create", "timer_delete",
    "timer_getoverrun", "timer_gettime", "timer_gettime64", "timer_settime", "timer_settime64",
    "timerfd_create", "timerfd_gettime", "timerfd_gettime64", "timerfd_settime",
    "timerfd_settime64", "times", "tkill", "truncate", "truncate64", "ugetrlimit", "umask",
    "uname", "unlink", "unlinkat", "utime", "utimensat", "utimensat_time64", "utimes", "vfork",
    "vmsplice", "wait4", "waitid", "waitpid", "write", "writev",
    # architecture-specific; names that do not exist on the host's architectures are skipped
    "arch_prctl", "modify_ldt",  # x86
    "arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2", "breakpoint", "cacheflush",
    "set_tls",  # arm
    "riscv_flush_icache",  # riscv64
    "s390_pci_mmio_read", "s390_pci_mmio_write", "s390_runtime_instr",  # s390
)  # fmt: skip

# EPERM for everyone: the keyring is not namespaced; kexec, swap, userfaultfd (a staple of
# kernel exploits) and obsolete syscalls (containers/common's explicit EPERM list).
DENIED: tuple[str, ...] = (
    "add_key", "keyctl", "request_key",
    "kexec_load", "kexec_file_load",
    "swapon", "swapoff",
    "userfaultfd",
    "_sysctl", "bdflush", "create_module", "get_kernel_syms", "migrate_pages", "move_pages",
    "nfsservctl", "nice", "oldfstat", "oldlstat", "oldolduname", "oldstat", "olduname",
    "pciconfig_iobase", "pciconfig_read", "pciconfig_write", "query_module", "sgetmask",
    "ssetmask", "swapcontext", "sysfs", "uselib", "ustat", "vm86", "vm86old",
)  # fmt: skip

# Allowed only with the capability the kernel checks for them, EPERM otherwise.
CAPABILITY_GATED: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    # (capabilities, any of which enables the syscalls), syscalls
    (("SYS_ADMIN",), (
        "fanotify_init", "fsconfig", "fsmount", "fsopen", "fspick", "lookup_dcookie", "mount",
        "mount_setattr", "move_mount", "open_tree", "pivot_root", "quotactl", "quotactl_fd",
        "setdomainname", "sethostname", "setns", "umount", "umount2",
    )),
    (("SYS_ADMIN", "BPF"), ("bpf",)),
    (("SYS_ADMIN", "PERFMON"), ("perf_event_open",)),
    (("SYS_ADMIN", "SYSLOG"), ("syslog",)),
    (("SYS_BOOT",), ("reboot",)),
    (("SYS_CHROOT",), ("chroot",)),
    (("SYS_MODULE",), ("init_module", "finit_module", "delete_module")),
    (("SYS_PACCT",), ("acct",)),
    # ptrace: Docker allows it on kernels >= 4.8 (where it can no longer be used to skip the
    # seccomp filter); Podman gates it on CAP_SYS_PTRACE, which we follow: it exposes other
    # processes' memory, and `--cap-add SYS_PTRACE` restores strace/gdb.
    (("SYS_PTRACE",), ("kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv",
                       "process_vm_writev", "ptrace")),
    (("SYS_RAWIO",), ("iopl", "ioperm")),
    (("SYS_TIME",), ("settimeofday", "stime", "clock_settime", "clock_settime64")),
    (("SYS_TTY_CONFIG",), ("vhangup",)),
    (("SYS_NICE",), ("get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node")),
    (("DAC_READ_SEARCH",), ("open_by_handle_at",)),  # CVE-2014-3519 ("shocker")
)  # fmt: skip

# clone/unshare flags that create namespaces: NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER,
# NEWPID, NEWNET.  Docker's mask; unshare also gets NEWTIME (0x80, the exit signal for clone).
CLONE_NEWNS_MASK = 0x7E020000
UNSHARE_NEWNS_MASK = CLONE_NEWNS_MASK | 0x80

# personality(2) values a workload may set: PER_LINUX, PER_LINUX32, UNAME26 variants, and the
# 0xffffffff query.  Others (ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC, ...) weaken the process.
PERSONALITY_ALLOWED = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)

AF_NETLINK = 16
NETLINK_AUDIT = 9
AF_VSOCK = 40

_LOW32 = 0xFFFFFFFF
_HIGH32 = 0xFFFFFFFF_00000000
_S390 = ("s390", "s390x")


def _masked(index: int, mask: int, value: int) -> ArgCondition:
    return ArgCondition(index, mask, value, Op.MASKED_EQ)


def _int_eq(index: int, value: int) -> ArgCondition:
    """Equality on a C ``int`` argument: the kernel ignores the upper 32 bits of the register,
    so a 64-bit comparison could be dodged by setting them."""
    return _masked(index, _LOW32, value)


def _gated_rules() -> list[Rule]:
    rules = []
    for caps, names in CAPABILITY_GATED:
        rules += [Rule(names, Action.ALLOW, includes_caps=(cap,)) for cap in caps]
        rules.append(Rule(names, Action.ERRNO, errno.EPERM, excludes_caps=caps))
    return rules


def _namespace_flag_rules(name: str, index: int, flags_mask: int, gate: Rule) -> list[Rule]:
    """Allow ``name`` without namespace flags in argument ``index``, EPERM with any of them.

    ``gate`` carries the capability and architecture filters for all the rules.
    """
    flags = [1 << bit for bit in range(64) if flags_mask & (1 << bit)]
    conditions: list[tuple[Action, int | None, ArgCondition]] = [
        (Action.ALLOW, None, _masked(index, flags_mask, 0))
    ]
    conditions += [(Action.ERRNO, errno.EPERM, _masked(index, flag, flag)) for flag in flags]
    return [dataclasses.replace(gate, names=(name,), action=a, errno=e, args=(c,)) for a, e, c in conditions]


def _namespace_rules() -> list[Rule]:
    """clone/clone3/unshare: anything with CAP_SYS_ADMIN; without it, no new namespaces.

    clone3 passes its flags in a struct that seccomp cannot read, so it fails with ENOSYS and
    glibc falls back to clone, whose flags we can check (containers/common and Docker do this).
    s390 swaps clone's first two arguments.
    """
    admin = ("SYS_ADMIN",)
    no_admin = Rule((), Action.ALLOW, excludes_caps=admin)
    rules = [Rule(("clone", "clone3", "unshare"), Action.ALLOW, includes_caps=admin)]
    rules += _namespace_flag_rules(
        "clone", 0, CLONE_NEWNS_MASK, dataclasses.replace(no_admin, excludes_arches=_S390)
    )
    rules += _namespace_flag_rules(
        "clone", 1, CLONE_NEWNS_MASK, dataclasses.replace(no_admin, includes_arches=_S390)
    )
    rules += _namespace_flag_rules("unshare", 0, UNSHARE_NEWNS_MASK, no_admin)
    rules.append(Rule(("clone3",), Action.ERRNO, errno.ENOSYS, excludes_caps=admin))
    return rules


def _socket_rules() -> list[Rule]:
    """socket(): AF_VSOCK is refused, NETLINK_AUDIT fails with EINVAL without CAP_AUDIT_WRITE.

    AF_VSOCK reaches the host and its VMs past the network namespace (Docker blocks it too).
    The audit rule is containers/common's: without CAP_AUDIT_WRITE, sending to the audit socket
    fails with EPERM and sudo/login/useradd give up; EINVAL on socket() makes libaudit treat
    audit as unavailable.  The domain argument is an ``int``: "low 32 bits not AF_VSOCK" is
    spelled as a set of single comparisons: a bit set outside AF_VSOCK|AF_NETLINK's bits, or
    one of the few values inside them.
    """
    audit = ("AUDIT_WRITE",)
    special = (AF_VSOCK, AF_NETLINK)
    spread = AF_VSOCK | AF_NETLINK
    rules = [Rule(("socket",), Action.ERRNO, errno.EAFNOSUPPORT, args=(_int_eq(0, AF_VSOCK),))]
    for bit in range(32):
        if not spread & (1 << bit):
            rules.append(Rule(("socket",), Action.ALLOW, args=(_masked(0, 1 << bit, 1 << bit),)))
    inside = {v for v in range(spread + 1) if v & ~spread == 0} - set(special)
    rules += [Rule(("socket",), Action.ALLOW, args=(_int_eq(0, v),)) for v in sorted(inside)]
    netlink = _int_eq(0, AF_NETLINK)
    rules += [
        Rule(("socket",), Action.ALLOW, args=(netlink,), includes_caps=audit),
        Rule(
            ("socket",),
            Action.ALLOW,
            args=(netlink, ArgCondition(2, NETLINK_AUDIT, op=Op.NE)),
            excludes_caps=audit,
        ),
        Rule(
            ("socket",),
            Action.ERRNO,
            errno.EINVAL,
            args=(netlink, ArgCondition(2, NETLINK_AUDIT)),
            excludes_caps=audit,
        ),
    ]
    return rules


def _personality_rules() -> list[Rule]:
    """personality(): the values in PERSONALITY_ALLOWED, EPERM for every other one.

    With ``m`` = every bit of the low 32 except those of PER_LINUX32 (0x8) and UNAME26 (0x20000):
    allowed are the four values with no ``m`` bit and 0xffffffff.  EPERM covers the rest:
    upper bits set; some ``m`` bit set and some clear (then, going round ``m``'s bits, some set
    bit is followed by a clear one); all ``m`` bits set but not 0xffffffff.
    """
    m = _LOW32 & ~(0x8 | 0x20000)
    name = ("personality",)
    rules = [
        Rule(name, Action.ALLOW, args=(_masked(0, _HIGH32 | m, 0),)),
        Rule(name, Action.ALLOW, args=(ArgCondition(0, 0xFFFFFFFF),)),
        Rule(name, Action.ERRNO, errno.EPERM, args=(ArgCondition(0, _LOW32, op=Op.GT),)),
    ]
    bits = [b for b in range(32) if m & (1 << b)]
    for here, after in zip(bits, bits[1:] + bits[:1], strict=True):
        pair = (1 << here) | (1 << after)
        rules.append(Rule(name, Action.ERRNO, errno.EPERM, args=(_masked(0, pair, 1 << here),)))
    for value in (m, m | 0x8, m | 0x20000):
        rules.append(Rule(name, Action.ERRNO, errno.EPERM, args=(ArgCondition(0, value),)))
    return rules


def default_rules() -> tuple[Rule, ...]:
    return (
        Rule(ALLOWED, Action.ALLOW),
        Rule(DENIED, Action.ERRNO, errno.EPERM),
        *_gated_rules(),
        *_namespace_rules(),
        *_socket_rules(),
        *_personality_rules(),
    )


def default_profile() -> Profile:
    return Profile(Action.ERRNO, DEFAULT_ERRNO, default_rules())
