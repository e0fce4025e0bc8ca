"""Networks for real: bridges, addresses, the embedded DNS, published ports, isolation between
networks, and cleanup -- all inside the test run's own network namespace (conftest), with the
only traffic between this process, a namespace it makes as "outside", and isobox's workloads.

(busybox's wget crashes with -T here, so timeouts come from busybox's ``timeout``.)
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import TEST_NETNS, TEST_NETNS_PATH, Isobox, in_netns

HOST_ADDR = "198.51.100.1"  # TEST-NET-2: the test namespace's "public" address
OUTSIDE_ADDR = "198.51.100.2"


def inspect(box: Isobox, ref: str) -> dict[str, Any]:
    return json.loads(box.cli("inspect", ref, check=True).stdout)[0]


def detached(box: Isobox, *args: str) -> str:
    return box.cli("run", "-d", *args, check=True).stdout.strip()


def links() -> list[str]:
    """The links of the session daemon's network namespace."""
    out = subprocess.run(["ip", "-n", TEST_NETNS, "-o", "link"], capture_output=True, text=True, check=True).stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]


def ruleset() -> str:
    return subprocess.run(["nsenter", f"--net={TEST_NETNS_PATH}", "nft", "list", "table", "inet", "isobox"],
                          capture_output=True, text=True).stdout


def http_get(host: str, port: int, path: str = "/hosts", timeout: float = 5) -> str:
    """A request from the daemon's host (its network namespace)."""
    def get() -> str:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        return data.decode(errors="replace")

    return in_netns(TEST_NETNS_PATH, get)


@pytest.fixture(scope="module")
def outside() -> Iterator[str]:
    """A second namespace on a veth, as a machine on the host's LAN: HOST_ADDR is ours."""
    name = f"ibxout-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        host = ["ip", "-n", TEST_NETNS]
        subprocess.run([*host, "link", "add", "lanport0", "type", "veth", "peer", "name", "lan0", "netns", name],
                       check=True)
        subprocess.run([*host, "addr", "add", f"{HOST_ADDR}/24", "dev", "lanport0"], check=True)
        subprocess.run([*host, "link", "set", "lanport0", "up"], check=True)
        for cmd in (["addr", "add", f"{OUTSIDE_ADDR}/24", "dev", "lan0"], ["link", "set", "lan0", "up"],
                    ["link", "set", "lo", "up"]):
            subprocess.run(["ip", "-n", name, *cmd], check=True)
        yield name
    finally:
        subprocess.run(["ip", "-n", TEST_NETNS, "link", "del", "lanport0"], check=False)
        subprocess.run(["ip", "netns", "delete", name], check=False)


@pytest.fixture(scope="module")
def web(isobox: Isobox) -> Iterator[dict[str, Any]]:
    """An HTTP server on the default network, publishing 8080 on host port 18080 and 8081 on a
    port isobox picks."""
    cid = detached(isobox, "--name", "web", "-p", "18080:8080", "-p", "8081", "busybox", "sh", "-c",
                   "httpd -p 8081 -h /etc; exec httpd -f -p 8080 -h /etc")
    try:
        yield inspect(isobox, cid)
    finally:
        isobox.cli("rm", "-f", cid)


def test_default_network_gives_address_gateway_and_dns(isobox: Isobox, web: dict[str, Any]) -> None:
    net = web["NetworkSettings"]["Networks"]["isobox"]
    assert net["IPAddress"].startswith("10.213.0.") and net["Gateway"] == "10.213.0.1"
    assert net["IPPrefixLen"] == 24 and "web" in net["DNSNames"]
    script = ("ip -o -4 addr show eth0; ip route; cat /etc/resolv.conf; "
              "nslookup web; wget -qO- http://web:8080/hosts")
    out = isobox.cli("run", "--rm", "busybox", "sh", "-c", script, check=True).stdout
    assert "eth0" in out and "inet 10.213.0." in out
    assert "default via 10.213.0.1 dev eth0" in out
    assert "nameserver 10.213.0.1" in out
    assert f"Address: {net['IPAddress']}" in out  # the embedded DNS answers for the name
    assert f"{net['IPAddress']}\t" in out and "web" in out  # web's own /etc/hosts, over HTTP


