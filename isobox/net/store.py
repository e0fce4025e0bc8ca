"""Networks and address leases in the state store: the IPAM.

A lease's primary key is (network, address), so SQLite itself refuses a duplicate address,
whatever a crash or a race does; allocation picks the lowest free address inside the same
``BEGIN IMMEDIATE`` transaction that inserts it.  A lease names its container (cascade on
delete) and the host-side link made for it, which is how leftovers are found after a crash.
"""

from __future__ import annotations

import ipaddress
import json
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

from isobox.errors import Conflict, InvalidArgument, NotFound
from isobox.state import StateStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS networks (
    name        TEXT PRIMARY KEY,
    id          TEXT NOT NULL UNIQUE,
    bridge      TEXT NOT NULL UNIQUE,
    subnet      TEXT NOT NULL UNIQUE,
    gateway     TEXT NOT NULL,
    internal    INTEGER NOT NULL DEFAULT 0,
    created_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS leases (
    network      TEXT NOT NULL REFERENCES networks(name),
    address      TEXT NOT NULL,
    container_id TEXT NOT NULL REFERENCES containers(id) ON DELETE CASCADE,
    link         TEXT NOT NULL UNIQUE,   -- the host-side veth or tap
    mac          TEXT NOT NULL,
    hostnames    TEXT NOT NULL,          -- JSON list: names the embedded DNS answers for
    ports        TEXT NOT NULL,          -- JSON list of published ports, host ports resolved
    PRIMARY KEY (network, address),
    UNIQUE (container_id, network)
);
"""


@dataclass
class NetworkRecord:
    name: str
    id: str
    bridge: str
    subnet: str
    gateway: str
    internal: bool = False
    created_at: float = field(default_factory=time.time)

    @property
    def prefixlen(self) -> int:
        return ipaddress.ip_network(self.subnet).prefixlen


@dataclass
class Lease:
    network: str
    address: str
    container_id: str
    link: str
    mac: str
    hostnames: list[str]
    ports: list[dict[str, Any]]


def mac_for(address: str) -> str:
    """A locally administered MAC derived from the address: a reused address keeps its MAC, so
    no neighbour's ARP cache points at a stale one."""
    octets = ipaddress.ip_address(address).packed
    return "0a:1b:" + ":".join(f"{b:02x}" for b in octets)


class NetworkStore:
    def __init__(self, store: StateStore) -> None:
        self.store = store
        with store.write() as db:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)

    # -- networks -----------------------------------------------------------------------------

    def add_network(self, rec: NetworkRecord) -> None:
        try:
            with self.store.write() as db:
                db.execute("INSERT INTO networks (name, id, bridge, subnet, gateway, internal, created_at) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (rec.name, rec.id, rec.bridge, rec.subnet, rec.gateway, int(rec.internal),
                            rec.created_at))
        except sqlite3.IntegrityError as exc:
            column = str(exc).rsplit(".", 1)[-1]
            value = {"subnet": rec.subnet, "bridge": rec.bridge}.get(column, rec.name)
            raise Conflict(f"network {column if column in ('subnet', 'bridge') else 'name'} {value} is already in use",
                           hint="isobox network ls shows the networks") from None

    def networks(self) -> list[NetworkRecord]:
        return [_network(r) for r in self.store.query("SELECT * FROM networks ORDER BY created_at")]

    def find_network(self, ref: str) -> NetworkRecord:
        rows = self.store.query("SELECT * FROM networks WHERE name = ? OR id = ?", (ref, ref))
        if not rows and len(ref) >= 4:
            rows = self.store.query("SELECT * FROM networks WHERE id LIKE ?", (ref + "%",))
        if len(rows) != 1:
            raise NotFound(f"no such network: {ref}" if not rows else f"network id prefix {ref!r} is ambiguous")
        return _network(rows[0])

    def delete_network(self, name: str) -> None:
        with self.store.write() as db:
            users = db.execute("SELECT COUNT(*) FROM leases WHERE network = ?", (name,)).fetchone()[0]
            if users:
                raise Conflict(f"network {name} is in use by {users} workload(s)",
                               hint="stop or remove them first (isobox network inspect shows them)")
            db.execute("DELETE FROM networks WHERE name = ?", (name,))

    # -- leases -------------------------------------------------------------------------------

    def allocate(self, net: NetworkRecord, container_id: str, link: str, hostnames: list[str],
                 ports: list[dict[str, Any]]) -> Lease:
        """The lowest free address of ``net`` (not the network, gateway or broadcast address)."""
        subnet = ipaddress.ip_network(net.subnet)
        with self.store.write() as db:
            taken = {r[0] for r in db.execute("SELECT address FROM leases WHERE network = ?", (net.name,))}
            taken.add(net.gateway)
            for host in subnet.hosts():
                address = str(host)
                if address not in taken:
                    break
            else:
                raise Conflict(f"network {net.name} has no free address left ({net.subnet})")
            lease = Lease(net.name, address, container_id, link, mac_for(address), hostnames, ports)
            try:
                db.execute("INSERT INTO leases (network, address, container_id, link, mac, hostnames, ports) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (lease.network, lease.address, container_id, link, lease.mac,
                            json.dumps(hostnames), json.dumps(ports)))
            except sqlite3.IntegrityError as exc:
                raise Conflict(f"cannot attach to network {net.name}: {exc}") from None
        return lease

    def release(self, container_id: str, links: set[str] | None = None) -> list[Lease]:
        """The container's leases (only those on ``links`` when given: a later start's stay)."""
        with self.store.write() as db:
            rows = [r for r in db.execute("SELECT * FROM leases WHERE container_id = ?", (container_id,))
                    if links is None or r["link"] in links]
            db.executemany("DELETE FROM leases WHERE link = ?", [(r["link"],) for r in rows])
        return [_lease(r) for r in rows]

    def leases(self, network: str | None = None) -> list[Lease]:
        if network is None:
            return [_lease(r) for r in self.store.query("SELECT * FROM leases ORDER BY network, address")]
        return [_lease(r) for r in self.store.query("SELECT * FROM leases WHERE network = ? ORDER BY address",
                                                    (network,))]

    def leases_of(self, container_id: str) -> list[Lease]:
        return [_lease(r) for r in self.store.query("SELECT * FROM leases WHERE container_id = ?", (container_id,))]


def _network(row: sqlite3.Row) -> NetworkRecord:
    return NetworkRecord(row["name"], row["id"], row["bridge"], row["subnet"], row["gateway"],
                         bool(row["internal"]), row["created_at"])


def _lease(row: sqlite3.Row) -> Lease:
    return Lease(row["network"], row["address"], row["container_id"], row["link"], row["mac"],
                 json.loads(row["hostnames"]), json.loads(row["ports"]))


def parse_subnet(text: str) -> ipaddress.IPv4Network:
    try:
        subnet = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise InvalidArgument(f"invalid subnet {text!r}: {exc}") from None
    if not isinstance(subnet, ipaddress.IPv4Network):
        raise InvalidArgument(f"invalid subnet {text!r}: only IPv4 subnets for now")
    if not 8 <= subnet.prefixlen <= 29:
        raise InvalidArgument(f"invalid subnet {text!r}: the prefix length must be 8-29")
    return subnet
