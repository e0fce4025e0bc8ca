"""``image build debian:SUITE --bootable``: a whole Debian system on a disk that firmware boots.

The result is a VM-only image, like one from ``image import-disk``: one qcow2 disk, which
``isobox run --isolation vm`` boots through SeaBIOS or UEFI (``runtimes/vm/diskboot.py``).

    mmdebstrap  minbase + the cloud kernel, systemd, udev, dbus (for logind, which handles the
                ACPI power button) and qemu-guest-agent (exec); initramfs-tools builds the
                initramfs inside the chroot as on any Debian install
    configure   hostname, /etc/fstab (root by UUID), root's password locked (``!`` in shadow:
                nobody can log in with a password until one is set through the guest agent)
    the disk    MBR with two partitions, made without mounting anything:
                  1. 128 MiB FAT, active, type EF: SYSLINUX for BIOS (``syslinux --offset``, with
                     syslinux's MBR code in sector 0) and for UEFI (``syslinux.efi`` as the
                     removable-media loader ``\\EFI\\BOOT\\BOOTX64.EFI``), the kernel and the
                     initramfs, one ``syslinux.cfg`` with the serial console on ttyS0
                  2. the rest, ext4 made by ``mkfs.ext4 -d`` from the tree at its offset
                systemd starts a getty on ttyS0 by itself (``console=ttyS0`` on the command line).

SYSLINUX from a FAT partition rather than extlinux or GRUB on the root filesystem: both of those
install onto a mounted filesystem (a loop device), while mtools and ``mkfs --offset`` write into
the image file directly.  The guest mounts that partition at /boot/firmware, and a hook run by
the kernel package and by ``update-initramfs`` (``BOOT_HOOK``, in /etc/kernel/postinst.d and
/etc/initramfs/post-update.d) copies the kernel installed last and its initramfs there, so an
``apt upgrade`` inside the guest boots its new kernel, as Raspberry Pi OS does with the same layout.

The inputs hash into a build key kept as a label, as for ``debian:SUITE``: a second build finds
the image and only tags it.  To rebuild, remove the image first.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

from isobox.errors import RuntimeFailure
from isobox.images import debian
from isobox.images.diskimport import MT_DISK_QCOW2
from isobox.images.store import Image, ImageStore, Progress

PACKAGES = ("linux-image-cloud-amd64", "systemd-sysv", "udev", "dbus", "qemu-guest-agent")
HOSTNAME = "debian"
LAYOUT = 2  # bump when the disk layout below changes: it is part of the build key
MIB = 1 << 20
DISK_SIZE = 4096 * MIB  # virtual; the stored qcow2 holds only what was written
BOOT_START = 1 * MIB
BOOT_SIZE = 128 * MIB
ROOT_START = BOOT_START + BOOT_SIZE
KERNEL_ARGS = "ro console=ttyS0,115200"
MBR_CODE = Path("/usr/lib/syslinux/mbr/mbr.bin")  # syslinux-common
EFI_LOADER = Path("/usr/lib/SYSLINUX.EFI/efi64/syslinux.efi")  # syslinux-efi
EFI_LDLINUX = Path("/usr/lib/syslinux/modules/efi64/ldlinux.e64")  # syslinux-common
TOOLS = {"mmdebstrap": "mmdebstrap", "sfdisk": "fdisk", "mkfs.fat": "dosfstools", "mkfs.ext4": "e2fsprogs",
         "syslinux": "syslinux", "mcopy": "mtools", "qemu-img": "qemu-utils"}
FILES = {MBR_CODE: "syslinux-common", EFI_LOADER: "syslinux-efi", EFI_LDLINUX: "syslinux-common"}
KERNEL_LABEL = "org.isobox.disk.kernel"


def build_key(suite: str, include: list[str], mirror: str = debian.MIRROR) -> str:
    inputs = {"builder": "mmdebstrap+syslinux", "layout": LAYOUT, "suite": suite, "variant": debian.VARIANT,
              "packages": sorted({*PACKAGES, *include}), "mirror": mirror, "arch": "amd64", "hostname": HOSTNAME,
              "network": NETWORKD_UNIT}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def default_tag(suite: str, include: list[str], key: str) -> str:
    return f"debian:{suite}-bootable" if not include else f"debian:{suite}-bootable-{key[:8]}"


def build(store: ImageStore, kind: str, include: list[str], tag: str | None, progress: Progress) -> Image:
    suite, extra = debian.parse_kind(kind, include)
    key = build_key(suite, extra)
    tag = tag or default_tag(suite, extra, key)
    cached = next((i for i in store.list() if i.config.labels.get(debian.KEY_LABEL) == key), None)
    if cached is not None:
        progress(f"cached: image {cached.short_id} was built from the same inputs")
        return store.tag(cached.id, tag)
    check_tools()
    packages = sorted({*PACKAGES, *extra})
    with store.staging() as stage:
        root = stage / "rootfs"
        debian.run_mmdebstrap(suite, packages, root, progress)
        debian.clean_dev(root)
        root_uuid = str(uuid.uuid4())
        configure(root, root_uuid)
        kernel, initrd, version = kernel_files(root)
        raw = stage / "disk.raw"
        make_disk(root, raw, root_uuid, kernel, initrd, version, progress)
        shutil.rmtree(root)
        progress("converting the disk to qcow2")
        qcow2 = stage / "disk"
        _run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)])
        raw.unlink()
        disk = {"kind": "disk", "format": "raw", "stored_format": "qcow2", "virtual_size": DISK_SIZE,
                "source": f"debian:{suite} --bootable", "media_type": MT_DISK_QCOW2, "kernel": version}
        labels = {debian.KEY_LABEL: key, KERNEL_LABEL: version, "org.isobox.disk.firmware": "bios,uefi",
                  "org.opencontainers.image.title": f"debian:{suite} (bootable disk)",
                  "org.opencontainers.image.source": debian.MIRROR}
        created_by = (f"isobox image build debian:{suite} --bootable: mmdebstrap --variant={debian.VARIANT} "
                      f"--include={','.join(packages)} {suite} {debian.MIRROR}; syslinux (BIOS, UEFI)")
        return store.store_disk(qcow2, disk, tag, progress, labels=labels, created_by=created_by)


def check_tools() -> None:
    missing = sorted({pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None}
                     | {pkg for path, pkg in FILES.items() if not path.is_file()})
    if missing:
        raise RuntimeFailure("building a bootable disk needs " + ", ".join(missing),
                             hint=f"apt-get install {' '.join(missing)} (or run scripts/setup.sh)")


# The network as an installer would set it up: systemd-networkd (in the systemd package),
# DHCP on any Ethernet link.  isobox's network DNS/DHCP server answers with the leased address.
NETWORKD_UNIT = "[Match]\nName=en* eth*\n\n[Network]\nDHCP=ipv4\n"


def enable_networkd(root: Path) -> None:
    """``systemctl enable systemd-networkd`` done offline: its unit files' WantedBy links."""
    (root / "etc" / "systemd" / "network").mkdir(parents=True, exist_ok=True)
    (root / "etc" / "systemd" / "network" / "20-dhcp.network").write_text(NETWORKD_UNIT)
    for target, unit in (("multi-user.target.wants", "systemd-networkd.service"),
                         ("sockets.target.wants", "systemd-networkd.socket"),
                         ("network-online.target.wants", "systemd-networkd-wait-online.service")):
        wants = root / "etc" / "systemd" / "system" / target
        wants.mkdir(parents=True, exist_ok=True)
        link = wants / unit
        if not link.is_symlink() and (root / "lib" / "systemd" / "system" / unit).exists():
            link.symlink_to(f"/lib/systemd/system/{unit}")