def test_published_ports_reach_the_workload_from_host_and_outside(isobox: Isobox, web: dict[str, Any],
                                                                    outside: str) -> None:
    ports = web["NetworkSettings"]["Ports"]
    assert ports["8080/tcp"] == [{"HostIp": "0.0.0.0", "HostPort": "18080"}]
    picked = int(ports["8081/tcp"][0]["HostPort"])
    assert 1024 <= picked <= 65535
    lines = isobox.cli("port", "web", check=True).stdout.splitlines()
    assert "8080/tcp -> 0.0.0.0:18080" in lines and f"8081/tcp -> 0.0.0.0:{picked}" in lines
    assert isobox.cli("port", "web", "8080", check=True).stdout.strip() == "0.0.0.0:18080"
    # from the host itself: loopback and the host's own address (the output hook)
    assert "200 OK" in http_get("127.0.0.1", 18080)
    assert "200 OK" in http_get("127.0.0.1", picked)
    assert "200 OK" in http_get(HOST_ADDR, 18080)
    # from another machine on the LAN (the prerouting hook)
    got = subprocess.run(["ip", "netns", "exec", outside, "busybox", "wget", "-qO-",
                          f"http://{HOST_ADDR}:18080/hosts"], capture_output=True, text=True, timeout=20)
    assert got.returncode == 0 and "web" in got.stdout, got.stderr
    # nothing listens there on the host: the port is a DNAT rule in isobox's own table
    assert "dport 18080 dnat ip to" in ruleset()


def test_networks_are_isolated_both_ways_and_names_stay_inside(isobox: Isobox, web: dict[str, Any]) -> None:
    isobox.cli("network", "create", "--subnet", "10.213.77.0/24", "backend", check=True)
    db = detached(isobox, "--name", "db", "--network", "backend", "busybox", "httpd", "-f", "-p", "80", "-h", "/etc")
    try:
        db_ip = inspect(isobox, db)["NetworkSettings"]["Networks"]["backend"]["IPAddress"]
        web_ip = web["NetworkSettings"]["Networks"]["isobox"]["IPAddress"]
        assert db_ip.startswith("10.213.77.")
        # same network: by name and by address
        same = isobox.cli("run", "--rm", "--network", "backend", "busybox", "wget", "-qO-", "http://db/hosts")
        assert same.returncode == 0 and "db" in same.stdout
        # default -> backend and backend -> default: refused (timeout kills wget: 143)
        # (--init: busybox's timeout execs the command in place, and a PID 1 ignores SIGTERM)
        across = isobox.cli("run", "--rm", "--init", "busybox", "timeout", "2", "wget", "-qO-",
                            f"http://{db_ip}/hosts")
        back = isobox.cli("run", "--rm", "--init", "--network", "backend", "busybox", "timeout", "2", "wget",
                          "-qO-", f"http://{web_ip}:8080/hosts")
        assert across.returncode == 143 and back.returncode == 143
        # and a network's names are not resolvable from another
        name = isobox.cli("run", "--rm", "busybox", "nslookup", "db")
        assert name.returncode != 0
        # a published port is the way across, as on Docker: via the host's address
        via_host = isobox.cli("run", "--rm", "--network", "backend", "busybox", "wget", "-qO-",
                              f"http://{HOST_ADDR}:18080/hosts")
        assert via_host.returncode == 0 and "web" in via_host.stdout
        # the network is in use: rm refuses and changes nothing
        busy = isobox.cli("network", "rm", "backend")
        assert busy.returncode == 125 and "in use" in busy.stderr
        assert "backend" in isobox.cli("network", "ls", check=True).stdout
    finally:
        isobox.cli("rm", "-f", db)
    bridge = json.loads(isobox.cli("network", "inspect", "backend", check=True).stdout)[0]["Bridge"]
    isobox.cli("network", "rm", "backend", check=True)
    assert bridge not in links()
    assert bridge not in ruleset()
    assert not (isobox.run_root / "net" / "backend").exists()


