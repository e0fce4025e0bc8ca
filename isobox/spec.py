"""The workload spec: what to run and how isolated, independent of the isolation level.

The CLI builds it from flags, the API takes it as JSON, every runtime consumes it.  Plain
dataclasses (no pydantic) so that the CLI can import it cheaply; FastAPI still derives the
OpenAPI schema from them.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from isobox.errors import InvalidArgument
from isobox.net.ports import PortMapping, check_publishable

NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$")
HOSTNAME_RE = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?(\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*$")
ENV_KEY_RE = re.compile(r"^[^=\0]+$")
USER_RE = re.compile(r"^[a-zA-Z0-9_.][a-zA-Z0-9_.-]*(:[a-zA-Z0-9_.][a-zA-Z0-9_.-]*)?$")

DEFAULT_PIDS_LIMIT = 2048  # Podman's default
DEFAULT_STOP_TIMEOUT = 10
FIRMWARES = ("bios", "uefi")


class Isolation(StrEnum):
    CONTAINER = "container"
    GVISOR = "gvisor"
    VM = "vm"


@dataclass
class Mount:
    """A bind mount of a host path (``-v HOST:TARGET[:ro]``)."""

    source: str
    target: str
    readonly: bool = False


@dataclass
class Resources:
    memory: int | None = None  # bytes
    cpus: float | None = None  # CPU quota in cores
    pids_limit: int | None = DEFAULT_PIDS_LIMIT  # None or 0 = unlimited (Docker's -1)


@dataclass
class Security:
    cap_add: list[str] = field(default_factory=list)
    cap_drop: list[str] = field(default_factory=list)
    seccomp: str = "default"  # "default" | "unconfined" | "custom" (profile in seccomp_profile)
    seccomp_profile: dict[str, Any] | None = None  # OCI/Docker seccomp JSON when seccomp == "custom"
    no_new_privileges: bool = True


@dataclass
class WorkloadSpec:
    image: str
    command: list[str] = field(default_factory=list)  # empty: the image's CMD
    entrypoint: list[str] | None = None  # None: the image's ENTRYPOINT
    name: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    workdir: str | None = None
    user: str | None = None
    hostname: str | None = None
    isolation: Isolation = Isolation.CONTAINER
    firmware: str | None = None  # VM disk images only: "bios" (SeaBIOS, the default) or "uefi" (OVMF)
    network: str = "default"  # "none", "host", "default" (the default network) or a network's name
    ports: list[PortMapping] = field(default_factory=list)  # -p
    mounts: list[Mount] = field(default_factory=list)
    resources: Resources = field(default_factory=Resources)
    security: Security = field(default_factory=Security)
    read_only: bool = False
    init: bool = False
    tty: bool = False
    interactive: bool = False
    auto_remove: bool = False
    stop_timeout: int = DEFAULT_STOP_TIMEOUT

    def validate(self) -> WorkloadSpec:
        """Reject what no runtime could honour; returns self for chaining."""
        if not self.image or not self.image.strip():
            raise InvalidArgument("no image given")
        if self.name is not None and not NAME_RE.match(self.name):
            raise InvalidArgument(f"invalid container name {self.name!r}", hint="use [a-zA-Z0-9][a-zA-Z0-9_.-]*")
        if self.hostname is not None and (len(self.hostname) > 64 or not HOSTNAME_RE.match(self.hostname)):
            raise InvalidArgument(f"invalid hostname {self.hostname!r}")
        for key, value in self.env.items():
            if not ENV_KEY_RE.match(key) or "\0" in value:
                raise InvalidArgument(f"invalid environment variable {key!r}")
        if self.workdir is not None:
            if not self.workdir.startswith("/"):
                raise InvalidArgument(f"working directory {self.workdir!r} is not an absolute path")
            if self.workdir.startswith("/proc/self/fd") or "\0" in self.workdir:
                # runc CVE-2024-21626: a cwd through a leaked fd escapes the root.
                raise InvalidArgument(f"working directory {self.workdir!r} is not allowed")
        if self.user is not None and not USER_RE.match(self.user):
            raise InvalidArgument(f"invalid user {self.user!r}", hint="use NAME|UID[:GROUP|GID]")
        if any("\0" in arg for arg in self.command + (self.entrypoint or [])):
            raise InvalidArgument("command contains a NUL byte")
        if self.network not in ("none", "host", "default", "bridge") and not NAME_RE.match(self.network):
            raise InvalidArgument(f"invalid network {self.network!r}")
        if self.ports:
            check_publishable(self.network)
        for port in self.ports:
            port.validate()
        for mount in self.mounts:
            if not mount.source.startswith("/"):
                raise InvalidArgument(f"volume source {mount.source!r} is not an absolute host path")
            if not mount.target.startswith("/") or mount.target == "/":
                raise InvalidArgument(f"volume target {mount.target!r} must be an absolute path other than /")
            if ".." in mount.target.split("/"):
                raise InvalidArgument(f"volume target {mount.target!r} must not contain '..'")
        res = self.resources
        if res.memory is not None and res.memory < 6 * 1024 * 1024:
            raise InvalidArgument("minimum memory limit allowed is 6MB")  # Docker's floor
        if res.cpus is not None and not 0.01 <= res.cpus <= 1024:
            raise InvalidArgument(f"invalid cpus {res.cpus}")
        if res.pids_limit is not None and res.pids_limit < 0:
            res.pids_limit = None
        if self.security.seccomp not in ("default", "unconfined", "custom"):
            raise InvalidArgument(f"invalid seccomp setting {self.security.seccomp!r}")
        if self.security.seccomp == "custom" and not isinstance(self.security.seccomp_profile, dict):
            raise InvalidArgument("seccomp=custom needs a profile")
        if self.stop_timeout < 0:
            raise InvalidArgument("stop timeout must not be negative")
        if self.firmware is not None and self.firmware not in FIRMWARES:
            raise InvalidArgument(f"invalid firmware {self.firmware!r}", hint="use --firmware bios or --firmware uefi")
        if self.firmware is not None and self.isolation != Isolation.VM:
            raise InvalidArgument(f"--firmware is for --isolation vm, not {self.isolation.value}",
                                  hint="firmware boots VM disk images: isobox run --isolation vm --firmware uefi IMAGE")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorkloadSpec:
        """Build from JSON, rejecting unknown keys so that typos never pass silently."""
        if not isinstance(data, dict):
            raise InvalidArgument("workload spec must be a JSON object")
        data = dict(data)
        mounts, ports = data.pop("mounts", None), data.pop("ports", None)
        for key, value in (("mounts", mounts), ("ports", ports)):
            if value is not None and not isinstance(value, list):
                raise InvalidArgument(f"invalid workload spec: {key} must be a list")
        resources, security = data.pop("resources", None), data.pop("security", None)
        try:
            nested = {
                "mounts": [_build(Mount, m) for m in mounts or []],
                "ports": [_build(PortMapping, p) for p in ports or []],
                "resources": _build(Resources, {} if resources is None else resources),
                "security": _build(Security, {} if security is None else security),
            }
            if "isolation" in data:
                data["isolation"] = Isolation(data["isolation"])
        except ValueError as exc:
            raise InvalidArgument(f"invalid workload spec: {exc}") from None
        return _build(cls, {**data, **nested})


def _build(cls: Any, data: Any) -> Any:
    if not isinstance(data, dict):
        raise InvalidArgument(f"invalid workload spec: {cls.__name__.lower()} must be an object")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise InvalidArgument(f"invalid workload spec: unknown field(s) {', '.join(sorted(unknown))}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise InvalidArgument(f"invalid workload spec: {exc}") from None


def parse_env(items: list[str], lookup: dict[str, str] | None = None) -> dict[str, str]:
    """``-e KEY=VALUE`` or ``-e KEY`` (taken from the caller's environment, as Docker does)."""
    env: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not key:
            raise InvalidArgument(f"invalid environment variable {item!r}")
        if not sep:
            if lookup is None or key not in lookup:
                continue
            value = lookup[key]
        env[key] = value
    return env


def parse_volume(text: str) -> Mount:
    """``-v HOST:CTR[:ro|rw]``; named volumes come with the storage issue."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise InvalidArgument(f"invalid volume {text!r}", hint="use -v /host/path:/container/path[:ro]")
    readonly = False
    if len(parts) == 3:
        opts = parts[2].split(",")
        if any(opt not in ("ro", "rw", "z", "Z") for opt in opts):
            raise InvalidArgument(f"invalid volume option in {text!r}")
        readonly = "ro" in opts
    return Mount(source=parts[0], target=parts[1], readonly=readonly)
