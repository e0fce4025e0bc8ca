"""The state store: SQLite under the state root, with Podman's durability settings.

WAL journal, ``synchronous=FULL``, foreign keys, and ``BEGIN IMMEDIATE`` for every write so
that two writers never interleave.  One connection per store, guarded by a lock, because the
daemon calls in from its thread pool.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from isobox.errors import Conflict, NotFound

SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id          TEXT PRIMARY KEY,
    config      TEXT NOT NULL,          -- JSON: env, cmd, entrypoint, workdir, user, layers
    size        INTEGER NOT NULL,
    created_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS image_tags (
    name        TEXT PRIMARY KEY,       -- e.g. busybox:latest
    image_id    TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS containers (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    image_id    TEXT NOT NULL REFERENCES images(id),
    image_ref   TEXT NOT NULL,
    spec        TEXT NOT NULL,          -- JSON WorkloadSpec as given
    state       TEXT NOT NULL,          -- created | running | exited
    pid         INTEGER,                -- host pid of the workload's PID 1
    pid_start   INTEGER,                -- its start time (guards against pid reuse)
    monitor_pid INTEGER,
    monitor_start INTEGER,
    exit_code   INTEGER,
    oom_killed  INTEGER NOT NULL DEFAULT 0,
    error       TEXT,
    applied     TEXT,                   -- JSON: what the runtime actually applied (for inspect)
    created_at  REAL NOT NULL,
    started_at  REAL,
    finished_at REAL
);
"""


@dataclass
class ContainerRecord:
    id: str
    name: str
    image_id: str
    image_ref: str
    spec: dict[str, Any]
    state: str = "created"
    pid: int | None = None
    pid_start: int | None = None
    monitor_pid: int | None = None
    monitor_start: int | None = None
    exit_code: int | None = None
    oom_killed: bool = False
    error: str | None = None
    applied: dict[str, Any] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None


@dataclass
class ImageRecord:
    id: str
    config: dict[str, Any]
    size: int
    created_at: float
    tags: list[str] = field(default_factory=list)


_JSON_COLUMNS = {"spec", "applied"}


class StateStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._wal = f"{path}-wal"
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        with self.write() as db:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def write(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """An immediate transaction: the write lock is taken up front, never upgraded mid-way.

        ``durable=False`` commits without the fsync (``synchronous=NORMAL``, still atomic and
        crash-safe for the process; the next durable commit syncs it too): for run state, which
        a power loss makes moot and ``Engine.recover`` settles from the live processes anyway.
        """
        with self._lock:
            if not durable:
                self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            finally:
                if not durable:
                    self._db.execute("PRAGMA synchronous=FULL")

    def sync(self) -> None:
        """Make every commit so far durable, those made with ``durable=False`` included: one
        fsync of the write-ahead log, which is what ``synchronous=FULL`` does at each commit.
        (The log exists as long as a connection in WAL mode is open: ours.)"""
        try:
            fd = os.open(self._wal, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return  # nothing logged since a checkpoint, which syncs what it copies
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    _query = query

    # -- containers ---------------------------------------------------------------------------

    def add_container(self, rec: ContainerRecord, durable: bool = True) -> None:
        """``durable=False``: the caller makes it durable with ``sync`` (see ``Engine.run``)."""
        row = _container_row(rec)
        try:
            with self.write(durable) as db:
                db.execute(
                    f"INSERT INTO containers ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})",
                    tuple(row.values()),
                )
        except sqlite3.IntegrityError as exc:
            if "containers.name" in str(exc):
                raise Conflict(
                    f'the container name "{rec.name}" is already in use',
                    hint="remove that container or pick another --name",
                ) from None
            raise

    def update_container(self, container_id: str, durable: bool = True, **changes: Any) -> None:
        """``durable=False`` for run-state transitions (see ``write``)."""
        if not changes:
            return
        values = [json.dumps(v) if k in _JSON_COLUMNS else v for k, v in changes.items()]
        assignments = ", ".join(f"{k} = ?" for k in changes)
        with self.write(durable) as db:
            db.execute(f"UPDATE containers SET {assignments} WHERE id = ?", (*values, container_id))

    def delete_container(self, container_id: str) -> None:
        with self.write() as db:
            db.execute("DELETE FROM containers WHERE id = ?", (container_id,))

    def containers(self, state: str | None = None) -> list[ContainerRecord]:
        if state:
            rows = self._query("SELECT * FROM containers WHERE state = ? ORDER BY created_at", (state,))
        else:
            rows = self._query("SELECT * FROM containers ORDER BY created_at")
        return [_container_from_row(r) for r in rows]

    def find_container(self, ref: str) -> ContainerRecord:
        """By full id, unique id prefix, or name (Docker's lookup order)."""
        rows = self._query("SELECT * FROM containers WHERE id = ? OR name = ?", (ref, ref))
        if not rows and ref and all(c in "0123456789abcdef" for c in ref):
            rows = self._query("SELECT * FROM containers WHERE id LIKE ?", (ref + "%",))
            if len(rows) > 1:
                raise NotFound(f"container id prefix {ref!r} is ambiguous")
        if not rows:
            raise NotFound(f"no such container: {ref}")
        return _container_from_row(rows[0])

    # -- images -------------------------------------------------------------------------------

    def add_image(self, rec: ImageRecord, tag: str | None) -> None:
        with self.write() as db:
            db.execute(
                # An upsert, not INSERT OR REPLACE: replacing the row would cascade-delete its other tags.
                "INSERT INTO images (id, config, size, created_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET config = excluded.config, size = excluded.size",
                (rec.id, json.dumps(rec.config), rec.size, rec.created_at),
            )
            if tag:
                db.execute("INSERT OR REPLACE INTO image_tags (name, image_id) VALUES (?, ?)", (tag, rec.id))

    def images(self) -> list[ImageRecord]:
        tags: dict[str, list[str]] = {}
        for row in self._query("SELECT name, image_id FROM image_tags ORDER BY name"):
            tags.setdefault(row["image_id"], []).append(row["name"])
        return [
            ImageRecord(r["id"], json.loads(r["config"]), r["size"], r["created_at"], tags.get(r["id"], []))
            for r in self._query("SELECT * FROM images ORDER BY created_at")
        ]

    def find_image(self, ref: str) -> ImageRecord | None:
        rows = self._query(
            "SELECT images.* FROM images LEFT JOIN image_tags ON image_tags.image_id = images.id "
            "WHERE image_tags.name = ? OR images.id = ? OR images.id = ? LIMIT 1",
            (ref, ref, "sha256:" + ref),
        )
        if not rows and len(ref) >= 4 and all(c in "0123456789abcdef" for c in ref):
            rows = self._query("SELECT * FROM images WHERE id LIKE ?", ("sha256:" + ref + "%",))
            if len(rows) > 1:
                return None
        if not rows:
            return None
        r = rows[0]
        tags = [t["name"] for t in self._query("SELECT name FROM image_tags WHERE image_id = ?", (r["id"],))]
        return ImageRecord(r["id"], json.loads(r["config"]), r["size"], r["created_at"], tags)

    def untag_image(self, tag: str) -> None:
        with self.write() as db:
            db.execute("DELETE FROM image_tags WHERE name = ?", (tag,))

    def delete_image(self, image_id: str) -> None:
        with self.write() as db:
            db.execute("DELETE FROM image_tags WHERE image_id = ?", (image_id,))
            db.execute("DELETE FROM images WHERE id = ?", (image_id,))

    def containers_using_image(self, image_id: str) -> list[str]:
        return [r["name"] for r in self._query("SELECT name FROM containers WHERE image_id = ?", (image_id,))]


def _container_row(rec: ContainerRecord) -> dict[str, Any]:
    row = dict(rec.__dict__)
    for key in _JSON_COLUMNS:
        row[key] = json.dumps(row[key])
    row["oom_killed"] = int(rec.oom_killed)
    return row


def _container_from_row(row: sqlite3.Row) -> ContainerRecord:
    data = dict(row)
    for key in _JSON_COLUMNS:
        data[key] = json.loads(data[key]) if data[key] else {}
    data["oom_killed"] = bool(data["oom_killed"])
    return ContainerRecord(**data)
