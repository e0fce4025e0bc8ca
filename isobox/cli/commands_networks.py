"""Network verbs: ``isobox network create|ls|inspect|rm`` and ``isobox port``."""

from __future__ import annotations

import argparse
from typing import Any

from isobox.cli import output
from isobox.cli.client import Client, path_for
from isobox.cli.commands import each, inspect_each, out
from isobox.errors import NotFound


def network_create(args: argparse.Namespace, client: Client) -> int:
    body: dict[str, Any] = {"Name": args.name, "Internal": args.internal}
    if args.subnet:
        body["Subnet"] = args.subnet
    out(client.call("POST", "/networks/create", body)["Id"])
    return 0


def network_ls(args: argparse.Namespace, client: Client) -> int:
    nets = client.call("GET", "/networks")
    if args.quiet:
        for net in nets:
            out(net["Id"] if args.no_trunc else output.short_id(net["Id"]))
    elif args.format == "json":
        out(output.dumps(nets))
    elif args.format:
        text = output.format_rows(args.format, nets)
        if text:
            out(text)
    else:
        rows = [[net["Id"] if args.no_trunc else output.short_id(net["Id"]), net["Name"], net["Bridge"],
                 net["Subnets"][0]["Subnet"], str(len(net["Containers"]))] for net in nets]
        out(output.table(["NETWORK ID", "NAME", "BRIDGE", "SUBNET", "WORKLOADS"], rows))
    return 0


def network_inspect(args: argparse.Namespace, client: Client) -> int:
    return inspect_each(args.networks, lambda ref: client.call("GET", path_for("networks", ref)), args.format)


def network_rm(args: argparse.Namespace, client: Client) -> int:
    def remove(ref: str) -> str:
        client.call("DELETE", path_for("networks", ref))
        return ref

    return each(args.networks, remove)


def port(args: argparse.Namespace, client: Client) -> int:
    """``isobox port NAME [PORT[/PROTO]]``: Docker's lines, ``80/tcp -> 0.0.0.0:8080``."""
    info = client.call("GET", path_for("containers", args.container))
    ports: dict[str, list[dict[str, str]]] = info.get("NetworkSettings", {}).get("Ports", {})
    wanted = None
    if args.port:
        wanted = args.port if "/" in args.port else f"{args.port}/tcp"
        if wanted not in ports:
            raise NotFound(f"no public port '{wanted}' published for {args.container}")
    for key in sorted(ports, key=lambda k: (int(k.split("/")[0]), k)):
        if wanted is not None and key != wanted:
            continue
        for binding in ports[key]:
            host = f"{binding['HostIp']}:{binding['HostPort']}"
            out(host if wanted is not None else f"{key} -> {host}")
    return 0


def network_create_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--subnet", help="an IPv4 subnet in CIDR form (default: a free /24)")
    p.add_argument("--internal", action="store_true", help="no traffic to or from outside the network")
    p.add_argument("-d", "--driver", choices=["bridge"], default="bridge", help="only bridge")
    p.add_argument("name", metavar="NAME")


def network_ls_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="only ids")
    p.add_argument("--no-trunc", action="store_true")
    p.add_argument("--format", help="json or a Go-style template")


def network_refs_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("networks", nargs="+", metavar="NETWORK")


def network_inspect_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--format", help="a Go-style template")
    network_refs_flags(p)


def port_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("container", metavar="CONTAINER")
    p.add_argument("port", nargs="?", metavar="PORT[/PROTO]")
