"""The embedded DNS of a network: one dnsmasq (Debian's dnsmasq-base) per bridge.

It answers for every workload's names from a hosts file isobox rewrites (then SIGHUP) and
forwards anything else to the host's resolvers.  It also answers DHCP, but only for the MACs
isobox leased (static mode): a full-OS VM booted by firmware configures itself by DHCP and
gets the same address the lease holds; containers and microVMs are configured directly.  dnsmasq runs on its own, not as the daemon's
child: workloads keep resolving while the daemon restarts, and the next daemon adopts it
through its pid file.  It binds only the gateway address, never the host's other addresses.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from isobox import paths
from isobox.errors import RuntimeFailure


def net_dir(network: str) -> Path:
    return paths.run_root() / "net" / network


def _pid(network: str) -> int | None:
    return _pid_in(net_dir(network) / "dnsmasq.pid")


def _pid_in(pid_file: Path) -> int | None:
    """The live dnsmasq a pid file names (not whatever process reused a stale pid)."""
    try:
        pid = int(pid_file.read_text().strip())
        with open(f"/proc/{pid}/comm") as fh:
            return pid if fh.read().strip() == "dnsmasq" else None
    except (OSError, ValueError):
        return None


def stop_all(run_root: Path) -> None:
    """SIGTERM every network's dnsmasq under ``run_root``: they outlive daemons by design, and a
    test's or a benchmark's go with its roots."""
    for pid_file in run_root.glob("net/*/dnsmasq.pid"):
        pid = _pid_in(pid_file)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


def write_hosts(network: str, entries: list[tuple[str, list[str], str]]) -> None:
    """(address, names, mac) of every workload: the hosts file and the DHCP reservations.
    dnsmasq runs as nobody, so the files and their directories are readable by all (the run
    root is traversable, not listable)."""
    directory = net_dir(network)
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    (paths.run_root() / "net").chmod(0o755)
    _replace(directory / "hosts", "".join(f"{addr} {' '.join(names)}\n" for addr, names, _mac in entries))
    _replace(directory / "dhcp-hosts", "".join(f"{mac},{addr}\n" for addr, _names, mac in entries))


def _replace(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.chmod(0o644)
    os.replace(tmp, path)


def ensure(network: str, bridge: str, gateway: str, subnet: str) -> int:
    """dnsmasq for ``network`` running (started if needed); returns its pid."""
    pid = _pid(network)
    if pid is not None:
        return pid
    binary = shutil.which("dnsmasq")
    if binary is None:
        raise RuntimeFailure("dnsmasq is not installed (Debian package dnsmasq-base): scripts/setup.sh installs it")
    directory = net_dir(network)
    net = ipaddress.IPv4Network(subnet)
    if not (directory / "hosts").exists():
        write_hosts(network, [])
    argv = [binary, "--keep-in-foreground", "--conf-file=/dev/null", f"--pid-file={directory / 'dnsmasq.pid'}",
            f"--listen-address={gateway}", "--bind-interfaces", f"--interface={bridge}",
            "--except-interface=lo", "--no-hosts", f"--addn-hosts={directory / 'hosts'}",
            "--domain-needed", "--no-negcache", "--local-service", "--cache-size=0",
            f"--log-facility={directory / 'dnsmasq.log'}", "--user=nobody", "--group=nogroup",
            f"--dhcp-range={net.network_address},static,{net.netmask},1h",
            f"--dhcp-hostsfile={directory / 'dhcp-hosts'}", f"--dhcp-option=option:router,{gateway}",
            f"--dhcp-option=option:dns-server,{gateway}", f"--dhcp-leasefile={directory / 'dhcp.leases'}",
            "--quiet-dhcp"]
    # Kept in the foreground and in a session of its own: a daemonising dnsmasq leaves its
    # intermediate process as our zombie.  We reap it on stop (or init does, after a restart).
    with open(directory / "dnsmasq.log", "ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    for _ in range(200):  # the pid file appears once it listens
        if proc.poll() is not None:
            tail = (directory / "dnsmasq.log").read_text(errors="replace").strip().splitlines()[-1:]
            holder = other_server(gateway)
            raise RuntimeFailure(
                f"dnsmasq for network {network} failed: {' '.join(tail) or proc.returncode}",
                hint=None if holder is None else (
                    f"dnsmasq pid {holder[0]} already serves {gateway}"
                    + (f" (pid file {holder[1]})" if holder[1] else "")
                    + ": another isobox state root's network in this network namespace, or one left behind;"
                    " stop it, or give each daemon a network namespace of its own (ISOBOX_NETNS)"))
        pid = _pid(network)
        if pid is not None:
            return pid
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    raise RuntimeFailure(f"dnsmasq for network {network} did not start")


def other_server(gateway: str, proc_root: Path = Path("/proc")) -> tuple[int, str | None] | None:
    """(pid, pid file) of a running dnsmasq started for ``gateway`` (by another state root: the
    pid file names its run root), when one is what holds the address."""
    wanted = f"--listen-address={gateway}".encode()
    for entry in proc_root.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if args and args[0].endswith(b"dnsmasq") and wanted in args:
            pid_file = next((a.decode(errors="replace").partition("=")[2] for a in args
                             if a.startswith(b"--pid-file=")), None)
            return int(entry.name), pid_file
    return None


def reload(network: str) -> None:
    pid = _pid(network)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGHUP)


def stop(network: str) -> None:
    pid = _pid(network)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        for _ in range(200):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # ours when this daemon started it
            if not os.path.exists(f"/proc/{pid}"):
                break
            time.sleep(0.01)
    shutil.rmtree(net_dir(network), ignore_errors=True)
