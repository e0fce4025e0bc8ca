"""``-p/--publish`` as Docker reads it: ``[HOSTIP:][HOSTPORT:]PORT[/tcp|/udp]``, ranges included.

Pure parsing: the spec stores what the user asked for; ``manager.py`` binds a free host port
for an empty HOSTPORT when the workload starts.
"""

from __future__ import annotations

from dataclasses import dataclass

from isobox.errors import InvalidArgument

PROTOCOLS = ("tcp", "udp")


@dataclass(frozen=True)
class PortMapping:
    container_port: int
    host_port: int = 0  # 0: a free port chosen at start
    protocol: str = "tcp"
    host_ip: str = ""  # "": every address of the host

    def validate(self) -> PortMapping:
        if self.protocol not in PROTOCOLS:
            raise InvalidArgument(f"invalid protocol {self.protocol!r} in port mapping", hint="use tcp or udp")
        for port in (self.container_port, self.host_port):
            if not isinstance(port, int) or not 0 <= port <= 65535:
                raise InvalidArgument(f"invalid port {port!r}: ports are 1-65535")
        if self.container_port == 0:
            raise InvalidArgument("invalid container port 0")
        if self.host_ip:
            import ipaddress  # only when a host address is given: the CLI imports this module

            try:
                if ipaddress.ip_address(self.host_ip).version != 4:
                    raise InvalidArgument(f"host address {self.host_ip}: only IPv4 is published")
            except ValueError:
                raise InvalidArgument(f"invalid host address {self.host_ip!r} in port mapping") from None
        return self

    def __str__(self) -> str:
        host = f"{self.host_ip or '0.0.0.0'}:{self.host_port or ''}"
        return f"{self.container_port}/{self.protocol} -> {host}"


def check_publishable(network: str) -> None:
    """Ports are published from a workload's own address: none with --network none or host.
    (The CLI checks this before it asks the daemon; the spec checks it again.)"""
    if network in ("none", "host"):
        raise InvalidArgument(f"cannot publish ports with --network {network}")


def _port_range(text: str, what: str, spec: str) -> list[int]:
    low, sep, high = text.partition("-")
    try:
        first = int(low)
        last = int(high) if sep else first
    except ValueError:
        raise InvalidArgument(f"invalid {what} port {text!r} in -p {spec}") from None
    if not (0 < first <= 65535 and 0 < last <= 65535) or last < first:
        raise InvalidArgument(f"invalid {what} port {text!r} in -p {spec}: ports are 1-65535")
    return list(range(first, last + 1))


def parse_publish(spec: str) -> list[PortMapping]:
    text, _, protocol = spec.partition("/")
    protocol = (protocol or "tcp").lower()
    if protocol not in PROTOCOLS:
        raise InvalidArgument(f"invalid protocol {protocol!r} in -p {spec}", hint="use tcp or udp")
    host_ip, host_part = "", ""
    parts = text.rsplit(":", 2)
    if len(parts) == 3:
        host_ip, host_part, ctr_part = parts
    elif len(parts) == 2:
        host_part, ctr_part = parts
    else:
        ctr_part = parts[0]
    if not ctr_part:
        raise InvalidArgument(f"invalid -p {spec}", hint="use [HOSTIP:][HOSTPORT:]PORT[/tcp|/udp]")
    ctr_ports = _port_range(ctr_part, "container", spec)
    host_ports = _port_range(host_part, "host", spec) if host_part else [0] * len(ctr_ports)
    if len(host_ports) != len(ctr_ports):
        raise InvalidArgument(f"invalid -p {spec}: host and container port ranges differ in size")
    return [PortMapping(c, h, protocol, host_ip).validate() for h, c in zip(host_ports, ctr_ports, strict=True)]
