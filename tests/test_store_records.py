"""Store.records() must be safe to iterate while other threads create objects.

Why: the dispatcher saves each container's output and log collections in worker threads while
the event loop finalizes another container by scanning the collections. With a live dict view
that scan raised "dictionary changed size during iteration", the container request never became
Final, and the Toil workflow waiting for it hung (seen in the CWL conformance run).
"""
from __future__ import annotations

import pytest

from toil_arvados.localcluster.store import Store


def test_records_is_a_snapshot_unaffected_by_creates_during_iteration(tmp_path):
    store = Store(tmp_path / "arvados.sqlite3", "local", "local-tpzed-000000000000000")
    for i in range(3):
        store.create("collections", {"name": f"c{i}", "manifest_text": ""})
    seen = []
    for record in store.records("collections"):
        seen.append(record["name"])
        store.create("collections", {"name": f"made while reading {record['name']}", "manifest_text": ""})
    assert seen == ["c0", "c1", "c2"]
    assert len(list(store.records("collections"))) == 6


class _FailingLogWrites:
    """Wraps the store's SQLite connection: inserting a ``logs`` row fails, as a full disk would."""

    def __init__(self, db):
        self.db = db

    def execute(self, sql, params=()):
        if sql.startswith("INSERT OR REPLACE INTO objects") and params[1] == "logs":
            raise OSError("disk full")
        return self.db.execute(sql, params)


def _rows(path) -> int:
    import sqlite3

    with sqlite3.connect(path) as db:
        return db.execute("SELECT count(*) FROM objects").fetchone()[0]


def test_a_change_and_its_log_commit_together_before_memory_changes(tmp_path):
    """If the log row cannot be written, the object row is rolled back, memory is unchanged and
    no log id is used: readers never see a change the database (and a restart) would not have."""
    path = tmp_path / "arvados.sqlite3"
    store = Store(path, "local", "local-tpzed-000000000000000")
    kept = store.create("collections", {"name": "kept", "manifest_text": ""})
    rows, last_id = _rows(path), store.last_log_id
    real = store._db
    store._db = _FailingLogWrites(real)
    try:
        with pytest.raises(OSError):
            store.create("collections", {"name": "lost", "manifest_text": ""})
        with pytest.raises(OSError):
            store.update(kept["uuid"], {"name": "renamed"})
        with pytest.raises(OSError):
            store.delete(kept["uuid"])
    finally:
        store._db = real
    assert [r["name"] for r in store.records("collections")] == ["kept"]
    assert store.get(kept["uuid"])["name"] == "kept"
    assert store.last_log_id == last_id and _rows(path) == rows
    entry = store.create("collections", {"name": "next", "manifest_text": ""})
    assert store.last_log_id == last_id + 1  # the failed changes used no id
    store.close()
    reopened = Store(path, "local", "local-tpzed-000000000000000")
    assert sorted(r["name"] for r in reopened.records("collections")) == ["kept", "next"]
    assert [r["id"] for r in reopened.logs_after(0)] == list(range(1, last_id + 2))
    assert reopened.get(entry["uuid"]) == entry
