"""isobox's own nftables table, rendered whole from the state store and replaced atomically.

isobox owns ``table inet isobox`` and nothing else: it never flushes or reorders the rules of
Docker, Podman (netavark) or libvirt.  One ``nft -f`` transaction deletes and recreates the
table, so no packet ever sees half a ruleset.

What the table does:
- forward: traffic within one isobox network passes; between two isobox networks it is
  dropped (both directions) unless it is a published port's DNAT; workloads reach the outside.
- nat: published ports are DNAT'ed from the host's own addresses (from outside: prerouting;
  from the host itself: output); loopback-sourced packets are masqueraded onto the bridge
  (with route_localnet on the bridge, see links.py); workloads' traffic leaving the host is
  masqueraded unless the network is internal.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

from isobox.errors import RuntimeFailure

TABLE = "isobox"


@dataclass(frozen=True)
class NetRule:
    bridge: str
    subnet: str
    internal: bool = False


@dataclass(frozen=True)
class Dnat:
    protocol: str
    host_port: int
    address: str
    port: int
    host_ip: str = ""


def _quoted(names: list[str]) -> str:
    return ", ".join(f'"{n}"' for n in names)


def render(networks: list[NetRule], dnats: list[Dnat]) -> str:
    bridges = sorted(n.bridge for n in networks)
    out = [f"table inet {TABLE} {{"]
    out += ["    chain forward {", "        type filter hook forward priority filter; policy accept;",
            "        ct state established,related accept"]
    if bridges:
        out.append(f"        iifname {{ {_quoted(bridges)} }} oifname {{ {_quoted(bridges)} }} ct status dnat accept")
        for bridge in bridges:
            out.append(f'        iifname "{bridge}" oifname "{bridge}" accept')
        out.append(f"        iifname {{ {_quoted(bridges)} }} oifname {{ {_quoted(bridges)} }} drop")
        for net in networks:
            if net.internal:
                out.append(f'        iifname "{net.bridge}" drop')
                out.append(f'        oifname "{net.bridge}" drop')
    out.append("    }")
    out += ["    chain ports {"]
    for d in sorted(dnats, key=lambda d: (d.protocol, d.host_port, d.host_ip)):
        match = f"ip daddr {d.host_ip} " if d.host_ip else ""
        out.append(f"        {match}{d.protocol} dport {d.host_port} dnat ip to {d.address}:{d.port}")
    out.append("    }")
    out += ["    chain prerouting {", "        type nat hook prerouting priority dstnat; policy accept;",
            "        fib daddr type local jump ports", "    }",
            "    chain output {", "        type nat hook output priority -100; policy accept;",
            "        fib daddr type local jump ports", "    }",
            "    chain postrouting {", "        type nat hook postrouting priority srcnat; policy accept;"]
    if bridges:
        out.append(f"        ip saddr 127.0.0.0/8 oifname {{ {_quoted(bridges)} }} masquerade")
    for net in networks:
        if not net.internal:
            out.append(f'        ip saddr {net.subnet} oifname != "{net.bridge}" masquerade')
    out += ["    }", "}"]
    return "\n".join(out) + "\n"


def apply(ruleset: str) -> None:
    """Replace isobox's table in one transaction (creating it first makes the delete safe)."""
    script = f"table inet {TABLE}\ndelete table inet {TABLE}\n{ruleset}"
    proc = subprocess.run(["nft", "-f", "-"], input=script, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeFailure(f"nft: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else 'failed'}")


def remove() -> None:
    subprocess.run(["nft", "delete", "table", "inet", TABLE], capture_output=True)
