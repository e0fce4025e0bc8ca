"""``isobox cp`` for VMs: one regular file each way through the guest agent's file commands.

In an isobox microVM the agent runs in the initramfs and the image's root is mounted at
``/newroot`` there; in a firmware-booted OS (``root=""``) the agent's ``/`` is the guest's.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterator
from pathlib import Path

from isobox.errors import InvalidArgument
from isobox.runtimes.vm import agent, specdisk

CHUNK = agent.CHUNK


def guest_path(path: str, root: str = specdisk.ROOT) -> str:
    if not path.startswith("/"):
        raise InvalidArgument(f"the path in the VM must be absolute: {path}")
    norm = posixpath.normpath(path)
    return root + norm


def _chunks(path: str) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while data := fh.read(CHUNK):
            yield data


def copy_to_guest(run_dir: Path, host: str, guest: str, root: str = specdisk.ROOT) -> int:
    if not os.path.isfile(host):
        raise InvalidArgument(f"only regular files can be copied into a VM: {host}")
    target = guest_path(guest, root)
    with agent.connected(run_dir) as ga:
        if guest.endswith("/"):
            target = posixpath.join(target, os.path.basename(host))
        ga.write_file(target, _chunks(host))
    return os.path.getsize(host)


def copy_from_guest(run_dir: Path, guest: str, host: str, root: str = specdisk.ROOT) -> int:
    if os.path.isdir(host):
        host = os.path.join(host, posixpath.basename(guest.rstrip("/")))
    tmp = f"{host}.isobox-tmp"
    size = 0
    with agent.connected(run_dir) as ga, open(tmp, "wb") as fh:
        for chunk in ga.read_file(guest_path(guest, root)):
            fh.write(chunk)
            size += len(chunk)
    os.rename(tmp, host)
    return size
