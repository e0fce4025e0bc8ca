"""The cgroup v2 device filter: an eBPF program of type BPF_PROG_TYPE_CGROUP_DEVICE.

cgroup v2 has no ``devices.allow``; the kernel asks a BPF program attached to the cgroup for
every open or mknod of a device node (what runc's and crun's device filters do).  The program
here is an allow-list: each rule is a block of compare-and-skip instructions that returns 1
when the access matches, and the program returns 0 (EPERM) when none does.

The program reads ``struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }``,
where ``access_type`` is ``(access << 16) | type``.
"""

from __future__ import annotations

import ctypes
import os
import struct
from collections.abc import Iterable

from isobox.errors import RuntimeFailure

# <linux/bpf.h>
BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6
BPF_F_ALLOW_MULTI = 2
DEVCG_DEV_BLOCK, DEVCG_DEV_CHAR = 1, 2
DEVCG_ACC = {"m": 1, "r": 2, "w": 4}
CGROUP2_SUPER_MAGIC = 0x63677270
SYS_bpf = 321  # x86_64

# Instruction encodings (class | size/op | source).
LDX_MEM_W = 0x61  # dst = *(u32 *)(src + off)
MOV32_REG = 0xBC  # dst = src (32-bit)
AND32_IMM = 0x54  # dst &= imm
RSH32_IMM = 0x74  # dst >>= imm
MOV64_IMM = 0xB7  # dst = imm
JNE_IMM = 0x55  # if dst != imm goto +off
EXIT = 0x95

R0, R1, R2, R3, R4, R5, R6 = range(7)


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def program(rules: Iterable[tuple[str, int | None, int | None, str]]) -> bytes:
    """The program for ``(kind, major, minor, access)`` allow rules; None numbers mean any."""
    out = [
        _insn(LDX_MEM_W, R2, R1, 0),  # r2 = access_type
        _insn(MOV32_REG, R3, R2),
        _insn(AND32_IMM, R3, imm=0xFFFF),  # r3 = device type
        _insn(MOV32_REG, R4, R2),
        _insn(RSH32_IMM, R4, imm=16),  # r4 = requested access bits
        _insn(LDX_MEM_W, R5, R1, 4),  # r5 = major
        _insn(LDX_MEM_W, R6, R1, 8),  # r6 = minor
    ]
    for kind, major, minor, access in rules:
        allowed = sum(DEVCG_ACC[a] for a in access)
        checks: list[tuple[int, int, int]] = []  # (code, dst, imm) each jumping to the next rule
        if kind != "a":
            checks.append((JNE_IMM, R3, DEVCG_DEV_BLOCK if kind == "b" else DEVCG_DEV_CHAR))
        if major is not None:
            checks.append((JNE_IMM, R5, major))
        if minor is not None:
            checks.append((JNE_IMM, R6, minor))
        # Access: the requested bits must all be allowed, i.e. (r4 & ~allowed) == 0.
        block = [_insn(MOV32_REG, 7, R4), _insn(AND32_IMM, 7, imm=~allowed & 0x7)]
        tail = [_insn(MOV64_IMM, R0, imm=1), _insn(EXIT)]
        # Each failed check jumps to the first instruction after this rule's block.
        body_len = len(checks) + len(block) + 1 + len(tail)
        position = 0
        for code, dst, imm in checks:
            out.append(_insn(code, dst, off=body_len - position - 1, imm=imm))
            position += 1
        out.extend(block)
        position += len(block)
        out.append(_insn(JNE_IMM, 7, off=body_len - position - 1, imm=0))
        out.extend(tail)
    out += [_insn(MOV64_IMM, R0, imm=0), _insn(EXIT)]
    return b"".join(out)


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _bpf(cmd: int, attr: bytes) -> int:
    buf = ctypes.create_string_buffer(attr, len(attr))
    result = _libc.syscall(SYS_bpf, ctypes.c_int(cmd), buf, ctypes.c_uint(len(attr)))
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(result)


def load(code: bytes) -> int:
    """BPF_PROG_LOAD; returns the program fd."""
    insns = ctypes.create_string_buffer(code, len(code))
    license = ctypes.create_string_buffer(b"Apache-2.0")
    attr = struct.pack(
        "<IIQQIIQII16sII",
        BPF_PROG_TYPE_CGROUP_DEVICE, len(code) // 8, ctypes.addressof(insns), ctypes.addressof(license),
        0, 0, 0,  # log level, size, buffer
        0, 0,  # kern_version, prog_flags
        b"isobox_devices",
        0, BPF_CGROUP_DEVICE,  # prog_ifindex, expected_attach_type
    )
    return _bpf(BPF_PROG_LOAD, attr.ljust(128, b"\0"))


def attach(cgroup_dir: str, code: bytes) -> None:
    """Load ``code`` and attach it to the cgroup v2 directory (it stays attached until rmdir)."""
    dir_fd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        prog_fd = load(code)
        try:
            attr = struct.pack("<IIII", dir_fd, prog_fd, BPF_CGROUP_DEVICE, BPF_F_ALLOW_MULTI)
            _bpf(BPF_PROG_ATTACH, attr.ljust(128, b"\0"))
        finally:
            os.close(prog_fd)
    except OSError as exc:
        raise RuntimeFailure(
            f"cannot attach the device filter to {cgroup_dir}: {exc.strerror}",
            hint="the kernel needs CONFIG_CGROUP_BPF (and BPF_PROG_TYPE_CGROUP_DEVICE)",
        ) from exc
    finally:
        os.close(dir_fd)


class _StatFs(ctypes.Structure):
    _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_byte * 112)]


def is_cgroup2(path: str) -> bool:
    """Whether ``path`` lies on a cgroup2 file system (a fake tree in unit tests does not)."""
    buf = _StatFs()
    if _libc.statfs(path.encode(), ctypes.byref(buf)) < 0:
        return False
    return buf.f_type == CGROUP2_SUPER_MAGIC
