"""The one interface every isolation level implements (container today; gVisor and VM next).

Everything above it — engine, API, CLI, state — is shared.  A runtime starts a workload under a
*monitor* process that outlives the daemon and records the exit in ``collect_exit``'s file, so
the engine's watching, recovery and ``wait`` work the same for every level.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from isobox.images.store import Image
    from isobox.net.manager import Attachment
    from isobox.runtimes.container.monitor import ExitStatus
    from isobox.spec import WorkloadSpec
    from isobox.state import ContainerRecord


@dataclass
class Launched:
    pid: int  # the workload's PID 1 on the host (QEMU's pid for a VM)
    pid_start: int  # its start time: with the pid, identifies it across pid reuse
    monitor_pid: int
    monitor_start: int
    done_fd: int  # read end of the monitor's status pipe: EOF once the exit is recorded
    details: dict[str, Any] = field(default_factory=dict)  # what else the monitor reported (the cgroup)


@dataclass
class ExecRequest:
    command: list[str]
    env: dict[str, str]
    workdir: str | None
    user: str | None
    tty: bool
    interactive: bool
    privileged: bool


class Runtime(Protocol):
    isolation: str
    # How a workload of this level joins an isobox network: "veth" (its init makes the pair),
    # "tap" (QEMU opens a tap the engine made), or None (not supported: loopback only).
    network_kind: str | None

    def validate(self, spec: WorkloadSpec, image: Image) -> None:
        """Refuse, before anything is made, what this level cannot run."""

    def start(self, rec: ContainerRecord, spec: WorkloadSpec, image: Image, attach: bool,
              network: Attachment | None = None) -> tuple[Launched, dict[str, Any], str | None]:
        """Start; returns the launch facts, what was applied (for inspect), the attach socket.
        ``network``: the workload's place on an isobox network, already leased."""
        ...

    def signal(self, rec: ContainerRecord, sig: int) -> None: ...

    def exec(self, rec: ContainerRecord, spec: WorkloadSpec, image: Image,
             request: ExecRequest) -> tuple[Launched, str]: ...

    def stats(self, rec: ContainerRecord) -> dict[str, Any]: ...

    def collect_exit(self, rec: ContainerRecord) -> ExitStatus | None: ...

    def cleanup(self, rec: ContainerRecord) -> None:
        """Release what a dead monitor could not (cgroups, devices); idempotent."""

    def remove(self, rec: ContainerRecord) -> None:
        """Delete everything the workload owned on disk; idempotent."""

    def host_facts(self) -> dict[str, Any]:
        """What `system info` should say about this level on this host."""
        ...
