"""Where isobox keeps things.  Tests point both roots at temporary directories."""

from __future__ import annotations

import os
from pathlib import Path


def state_root() -> Path:
    """Persistent state: database, images, container upper dirs (``ISOBOX_ROOT``)."""
    return Path(os.environ.get("ISOBOX_ROOT", "/var/lib/isobox"))


def run_root() -> Path:
    """Volatile runtime files: sockets, pid and exit files (``ISOBOX_RUN``)."""
    return Path(os.environ.get("ISOBOX_RUN", "/run/isobox"))


def socket_path() -> Path:
    """The daemon's API socket (``ISOBOX_SOCKET`` overrides, like ``DOCKER_HOST`` for a unix path)."""
    override = os.environ.get("ISOBOX_SOCKET")
    return Path(override) if override else run_root() / "isobox.sock"


def database_path() -> Path:
    return state_root() / "isobox.db"


def images_dir() -> Path:
    return state_root() / "images"


def containers_dir() -> Path:
    """Persistent per-container data (overlay upper/work dirs, logs)."""
    return state_root() / "containers"


def container_run_dir(container_id: str) -> Path:
    """Volatile per-container files (attach socket, exit file)."""
    return run_root() / "containers" / container_id
