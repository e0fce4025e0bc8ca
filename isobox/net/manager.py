"""Networks as the engine sees them: create/list/inspect/remove, attach and detach workloads,
and the reconciliation that leaves nothing behind after a crash.

Kernel objects follow the state store, never the other way round: a lease is written before
its link exists and a link is removed before its lease, so after a crash at any point
``reconcile`` finds either a lease without a live owner (released, its link removed) or a
link without a lease (removed).  The nftables table and the DNS hosts files are always
rendered whole from the store.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import secrets
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from isobox.errors import Conflict, InvalidArgument, IsoboxError
from isobox.net import dns, links, nft
from isobox.net.store import Lease, NetworkRecord, NetworkStore, parse_subnet
from isobox.state import StateStore

DEFAULT_NETWORK = "isobox"
DEFAULT_BRIDGE = "isobox0"
# Not Docker's (172.17.0.0/16, 172.18-31.x, 192.168.x) nor Podman's (10.88.0.0/16, 10.89.x.0/24).
DEFAULT_SUBNET = "10.213.0.0/24"
ALIASES = ("default", "bridge", DEFAULT_NETWORK)
log = logging.getLogger("isobox.net")
BRIDGE_PREFIX = "isobox"


def default_subnet() -> str:
    return os.environ.get("ISOBOX_SUBNET", DEFAULT_SUBNET)


TAP_PREFIX = f"{links.LINK_PREFIX}t"


def link_name(kind: str) -> str:
    """``ibxh``/``ibxt`` + 10 random hex digits, new for every start (within IFNAMSIZ, 15): the
    kernel tears a dead container's namespace down asynchronously, so its veth may outlive it a
    little, and a restart must not collide with it.  The lease records the name."""
    return f"{links.LINK_PREFIX}{'t' if kind == 'tap' else 'h'}{secrets.token_hex(5)}"


@dataclass
class Attachment:
    """A workload's place on a network, for the runtime that plugs it in."""

    network: NetworkRecord
    lease: Lease
    bridge_index: int

    @property
    def address(self) -> str:
        return self.lease.address

    @property
    def gateway(self) -> str:
        return self.network.gateway

    @property
    def prefixlen(self) -> int:
        return self.network.prefixlen

    def describe(self) -> dict[str, Any]:
        return describe_lease(self.network, self.lease)


def describe_lease(net: NetworkRecord, lease: Lease) -> dict[str, Any]:
    return {"NetworkID": net.id, "IPAddress": lease.address, "IPPrefixLen": net.prefixlen,
            "Gateway": net.gateway, "MacAddress": lease.mac, "DNSNames": lease.hostnames,
            "Link": lease.link}


def ports_view(leases: list[Lease]) -> dict[str, list[dict[str, str]]]:
    """Docker's NetworkSettings.Ports shape: {"80/tcp": [{"HostIp": ..., "HostPort": ...}]}."""
    out: dict[str, list[dict[str, str]]] = {}
    for lease in leases:
        for p in lease.ports:
            out.setdefault(f"{p['container_port']}/{p['protocol']}", []).append(
                {"HostIp": p["host_ip"] or "0.0.0.0", "HostPort": str(p["host_port"])})
    return out


