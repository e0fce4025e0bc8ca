"""What a container's first process does before it becomes the workload, shared by the daemon's
path (``launch.py``) and the OCI runtime (``isobox.oci.lifecycle``).

A module of its own so that the OCI runtime, a fresh process per call, imports only this and
``rootfs`` on its start-up path, not the daemon's monitor machinery.
"""

from __future__ import annotations

import os

from isobox.runtimes.container import rootfs
from isobox.runtimes.container import syscalls as sc

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket  # (only for annotations: its import costs ms on the OCI runtime's start-up path)
    from collections.abc import Callable

    from isobox.runtimes.container.config import ContainerConfig


def join_cgroup(files: list[str]) -> None:
    """Move ourselves (single-threaded) into the cgroup: "0" to each tasks/procs file."""
    for path in files:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)


def setup_container(cfg: ContainerConfig, namespaces: int, join: tuple[tuple[int, int], ...] = (),
                    host_net: tuple[socket.socket, int] | None = None, staged: str | None = None,
                    late_join: Callable[[], None] | None = None) -> None:
    """Join the cgroup, join (``join``: fd, CLONE_NEW*) and create (``namespaces``) namespaces,
    set the hostname, bring up lo, make ``eth0`` (``host_net``: a route socket and a namespace fd
    of the host's network namespace, opened before ours) and build the root (``staged``: see
    ``rootfs.stage``).

    ``late_join``: joins the cgroup once the root is built, instead of ``cfg.cgroup_procs``
    first (the daemon's monitor makes the cgroup meanwhile).  A new cgroup namespace is rooted
    where its creator is, so it waits for the join.
    """
    join_cgroup(cfg.cgroup_procs)
    for fd, nstype in join:
        sc.setns(fd, nstype)
        os.close(fd)
    early = namespaces & ~sc.CLONE_NEWCGROUP if late_join is not None else namespaces
    if early:
        sc.unshare(early)
    if cfg.hostname:
        sc.sethostname(cfg.hostname)
    if cfg.host_network:
        if host_net is None:
            raise RuntimeError("no handle on the host's network namespace for --network host")
        sc.setns(host_net[1], sc.CLONE_NEWNET)
    elif namespaces & sc.CLONE_NEWNET:
        sc.loopback_up()
    if cfg.interface is not None:
        plug_interface(cfg, host_net)
    rootfs.build(cfg, staged if staged is not None and rootfs.can_use_stage(cfg) else None)
    if late_join is not None:
        late_join()
        if namespaces & sc.CLONE_NEWCGROUP:
            sc.unshare(sc.CLONE_NEWCGROUP)


def plug_interface(cfg: ContainerConfig, host_net: tuple[socket.socket, int] | None) -> None:
    from isobox.net import rtnl

    if host_net is None:
        raise RuntimeError("no handle on the host's network namespace to connect the container to")
    nic = cfg.interface
    assert nic is not None
    rtnl.make_interface(host_net[0], host_net[1], nic.host_link, nic.bridge_index, nic.mac, nic.address,
                        nic.prefixlen, nic.gateway)
