"""Just enough rtnetlink, stdlib only, for a container's init to take and configure its interface.

The daemon makes links with pyroute2 (``links.py``).  This module is for the other side: the
pooled init of a container start, a forked process that has not exec'd yet, where importing
pyroute2 (~160 ms) is out of the question and a few fixed messages are all it needs.

The init makes the veth pair itself, from inside its namespace, with the peer born in the
host's: moving an existing link between namespaces costs ~16 ms here (the kernel waits for an
RCU grace period), creating one across namespaces ~1 ms.  Every request asks for an ACK, so a
failure surfaces as an OSError.
"""

from __future__ import annotations

import os
import socket
import struct

NETLINK_ROUTE = 0
RTM_NEWLINK, RTM_NEWADDR, RTM_NEWROUTE = 16, 20, 24
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
NLMSG_ERROR = 2
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MASTER, IFLA_LINKINFO, IFLA_NET_NS_FD = 1, 3, 10, 18, 28
IFLA_INFO_KIND, IFLA_INFO_DATA, VETH_INFO_PEER = 1, 2, 1
NLA_F_NESTED = 0x8000
IFA_ADDRESS, IFA_LOCAL, IFA_BROADCAST = 1, 2, 4
RTA_GATEWAY, RTA_OIF = 5, 4
IFF_UP = 0x1
RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST = 254, 3, 0, 1

_NLMSGHDR = struct.Struct("=IHHII")
_IFINFOMSG = struct.Struct("=BxHiII")
_IFADDRMSG = struct.Struct("=BBBBI")
_RTMSG = struct.Struct("=BBBBBBBBI")


def open_socket() -> socket.socket:
    """A route socket in the calling thread's network namespace (it stays bound to it)."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
    sock.bind((0, 0))
    return sock


def _attr(kind: int, data: bytes) -> bytes:
    size = 4 + len(data)
    return struct.pack("=HH", size, kind) + data + b"\0" * (-size % 4)


def _request(sock: socket.socket, kind: int, flags: int, body: bytes) -> None:
    seq = int.from_bytes(os.urandom(4), "little")
    sock.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, NLM_F_REQUEST | NLM_F_ACK | flags, seq, 0) + body)
    while True:
        data = sock.recv(65536)
        offset = 0
        while offset + _NLMSGHDR.size <= len(data):
            length, mtype, _flags, mseq, _pid = _NLMSGHDR.unpack_from(data, offset)
            if mseq == seq and mtype == NLMSG_ERROR:
                error = -struct.unpack_from("=i", data, offset + _NLMSGHDR.size)[0]
                if error:
                    raise OSError(error, f"netlink: {os.strerror(error)}")
                return
            offset += max(length, _NLMSGHDR.size) + (-length % 4)


def _mac(text: str) -> bytes:
    return bytes(int(part, 16) for part in text.split(":"))


def add_veth(sock: socket.socket, name: str, mac: str, peer: str, peer_netns_fd: int) -> None:
    """A veth pair: ``name`` here (with ``mac``), ``peer`` born in the namespace of the fd."""
    peer_info = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _attr(IFLA_IFNAME, peer.encode() + b"\0")
    peer_info += _attr(IFLA_NET_NS_FD, struct.pack("=I", peer_netns_fd))
    info = _attr(IFLA_INFO_KIND, b"veth\0") + _attr(IFLA_INFO_DATA | NLA_F_NESTED, _attr(VETH_INFO_PEER, peer_info))
    body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _attr(IFLA_IFNAME, name.encode() + b"\0")
    body += _attr(IFLA_ADDRESS, _mac(mac)) + _attr(IFLA_LINKINFO | NLA_F_NESTED, info)
    _request(sock, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body)


def enslave_up(sock: socket.socket, name: str, master_index: int) -> None:
    """Put the link ``name`` (looked up by name) into the bridge ``master_index`` and up."""
    body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, IFF_UP, IFF_UP) + _attr(IFLA_IFNAME, name.encode() + b"\0")
    body += _attr(IFLA_MASTER, struct.pack("=I", master_index))
    _request(sock, RTM_NEWLINK, 0, body)


def set_up(sock: socket.socket, index: int) -> None:
    _request(sock, RTM_NEWLINK, 0, _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, IFF_UP, IFF_UP))


def add_address(sock: socket.socket, index: int, address: str, prefixlen: int) -> None:
    addr = socket.inet_aton(address)
    host_bits = (1 << (32 - prefixlen)) - 1
    broadcast = struct.pack("!I", struct.unpack("!I", addr)[0] | host_bits)
    body = _IFADDRMSG.pack(socket.AF_INET, prefixlen, 0, RT_SCOPE_UNIVERSE, index)
    body += _attr(IFA_LOCAL, addr) + _attr(IFA_ADDRESS, addr) + _attr(IFA_BROADCAST, broadcast)
    _request(sock, RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body)


def add_default_route(sock: socket.socket, index: int, gateway: str) -> None:
    body = _RTMSG.pack(socket.AF_INET, 0, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST, 0)
    body += _attr(RTA_GATEWAY, socket.inet_aton(gateway)) + _attr(RTA_OIF, struct.pack("=I", index))
    _request(sock, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, body)


def make_interface(host: socket.socket, host_ns_fd: int, host_link: str, bridge_index: int, mac: str,
                   address: str, prefixlen: int, gateway: str, name: str = "eth0") -> None:
    """In the container's fresh network namespace: ``name`` with its address and default
    route, its peer ``host_link`` in the host namespace (``host``, a route socket opened there,
    and ``host_ns_fd``), up in the bridge ``bridge_index``."""
    with open_socket() as sock:
        add_veth(sock, name, mac, host_link, host_ns_fd)
        enslave_up(host, host_link, bridge_index)
        index = socket.if_nametoindex(name)
        set_up(sock, index)
        add_address(sock, index, address, prefixlen)
        add_default_route(sock, index, gateway)