def test_network_none_and_host(isobox: Isobox) -> None:
    none = isobox.cli("run", "--rm", "--network", "none", "busybox", "ip", "-o", "link", check=True).stdout
    assert [line.split(":")[1].strip() for line in none.splitlines()] == ["lo"]
    host = isobox.cli("run", "--rm", "--network", "host", "busybox", "ip", "-o", "link", check=True).stdout
    assert "isobox0" in host  # the host's (this test namespace's) own links
    info = json.loads(isobox.cli("inspect", isobox.cli("create", "--network", "host", "busybox", "true",
                                                       check=True).stdout.strip(), check=True).stdout)[0]
    isobox.cli("rm", info["Id"], check=True)
    assert info["HostConfig"]["NetworkMode"] == "host" and info["NetworkSettings"]["Networks"] == {}


@pytest.mark.parametrize("args, message", [
    (["run", "--rm", "-p", "99999:80", "busybox", "true"], "invalid host port"),
    (["run", "--rm", "-p", "80:0", "busybox", "true"], "invalid container port"),
    (["run", "--rm", "-p", "1.2.3:80:80", "busybox", "true"], "invalid host address"),
    (["run", "--rm", "--network", "nosuch", "busybox", "true"], "network nosuch not found"),
    (["run", "--rm", "--network", "none", "-p", "80", "busybox", "true"], "cannot publish ports"),
    (["network", "create", "--subnet", "10.213.0.128/25", "clash"], "overlaps"),
    (["network", "create", "--subnet", "10.0.0.1/24", "bad"], "invalid subnet"),
    (["network", "create", "isobox"], "invalid network name"),
    (["network", "rm", "isobox"], "default network"),
    (["network", "rm", "nosuch"], "no such network"),
])
def test_bad_input_is_refused_and_changes_nothing(isobox: Isobox, args: list[str], message: str) -> None:
    before = (isobox.cli("ps", "-aq").stdout, isobox.cli("network", "ls").stdout, links(), ruleset())
    proc = isobox.cli(*args)
    assert proc.returncode == 125 and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 2  # one line, and maybe a hint
    assert (isobox.cli("ps", "-aq").stdout, isobox.cli("network", "ls").stdout, links(), ruleset()) == before


def test_duplicate_network_name_is_refused(isobox: Isobox) -> None:
    isobox.cli("network", "create", "twice", check=True)
    try:
        again = isobox.cli("network", "create", "twice")
        assert again.returncode == 125 and "already exists" in again.stderr
    finally:
        isobox.cli("network", "rm", "twice", check=True)


def link_of(box: Isobox, ref: str) -> str:
    """The host-side link a workload got at its last start (Applied keeps it after the exit)."""
    return str(inspect(box, ref)["Applied"]["Network"]["Link"])


def assert_no_network_leftovers(isobox: Isobox, cid: str, link: str) -> None:
    assert link.startswith("ibx")
    deadline = time.monotonic() + 5  # the kernel tears a dead netns (and its veth) down asynchronously
    while link in links() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert link not in links(), "link left behind"
    nets = json.loads(isobox.cli("network", "inspect", "isobox", check=True).stdout)[0]
    assert cid not in nets["Containers"], "lease left behind"
    assert cid[:12] not in (isobox.run_root / "net" / "isobox" / "hosts").read_text(), "DNS entry left behind"


