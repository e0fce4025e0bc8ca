"""Pure logic of networking: -p parsing, the IPAM, subnet choice, the nftables ruleset."""

from __future__ import annotations

import ipaddress
import subprocess
import threading
from pathlib import Path

import pytest

from isobox.errors import Conflict, InvalidArgument
from isobox.net import nft
from isobox.net.manager import _free_subnet
from isobox.net.ports import PortMapping, parse_publish
from isobox.net.store import NetworkRecord, NetworkStore, mac_for, parse_subnet
from isobox.spec import WorkloadSpec
from isobox.state import ContainerRecord, StateStore


@pytest.mark.parametrize("text, expected", [
    ("80", [PortMapping(80)]),
    ("8080:80", [PortMapping(80, 8080)]),
    ("127.0.0.1:8080:80/udp", [PortMapping(80, 8080, "udp", "127.0.0.1")]),
    ("127.0.0.1::80", [PortMapping(80, 0, "tcp", "127.0.0.1")]),
    ("9000-9001:90-91", [PortMapping(90, 9000), PortMapping(91, 9001)]),
    ("53/UDP", [PortMapping(53, 0, "udp")]),
])
def test_publish_forms_docker_accepts(text: str, expected: list[PortMapping]) -> None:
    assert parse_publish(text) == expected


@pytest.mark.parametrize("text", ["99999:80", "80:0", "0", "abc", "", "1.2.3:80:80", "80/sctp", "8000-8002:80-81",
                                  "90-80", "::1:80:80"])
def test_publish_rejects_what_docker_rejects(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_publish(text)


def test_spec_carries_ports_and_refuses_them_without_a_network() -> None:
    spec = WorkloadSpec.from_dict({"image": "busybox", "ports": [{"container_port": 80, "host_port": 8080}]})
    assert spec.validate().ports == [PortMapping(80, 8080)]
    assert WorkloadSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(InvalidArgument, match="cannot publish"):
        WorkloadSpec.from_dict({"image": "busybox", "network": "none", "ports": [{"container_port": 80}]}).validate()
    with pytest.raises(InvalidArgument, match="unknown field"):
        WorkloadSpec.from_dict({"image": "busybox", "ports": [{"container_port": 80, "hostport": 1}]})
    assert WorkloadSpec(image="x").network == "default"


@pytest.fixture
def store(tmp_path: Path) -> NetworkStore:
    return NetworkStore(StateStore(tmp_path / "db.sqlite"))


def _container(nets: NetworkStore, cid: str) -> None:
    nets.store.add_container(ContainerRecord(id=cid, name=cid, image_id="i", image_ref="i", spec={}))


def test_ipam_hands_out_each_address_once_even_under_threads(store: NetworkStore) -> None:
    with store.store.write() as db:
        db.execute("INSERT INTO images (id, config, size, created_at) VALUES ('i', '{}', 0, 0)")
    net = NetworkRecord("n", "id", "br", "10.1.0.0/28", "10.1.0.1")
    store.add_network(net)
    ids = [f"c{i}" for i in range(13)]
    for cid in ids:
        _container(store, cid)
    got: list[str] = []
    errors: list[Exception] = []

    def grab(cid: str) -> None:
        try:
            got.append(store.allocate(net, cid, f"l{cid}", [cid], []).address)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=grab, args=(cid,)) for cid in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # a /28 has 14 hosts; the gateway takes one: 13 leases, all distinct, none the gateway
    assert not errors and len(got) == 13 and len(set(got)) == 13 and "10.1.0.1" not in got
    _container(store, "late")
    with pytest.raises(Conflict, match="no free address"):
        store.allocate(net, "late", "llate", [], [])
    freed = store.leases_of("c3")[0].address
    store.release("c3")
    assert store.allocate(net, "late", "llate", [], []).address == freed  # the one free address
    assert len({lease.address for lease in store.leases("n")}) == 13
    with pytest.raises(Conflict):
        store.delete_network("n")  # in use


def test_network_names_subnets_and_bridges_are_unique(store: NetworkStore) -> None:
    store.add_network(NetworkRecord("a", "1", "br1", "10.2.0.0/24", "10.2.0.1"))
    for rec in (NetworkRecord("a", "2", "br2", "10.3.0.0/24", "10.3.0.1"),
                NetworkRecord("b", "3", "br1", "10.4.0.0/24", "10.4.0.1"),
                NetworkRecord("c", "4", "br3", "10.2.0.0/24", "10.2.0.1")):
        with pytest.raises(Conflict, match="already in use"):
            store.add_network(rec)


def test_subnets() -> None:
    assert str(parse_subnet("10.9.0.0/16")) == "10.9.0.0/16"
    for bad in ("10.9.0.1/16", "fd00::/64", "10.0.0.0/30", "nonsense"):
        with pytest.raises(InvalidArgument):
            parse_subnet(bad)
    taken = [ipaddress.IPv4Network("10.213.0.0/24"), ipaddress.IPv4Network("10.213.1.0/24"),
             ipaddress.IPv4Network("10.213.2.0/23")]
    assert str(_free_subnet(taken)) == "10.213.4.0/24"
    assert mac_for("10.213.0.2") == "0a:1b:0a:d5:00:02"


def test_ruleset_isolates_networks_and_publishes_ports() -> None:
    text = nft.render([nft.NetRule("isobox0", "10.213.0.0/24"), nft.NetRule("isobox1", "10.213.1.0/24", True)],
                      [nft.Dnat("tcp", 8080, "10.213.0.2", 80), nft.Dnat("udp", 53, "10.213.0.3", 53, "127.0.0.1")])
    assert 'iifname "isobox0" oifname "isobox0" accept' in text
    assert 'iifname { "isobox0", "isobox1" } oifname { "isobox0", "isobox1" } drop' in text
    assert "tcp dport 8080 dnat ip to 10.213.0.2:80" in text
    assert "ip daddr 127.0.0.1 udp dport 53 dnat ip to 10.213.0.3:53" in text
    assert 'ip saddr 10.213.0.0/24 oifname != "isobox0" masquerade' in text
    assert "10.213.1.0/24 oifname" not in text  # internal: no NAT out
    assert 'iifname "isobox1" drop' in text
    # and nft itself accepts it (a dry run: -c checks without applying)
    check = subprocess.run(["nft", "-c", "-f", "-"], input=text, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_the_dnsmasq_holding_a_gateway_is_named(tmp_path: Path) -> None:
    """When dnsmasq cannot listen on the gateway, the error's hint names the dnsmasq that
    does (another state root's, its pid file showing which)."""
    from isobox.net.dns import other_server

    def proc(pid: str, *args: str) -> None:
        (tmp_path / pid).mkdir()
        (tmp_path / pid / "cmdline").write_bytes(b"\0".join(a.encode() for a in args) + b"\0")

    proc("12", "/usr/sbin/dnsmasq", "--pid-file=/tmp/other/run/net/isobox/dnsmasq.pid",
         "--listen-address=10.213.0.1")
    proc("13", "/usr/sbin/dnsmasq", "--listen-address=10.99.0.1")
    proc("14", "/bin/sh", "-c", "--listen-address=10.213.0.1")
    (tmp_path / "self").mkdir()
    assert other_server("10.213.0.1", tmp_path) == (12, "/tmp/other/run/net/isobox/dnsmasq.pid")
    assert other_server("10.99.0.1", tmp_path) == (13, None)
    assert other_server("10.1.0.1", tmp_path) is None