FAT_LABEL = "ISOBOXBOOT"
BOOT_MOUNT = "/boot/firmware"
# Run as HOOK VERSION [IMAGE] by the kernel package (postinst.d, after initramfs-tools' own hook
# has made the initramfs) and as HOOK VERSION INITRD by update-initramfs (post-update.d).  The
# version on the boot partition is kept beside the kernel: update-initramfs for any other
# version must not replace the initramfs that boots.
BOOT_HOOK = f"""#!/bin/sh
# isobox: the firmware boots /vmlinuz and /initrd.img of the FAT partition at {BOOT_MOUNT}.
set -e
version="$1"
boot={BOOT_MOUNT}
mountpoint -q "$boot" || {{ echo "isobox boot hook: $boot is not mounted; kernel $version not installed for boot" >&2; exit 0; }}
copy() {{ cp "$1" "$boot/$2.new" && sync "$boot/$2.new" && mv "$boot/$2.new" "$boot/$2"; }}
case "$0" in
*/post-update.d/*)
    [ "$(cat "$boot/isobox-kernel-version" 2>/dev/null)" = "$version" ] || exit 0
    copy "${{2:-/boot/initrd.img-$version}}" initrd.img ;;
*)
    [ -e "/boot/vmlinuz-$version" ] && [ -e "/boot/initrd.img-$version" ] || exit 0
    copy "/boot/vmlinuz-$version" vmlinuz
    copy "/boot/initrd.img-$version" initrd.img
    echo "$version" > "$boot/isobox-kernel-version" ;;
esac
"""


def configure(root: Path, root_uuid: str) -> None:
    """What an installer would ask: the hostname, the root filesystem, root's password, DHCP;
    and the boot partition at /boot/firmware with the hook that keeps its kernel current."""
    (root / "etc" / "hostname").write_text(HOSTNAME + "\n")
    (root / "etc" / "hosts").write_text(f"127.0.0.1\tlocalhost\n127.0.1.1\t{HOSTNAME}\n"
                                        "::1\t\tlocalhost ip6-localhost ip6-loopback\n")
    (root / "etc" / "fstab").write_text(f"UUID={root_uuid}\t/\text4\terrors=remount-ro\t0\t1\n"
                                        f"LABEL={FAT_LABEL}\t{BOOT_MOUNT}\tvfat\tumask=0077,nofail\t0\t2\n")
    (root / BOOT_MOUNT.lstrip("/")).mkdir(parents=True, exist_ok=True)
    for hooks in ("etc/kernel/postinst.d", "etc/initramfs/post-update.d"):
        hook = root / hooks / "zz-isobox-boot"
        hook.parent.mkdir(parents=True, exist_ok=True)
        hook.write_text(BOOT_HOOK)
        hook.chmod(0o755)
    lock_root_password(root / "etc" / "shadow")
    enable_networkd(root)