def test_nothing_left_after_rm_failed_start_and_port_clash(isobox: Isobox, web: dict[str, Any]) -> None:
    cid = detached(isobox, "-p", "18181:80", "busybox", "httpd", "-f", "-p", "80")
    assert "dport 18181" in ruleset()
    link = link_of(isobox, cid)
    isobox.cli("rm", "-f", cid, check=True)
    assert_no_network_leftovers(isobox, cid, link)
    assert "dport 18181" not in ruleset()
    # a start that fails at exec (127): the lease goes with it
    failed = isobox.cli("run", "--name", "nocmd", "busybox", "/no/such/command")
    assert failed.returncode == 127
    failed_id = inspect(isobox, "nocmd")["Id"]
    assert_no_network_leftovers(isobox, failed_id, link_of(isobox, "nocmd"))
    isobox.cli("rm", "nocmd", check=True)
    # a host port another workload holds: refused, nothing made
    before = isobox.cli("ps", "-aq").stdout
    clash = isobox.cli("run", "--rm", "-p", "18080:80", "busybox", "true")
    assert clash.returncode == 125 and "port is already allocated" in clash.stderr
    assert isobox.cli("ps", "-aq").stdout == before
    # a host port something on the host listens on: refused too
    busy = in_netns(TEST_NETNS_PATH, socket.socket)
    with busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        taken = isobox.cli("run", "--rm", "-p", f"{port}:80", "busybox", "true")
    assert taken.returncode == 125 and "port is already allocated" in taken.stderr


