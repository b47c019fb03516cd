"""Store.records() must be safe to iterate while other threads create objects.

Why: the dispatcher saves each container's output and log collections in worker threads while
the event loop finalizes another container by scanning the collections. With a live dict view
that scan raised "dictionary changed size during iteration", the container request never became
Final, and the Toil workflow waiting for it hung (seen in the CWL conformance run).
"""
from __future__ import annotations

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
