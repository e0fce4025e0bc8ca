"""The SQLite state store: settings, lookups, conflicts (no root)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from isobox.errors import Conflict, NotFound
from isobox.state import ContainerRecord, ImageRecord, StateStore


@pytest.fixture
def store(tmp_path) -> StateStore:
    s = StateStore(tmp_path / "db" / "isobox.db")
    s.add_image(ImageRecord("sha256:" + "a" * 64, {"cmd": ["sh"]}, 10, 0.0), "busybox:latest")
    return s


def record(cid: str, name: str) -> ContainerRecord:
    return ContainerRecord(id=cid, name=name, image_id="sha256:" + "a" * 64, image_ref="busybox", spec={"image": "busybox"})


def test_durability_settings(store: StateStore) -> None:
    db = store._db
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_a_row_committed_without_fsync_is_synced_through_the_wal(store: StateStore, monkeypatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    store.add_container(record("abc123" + "0" * 58, "web"), durable=False)
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # back to FULL after it
    store.sync()
    wal = store._db.execute("PRAGMA database_list").fetchone()["file"] + "-wal"
    assert synced == [wal]
    assert StateStore(Path(wal[: -len("-wal")])).find_container("web").name == "web"


def test_lookup_by_id_prefix_and_name(store: StateStore) -> None:
    store.add_container(record("abc123" + "0" * 58, "web"))
    store.add_container(record("abd456" + "0" * 58, "db"))
    assert store.find_container("web").id.startswith("abc123")
    assert store.find_container("abd").name == "db"
    with pytest.raises(NotFound, match="ambiguous"):
        store.find_container("ab")
    with pytest.raises(NotFound, match="no such container"):
        store.find_container("ghost")


def test_name_clash_is_a_conflict_and_changes_nothing(store: StateStore) -> None:
    store.add_container(record("1" * 64, "web"))
    with pytest.raises(Conflict, match="already in use"):
        store.add_container(record("2" * 64, "web"))
    assert [c.id for c in store.containers()] == ["1" * 64]


def test_update_round_trips_json_columns(store: StateStore) -> None:
    store.add_container(record("1" * 64, "web"))
    store.update_container("1" * 64, state="running", applied={"Capabilities": ["CHOWN"]}, oom_killed=1)
    rec = store.find_container("web")
    assert rec.state == "running" and rec.applied == {"Capabilities": ["CHOWN"]} and rec.oom_killed is True


def test_retagging_keeps_other_tags(store: StateStore) -> None:
    image = ImageRecord("sha256:" + "a" * 64, {"cmd": ["sh"]}, 10, 0.0)
    store.add_image(image, "other:1")
    store.add_image(image, "busybox:latest")  # an upsert must not cascade-delete "other:1"
    found = store.find_image("other:1")
    assert found is not None and sorted(found.tags) == ["busybox:latest", "other:1"]


def test_image_in_use_cannot_vanish_under_a_container(store: StateStore) -> None:
    store.add_container(record("1" * 64, "web"))
    assert store.containers_using_image("sha256:" + "a" * 64) == ["web"]
    with pytest.raises(Exception, match="FOREIGN KEY"):
        store.delete_image("sha256:" + "a" * 64)


def test_run_state_writes_skip_the_fsync_and_restore_it(store: StateStore, tmp_path) -> None:
    import sqlite3

    store.add_container(record("1" * 64, "web"))
    store.update_container("1" * 64, durable=False, state="running", pid=42)
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL again afterwards
    other = sqlite3.connect(str(tmp_path / "db" / "isobox.db"))  # committed: another reader sees it
    assert other.execute("SELECT state, pid FROM containers").fetchone() == ("running", 42)
    other.close()
    with pytest.raises(sqlite3.OperationalError), store.write(durable=False) as db:
        db.execute("UPDATE nowhere SET x = 1")
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # also after a failed write
    assert store.find_container("web").state == "running"