def lock_root_password(shadow: Path) -> None:
    """``passwd --lock root``: a ``!`` before the hash (Debian's base system has ``*``: no password)."""
    lines = shadow.read_text().splitlines()
    for i, line in enumerate(lines):
        fields = line.split(":")
        if fields[0] == "root" and len(fields) > 1 and not fields[1].startswith("!"):
            fields[1] = "!" + fields[1]
            lines[i] = ":".join(fields)
    shadow.write_text("\n".join(lines) + "\n")


def kernel_files(root: Path) -> tuple[Path, Path, str]:
    """(vmlinuz, initrd.img, version) that the kernel package and initramfs-tools made in /boot."""
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise RuntimeFailure("the bootable build installed no kernel in /boot")
    version = kernels[-1].name.removeprefix("vmlinuz-")
    initrd = root / "boot" / f"initrd.img-{version}"
    if not initrd.is_file():
        raise RuntimeFailure(f"no initramfs for kernel {version} in /boot (initramfs-tools did not run?)")
    return kernels[-1], initrd, version


def syslinux_cfg(root_uuid: str) -> str:
    """One config for both loaders: serial console, no menu, no wait."""
    return "\n".join([
        "SERIAL 0 115200", "DEFAULT debian", "PROMPT 0", "TIMEOUT 0", "LABEL debian",
        "  LINUX /vmlinuz", "  INITRD /initrd.img", f"  APPEND root=UUID={root_uuid} {KERNEL_ARGS}", "",
    ])


def partition_table() -> str:
    """sfdisk's script: the FAT boot partition (active, EFI System), then the root partition."""
    boot, root = BOOT_START // 512, ROOT_START // 512
    return (f"label: dos\nstart={boot}, size={BOOT_SIZE // 512}, type=ef, bootable\n"
            f"start={root}, size={(DISK_SIZE - ROOT_START) // 512}, type=83\n")


def make_disk(root: Path, raw: Path, root_uuid: str, kernel: Path, initrd: Path, version: str,
              progress: Progress) -> None:
    with open(raw, "wb") as fh:
        fh.truncate(DISK_SIZE)
    progress("partitioning the disk (MBR: boot FAT + root ext4)")
    _run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(raw)], stdin=partition_table())
    with open(MBR_CODE, "rb") as src, open(raw, "r+b") as dst:
        dst.write(src.read(440))  # the boot code only: the partition table starts at byte 446
    progress("making the boot partition (FAT, SYSLINUX for BIOS and UEFI, kernel, initramfs)")
    sector = BOOT_START // 512
    _run(["mkfs.fat", "-F", "16", "-n", FAT_LABEL, f"--offset={sector}", "-h", str(sector),
          str(raw), str(BOOT_SIZE // 1024)])
    fat = f"{raw}@@{BOOT_START}"
    _mtools(["mmd", "-i", fat, "::/syslinux", "::/EFI", "::/EFI/BOOT"])
    _run(["syslinux", "--install", "--offset", str(BOOT_START), "--directory", "/syslinux", str(raw)])
    cfg = raw.with_name("syslinux.cfg")
    cfg.write_text(syslinux_cfg(root_uuid))
    stamp = raw.with_name("isobox-kernel-version")  # what BOOT_HOOK compares with
    stamp.write_text(version + "\n")
    for source, target in ((kernel, "::/vmlinuz"), (initrd, "::/initrd.img"), (cfg, "::/syslinux/syslinux.cfg"),
                           (EFI_LOADER, "::/EFI/BOOT/BOOTX64.EFI"), (EFI_LDLINUX, "::/EFI/BOOT/ldlinux.e64"),
                           (cfg, "::/EFI/BOOT/syslinux.cfg"), (stamp, "::/isobox-kernel-version")):
        _mtools(["mcopy", "-i", fat, str(source), target])
    cfg.unlink()
    stamp.unlink()
    progress(f"making the root filesystem (ext4, {(DISK_SIZE - ROOT_START) // MIB} MiB)")
    _run(["mkfs.ext4", "-q", "-F", "-L", "root", "-U", root_uuid, "-E", f"offset={ROOT_START}",
          "-d", str(root), str(raw), f"{(DISK_SIZE - ROOT_START) // 1024}k"])


def _mtools(argv: list[str]) -> None:
    # No geometry check (a partition in an image file has none) and no user or system mtoolsrc.
    _run(argv, env={**os.environ, "MTOOLS_SKIP_CHECK": "1", "MTOOLSRC": "/dev/null"})


def _run(argv: list[str], stdin: str | None = None, env: dict[str, str] | None = None) -> None:
    done = subprocess.run(argv, input=stdin, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        detail = (done.stderr.strip() or done.stdout.strip())[-400:]
        raise RuntimeFailure(f"{argv[0]} failed (exit {done.returncode}): {detail}")