class NetworkManager:
    def __init__(self, store: StateStore) -> None:
        self.db = NetworkStore(store)
        self._lock = threading.RLock()
        self._rules_applied = False  # by this process: the table may predate it, or not exist
        self._bridges: dict[str, int] = {}  # bridges this process has ensured: name -> ifindex
        self._dns_up: set[str] = set()  # networks whose dnsmasq this process has seen running
        self._dns_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dns")
        with contextlib.suppress(Conflict):
            self._add(DEFAULT_NETWORK, DEFAULT_BRIDGE, parse_subnet(default_subnet()), internal=False)

    # -- networks -----------------------------------------------------------------------------

    def resolve(self, name: str) -> NetworkRecord:
        return self.db.find_network(DEFAULT_NETWORK if name in ALIASES else name)

    def _add(self, name: str, bridge: str, subnet: ipaddress.IPv4Network, internal: bool) -> NetworkRecord:
        gateway = str(next(subnet.hosts()))
        rec = NetworkRecord(name, secrets.token_hex(32), bridge, str(subnet), gateway, internal)
        self.db.add_network(rec)
        return rec

    def create(self, name: str, subnet: str | None = None, internal: bool = False) -> NetworkRecord:
        from isobox.spec import NAME_RE

        if not NAME_RE.match(name) or name in ("none", "host", *ALIASES):
            raise InvalidArgument(f"invalid network name {name!r}")
        with self._lock:
            existing = self.db.networks()
            if any(n.name == name for n in existing):
                raise Conflict(f"network with name {name} already exists")
            taken = [ipaddress.IPv4Network(n.subnet) for n in existing] + _host_routes()
            if subnet is not None:
                wanted = parse_subnet(subnet)
                clash = next((t for t in taken if wanted.overlaps(t)), None)
                if clash is not None:
                    raise Conflict(f"subnet {wanted} overlaps {clash}, in use on this host")
            else:
                wanted = _free_subnet(taken)
            used = {n.bridge for n in existing}
            bridge = next(f"{BRIDGE_PREFIX}{i}" for i in range(1, 1000) if f"{BRIDGE_PREFIX}{i}" not in used)
            rec = self._add(name, bridge, wanted, internal)
            try:
                self._apply_rules()  # isolated from the other networks before anything joins it
            except BaseException:
                self.db.delete_network(name)
                raise
            return rec

    def networks(self) -> list[NetworkRecord]:
        return self.db.networks()

    def inspect(self, ref: str) -> dict[str, Any]:
        net = self.resolve(ref)
        return {
            "Name": net.name, "Id": net.id, "Created": net.created_at, "Driver": "bridge",
            "Bridge": net.bridge, "Internal": net.internal, "DNS": net.gateway,
            "Subnets": [{"Subnet": net.subnet, "Gateway": net.gateway}],
            "Containers": {lease.container_id: {"IPv4Address": f"{lease.address}/{net.prefixlen}",
                                                "MacAddress": lease.mac, "Names": lease.hostnames}
                           for lease in self.db.leases(net.name)},
        }

    def remove(self, ref: str) -> str:
        net = self.resolve(ref)
        if net.name == DEFAULT_NETWORK:
            raise InvalidArgument(f"network {net.name} is the default network and cannot be removed")
        with self._lock:
            self.db.delete_network(net.name)  # refuses while leases exist: nothing changed then
            dns.stop(net.name)
            links.delete(net.bridge)
            self._bridges.pop(net.name, None)
            self._dns_up.discard(net.name)
            self._apply_rules()
        return net.name

    # -- workloads ----------------------------------------------------------------------------

    def attach(self, container_id: str, network: str, hostnames: list[str], ports: list[dict[str, Any]],
               kind: str) -> Attachment:
        net = self.resolve(network)
        with self._lock:
            resolved = self._claim_ports(ports)
            index = self._bridges.get(net.name)
            if index is None:
                index = self._bridges[net.name] = links.ensure_bridge(net.bridge, net.gateway, net.prefixlen,
                                                                      _bridge_mac(net))
            lease = self.db.allocate(net, container_id, link_name(kind), hostnames, resolved)
            try:
                if kind == "tap":
                    links.add_tap(lease.link, index)
                # Off the start's path (~1 ms) once this network's dnsmasq is known to run: the
                # name is served a moment after the workload starts.  The first time we wait, so
                # that a dnsmasq that cannot start fails the start.
                refresh = self._dns_worker.submit(self._refresh_dns, net, net.name not in self._dns_up)
                if net.name not in self._dns_up:
                    refresh.result()
                if resolved or not self._rules_applied:
                    self._apply_rules()
            except BaseException:
                self.detach(container_id)
                raise
        return Attachment(net, lease, index)

    def start_failed(self, container_id: str) -> None:
        """Undo an attach whose workload did not start, and ensure the bridges afresh next time
        (someone may have removed one under us)."""
        self._bridges.clear()
        self.detach(container_id)

    def detach(self, container_id: str, only: set[str] | None = None) -> None:
        """Release what the workload held (``only``: the leases on these links); safe to call
        twice and for workloads never attached."""
        with self._lock:
            leases = [lease for lease in self.db.leases_of(container_id) if only is None or lease.link in only]
            for lease in leases:
                if lease.link.startswith(TAP_PREFIX):
                    with contextlib.suppress(IsoboxError, OSError):
                        links.delete(lease.link)
                # A veth goes with the container's network namespace: the kernel removes it ~10 ms
                # after the last process, and a delete racing that teardown took ~20 ms here.
                # Its name is never reused; reconcile() removes one that outlives its lease.
            if not leases:
                return
            self.db.release(container_id, {lease.link for lease in leases})
            for name in {lease.network for lease in leases}:
                self._dns_worker.submit(self._write_hosts, name).result()
            if any(lease.ports for lease in leases):
                self._apply_rules()

    def leases_of(self, container_id: str) -> list[Lease]:
        return self.db.leases_of(container_id)

    def describe(self, container_id: str) -> dict[str, Any]:
        leases = self.db.leases_of(container_id)
        nets = {n.name: n for n in self.db.networks()}
        return {"Networks": {lease.network: describe_lease(nets[lease.network], lease) for lease in leases
                             if lease.network in nets},
                "Ports": ports_view(leases)}

    def reconcile(self, live: set[str]) -> None:
        """At daemon start: leases of workloads that are gone, links nobody owns, and the
        DNS and nftables state re-rendered from what remains."""
        with self._lock:
            for lease in self.db.leases():
                if lease.container_id not in live:
                    self.db.release(lease.container_id)
            owned = {lease.link for lease in self.db.leases()}
            for name in links.names():
                if name not in owned:
                    with contextlib.suppress(Exception):
                        links.delete(name)
            for net in self.db.networks():
                if links.index_of(net.bridge) is not None:
                    self._dns_worker.submit(self._refresh_dns, net, False).result()
            self._apply_rules()

    # -- internals ----------------------------------------------------------------------------

    # Every DNS file write happens on the one dns worker thread (callers that need it done wait
    # for it): the files are rendered from the store and replaced through one temporary name, so
    # two writers at once could publish a half-written file or lose the newer one.

    def _refresh_dns(self, net: NetworkRecord, raise_errors: bool) -> None:
        try:
            self._write_hosts(net.name)  # first: a dnsmasq started next reads the current files
            dns.ensure(net.name, net.bridge, net.gateway, net.subnet)
        except (IsoboxError, OSError) as exc:
            self._dns_up.discard(net.name)  # the next start checks it again, synchronously
            if raise_errors:
                raise
            log.warning("DNS of network %s not refreshed: %s", net.name, exc)
        else:
            self._dns_up.add(net.name)

    def _write_hosts(self, network: str) -> None:
        dns.write_hosts(network, [(lease.address, lease.hostnames, lease.mac) for lease in self.db.leases(network)])
        dns.reload(network)

    def _apply_rules(self) -> None:
        nets = self.db.networks()
        by_name = {n.name: n for n in nets}
        dnats = [nft.Dnat(p["protocol"], p["host_port"], lease.address, p["container_port"], p["host_ip"])
                 for lease in self.db.leases() if lease.network in by_name for p in lease.ports]
        nft.apply(nft.render([nft.NetRule(n.bridge, n.subnet, n.internal) for n in nets], dnats))
        self._rules_applied = True

    def _claim_ports(self, ports: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Host ports for a start: fixed ones checked against other workloads and the host's
        listeners, empty ones given a free port (Docker's -p PORT)."""
        claimed = {(p["protocol"], p["host_port"]) for lease in self.db.leases() for p in lease.ports}
        out = []
        for p in ports:
            proto, host_ip = p.get("protocol", "tcp"), p.get("host_ip", "")
            port = int(p.get("host_port") or 0)
            if port and (proto, port) in claimed:
                raise Conflict(f"Bind for {host_ip or '0.0.0.0'}:{port} failed: port is already allocated")
            port = _probe_port(proto, host_ip, port, claimed)
            claimed.add((proto, port))
            out.append({"container_port": int(p["container_port"]), "host_port": port, "protocol": proto,
                        "host_ip": host_ip})
        return out


def _bridge_mac(net: NetworkRecord) -> str:
    octets = ipaddress.ip_address(net.gateway).packed
    return "0a:1a:" + ":".join(f"{b:02x}" for b in octets)


def _probe_port(proto: str, host_ip: str, port: int, claimed: set[tuple[str, int]]) -> int:
    """Bind the port (0: any) to see the host does not already use it; returns the port."""
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    for _ in range(20):
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind((host_ip or "0.0.0.0", port))
            except OSError as exc:
                if exc.errno == errno.EADDRNOTAVAIL:
                    raise InvalidArgument(f"host address {host_ip} is not an address of this host") from None
                if exc.errno == errno.EADDRINUSE:
                    raise Conflict(f"Bind for {host_ip or '0.0.0.0'}:{port} failed: port is already allocated") from None
                raise
            got = int(sock.getsockname()[1])
        if port or (proto, got) not in claimed:
            return got
    raise Conflict("no free host port found")


def _host_routes() -> list[ipaddress.IPv4Network]:
    """The IPv4 networks this host already routes (so a new subnet does not shadow them)."""
    out: list[ipaddress.IPv4Network] = []
    with contextlib.suppress(OSError), open("/proc/net/route") as fh:
        next(fh)
        for line in fh:
            fields = line.split()
            dest, mask = int(fields[1], 16), int(fields[7], 16)
            if mask == 0:
                continue  # the default route overlaps everything
            addr = socket.inet_ntoa(dest.to_bytes(4, "little"))
            prefix = bin(mask).count("1")
            out.append(ipaddress.IPv4Network(f"{addr}/{prefix}", strict=False))
    return out


def _free_subnet(taken: list[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    base = ipaddress.IPv4Network(default_subnet(), strict=False)
    first = int(base.network_address) >> 8 << 8
    for i in range(1, 256):
        candidate = ipaddress.IPv4Network(f"{ipaddress.IPv4Address(first + i * 256)}/24")
        if not any(candidate.overlaps(t) for t in taken):
            return candidate
    raise Conflict("no free /24 subnet left for a new network", hint="give one with --subnet")


