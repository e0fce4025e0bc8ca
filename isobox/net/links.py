"""The daemon's side of the links, through pyroute2: bridges, VM taps, and removal of leftovers.

(A container's veth pair is made by the container's own init, see ``rtnl.py``.)  pyroute2's
IPRoute drives an asyncio loop of its own and cannot run in a thread whose loop is running
(the daemon's), so every call goes to one worker thread that owns the socket.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from isobox.errors import RuntimeFailure

# Every link isobox makes starts with this; a leftover is one whose owner is gone.
LINK_PREFIX = "ibx"

T = TypeVar("T")
# One worker (and socket) per network namespace of the calling thread: a worker thread is born
# in its creator's namespace, and a process may drive several (tests do).
_workers: dict[int, tuple[ThreadPoolExecutor, list[Any]]] = {}
_workers_lock = threading.Lock()


def _call(fn: Callable[[Any], T]) -> T:
    netns = os.stat("/proc/thread-self/ns/net").st_ino
    with _workers_lock:
        if netns not in _workers:
            _workers[netns] = (ThreadPoolExecutor(max_workers=1, thread_name_prefix="netlink"), [])
        worker, held = _workers[netns]

    def run() -> T:
        if not held:
            from pyroute2 import IPRoute  # ~160 ms to import: only once networking is used

            held.append(IPRoute())
        return fn(held[0])

    return worker.submit(run).result()


def _index(name: str) -> int | None:
    # One ioctl in the calling thread's namespace; pyroute2's link_lookup dumps every link (~3 ms).
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return None


def index_of(name: str) -> int | None:
    return _call(lambda _ipr: _index(name))


def _write_sysctl(path: str, value: str) -> None:
    with open(path, "w") as fh:
        fh.write(value)


def ensure_bridge(name: str, gateway: str, prefixlen: int, mac: str) -> int:
    """The bridge ``name`` with the gateway address, up; returns its index.  Idempotent."""
    def make(ipr: Any) -> int:
        found = ipr.link_lookup(ifname=name)
        if not found:
            # A fixed MAC: a bridge otherwise takes its lowest port's, changing as ports come and go.
            ipr.link("add", ifname=name, kind="bridge", address=mac)
            found = ipr.link_lookup(ifname=name)
        index = found[0]
        have = {(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=index, family=2)}
        if (gateway, prefixlen) not in have:
            ipr.addr("add", index=index, address=gateway, prefixlen=prefixlen)
        ipr.link("set", index=index, state="up")
        return int(index)

    try:
        index = _call(make)
    except Exception as exc:  # pyroute2's NetlinkError and OSError alike
        raise RuntimeFailure(f"cannot set up bridge {name}: {exc}") from None
    # Routing between bridges and NAT need forwarding; published ports on 127.0.0.1 need the
    # bridge to accept loopback-sourced packets after DNAT (as netavark does).
    _write_sysctl("/proc/sys/net/ipv4/ip_forward", "1")
    _write_sysctl(f"/proc/sys/net/ipv4/conf/{name}/route_localnet", "1")
    return index


def add_tap(name: str, bridge_index: int) -> None:
    """A persistent tap in the bridge, up, for QEMU to open by name.  (The guest's MAC is its
    virtio-net device's, not the tap's: the bridge must not see one MAC on two ports.)"""
    def make(ipr: Any) -> None:
        ipr.link("add", ifname=name, kind="tuntap", mode="tap")
        index = ipr.link_lookup(ifname=name)[0]
        ipr.link("set", index=index, master=bridge_index, state="up")

    try:
        _call(make)
    except Exception as exc:
        delete(name)
        raise RuntimeFailure(f"cannot make tap device {name}: {exc}") from None


def delete(name: str) -> None:
    """Remove a link; a link already gone is fine."""
    def remove(ipr: Any) -> None:
        index = _index(name)
        if index is not None:
            try:
                ipr.link("del", index=index)
            except Exception as exc:  # NetlinkError
                if getattr(exc, "code", None) != errno.ENODEV:
                    raise

    _call(remove)


def names(prefix: str = LINK_PREFIX) -> list[str]:
    return _call(lambda ipr: [name for link in ipr.get_links()
                              if (name := link.get_attr("IFLA_IFNAME") or "").startswith(prefix)])
