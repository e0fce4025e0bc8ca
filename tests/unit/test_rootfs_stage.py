"""Which containers may use the /proc, /sys and /dev a pooled init mounted ahead (no root)."""

from __future__ import annotations

from isobox.runtimes.container import rootfs
from isobox.runtimes.container.config import ContainerConfig, MountSpec, ProcessConfig


def config(**changes: object) -> ContainerConfig:
    cfg = ContainerConfig(id="c" * 64, lowerdirs=["/l"], upperdir="/u", workdir="/w", rootfs="/r",
                          hostname="h", process=ProcessConfig(["/bin/true"], {}), cgroup_procs=[])
    for key, value in changes.items():
        setattr(cfg, key, value)
    return cfg


def test_the_default_container_uses_the_staged_trees() -> None:
    assert rootfs.can_use_stage(config())


def test_host_network_needs_its_own_sysfs() -> None:
    assert not rootfs.can_use_stage(config(host_network=True))


def test_other_masks_or_an_explicit_mount_plan_mount_their_own() -> None:
    assert not rootfs.can_use_stage(config(masked_paths=("/proc/kcore",)))
    assert not rootfs.can_use_stage(config(readonly_paths=()))
    assert not rootfs.can_use_stage(config(mount_plan=[MountSpec("/proc", "proc", "proc")]))
    assert not rootfs.can_use_stage(config(root_propagation=0x80000))  # MS_SLAVE: stage made it rprivate