def test_addresses_are_unique_and_released(isobox: Isobox) -> None:
    ids = [detached(isobox, "busybox", "sleep", "60") for _ in range(3)]
    try:
        addrs = [inspect(isobox, c)["NetworkSettings"]["Networks"]["isobox"]["IPAddress"] for c in ids]
        assert len(set(addrs)) == 3
        isobox.cli("stop", "-t", "0", ids[0], check=True)
        deadline = time.monotonic() + 5  # released on exit (off the event loop when not from stop)
        while inspect(isobox, ids[0])["NetworkSettings"]["Networks"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert inspect(isobox, ids[0])["NetworkSettings"]["Networks"] == {}
        assert_no_network_leftovers(isobox, ids[0], link_of(isobox, ids[0]))
    finally:
        isobox.cli("rm", "-f", *ids)


def test_daemon_crash_leaves_no_stale_lease_link_or_rule(own_daemon: Isobox) -> None:
    box = own_daemon
    survivor = detached(box, "--name", "survivor", "-p", "19090:80", "busybox", "httpd", "-f", "-p", "80", "-h", "/etc")
    goner = detached(box, "--name", "goner", "-p", "19091:80", "busybox", "httpd", "-f", "-p", "80", "-h", "/etc")
    goner_pid = inspect(box, goner)["State"]["Pid"]
    goner_link, survivor_link = link_of(box, goner), link_of(box, survivor)
    netns = box.env["ISOBOX_NETNS"]

    def in_ns(*cmd: str) -> str:
        return subprocess.run(["nsenter", f"--net={netns}", *cmd], capture_output=True, text=True).stdout

    # a stray link as a crash between "link made" and "lease written" would leave
    subprocess.run(["nsenter", f"--net={netns}", "ip", "link", "add", "ibxhdeadbeef00", "type", "veth",
                    "peer", "name", "straypeer0"], check=True)
    os.kill(int((box.run_root / "isobox.pid").read_text()), signal.SIGKILL)
    os.kill(goner_pid, signal.SIGKILL)  # ends while no daemon watches
    time.sleep(1)
    box.start_daemon()  # type: ignore[attr-defined]
    assert inspect(box, goner)["State"]["Status"] == "exited"
    table = in_ns("nft", "list", "table", "inet", "isobox")
    assert "dport 19090" in table and "dport 19091" not in table
    names = in_ns("ip", "-o", "link")
    assert "ibxhdeadbeef00" not in names and "straypeer0" not in names and goner_link not in names
    assert survivor_link in names
    hosts = (box.run_root / "net" / "isobox" / "hosts").read_text()
    assert "survivor" in hosts and "goner" not in hosts
    # the survivor still serves, through its published port, in its namespace
    page = in_ns("busybox", "wget", "-qO-", "http://127.0.0.1:19090/hosts")
    assert "survivor" in page


def test_vm_and_container_share_a_network_and_its_isolation(isobox: Isobox, web: dict[str, Any]) -> None:
    """A VM on the default network is one more host there: reached by name and through a
    published port, reaching containers by name, and cut off from other networks both ways."""
    vm = isobox.cli("run", "-d", "--isolation", "vm", "--name", "vmweb", "-p", "18282:80", "busybox",
                    "httpd", "-f", "-p", "80", "-h", "/etc", check=True, timeout=300).stdout.split()[-1]
    isobox.cli("network", "create", "--subnet", "10.213.88.0/24", "elsewhere", check=True)
    other = detached(isobox, "--name", "other", "--network", "elsewhere", "busybox", "httpd", "-f", "-p", "80",
                     "-h", "/etc")
    try:
        info = inspect(isobox, vm)
        vm_ip = info["NetworkSettings"]["Networks"]["isobox"]["IPAddress"]
        tap = info["NetworkSettings"]["Networks"]["isobox"]["Link"]
        assert tap.startswith("ibxt") and tap in links()
        # container -> VM by name (httpd may still be starting under TCG: retry for a while)
        script = "for i in $(seq 60); do wget -qO- http://vmweb/hosts && exit 0; sleep 1; done; exit 1"
        got = isobox.cli("run", "--rm", "busybox", "sh", "-c", script, timeout=120)
        assert got.returncode == 0 and f"{vm_ip}\t" in got.stdout and "vmweb" in got.stdout
        # VM -> container by name, through the same DNS
        back = isobox.cli("exec", vm, "wget", "-qO-", "http://web:8080/hosts", timeout=120)
        assert back.returncode == 0 and "web" in back.stdout, back.stderr
        # the host reaches the VM through its published port
        assert "200 OK" in http_get("127.0.0.1", 18282)
        # another network: neither way
        other_ip = inspect(isobox, other)["NetworkSettings"]["Networks"]["elsewhere"]["IPAddress"]
        to_vm = isobox.cli("run", "--rm", "--init", "--network", "elsewhere", "busybox", "timeout", "3", "wget",
                           "-qO-", f"http://{vm_ip}/hosts")
        from_vm = isobox.cli("exec", vm, "sh", "-c", f"timeout 3 wget -qO- http://{other_ip}/hosts; echo rc=$?",
                             timeout=120)
        assert to_vm.returncode == 143 and "rc=143" in from_vm.stdout
    finally:
        isobox.cli("rm", "-f", vm, other, timeout=120)
        isobox.cli("network", "rm", "elsewhere")
    assert_no_network_leftovers(isobox, vm, tap)
    assert "dport 18282" not in ruleset()


def test_outbound_nat_is_set_up_and_other_tables_are_never_touched(isobox: Isobox) -> None:
    """isobox owns `table inet isobox` only: a foreign ruleset (as Docker, Podman or libvirt
    leave) is byte-for-byte the same after networks come and go and ports are published."""
    foreign = ("table ip podmanlike {\n\tchain FORWARD {\n\t\ttype filter hook forward priority filter; "
               "policy accept;\n\t\tip saddr 10.88.0.0/16 counter accept\n\t}\n}\n")
    nft = ["nsenter", f"--net={TEST_NETNS_PATH}", "nft"]
    subprocess.run([*nft, "-f", "-"], input=foreign, text=True, check=True)
    try:
        before = subprocess.run([*nft, "list", "table", "ip", "podmanlike"], capture_output=True, text=True,
                                check=True).stdout
        isobox.cli("network", "create", "natcheck", check=True)
        cid = detached(isobox, "--network", "natcheck", "-p", "18383:80", "busybox", "sleep", "60")
        subnet = json.loads(isobox.cli("network", "inspect", "natcheck", check=True).stdout)[0]["Subnets"][0]
        bridge = json.loads(isobox.cli("network", "inspect", "natcheck", check=True).stdout)[0]["Bridge"]
        assert f'ip saddr {subnet["Subnet"]} oifname != "{bridge}" masquerade' in ruleset()
        isobox.cli("rm", "-f", cid, check=True)
        isobox.cli("network", "rm", "natcheck", check=True)
        after = subprocess.run([*nft, "list", "table", "ip", "podmanlike"], capture_output=True, text=True,
                               check=True).stdout
        assert after == before
    finally:
        subprocess.run([*nft, "delete", "table", "ip", "podmanlike"], check=False)
