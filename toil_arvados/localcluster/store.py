"""The cluster's object store: every Arvados object in memory, written through to SQLite.

A single-machine cluster holds at most a few hundred thousand objects, so keeping them all in
memory makes list queries (filters, order) simple Python over dicts while SQLite gives durability
across ``cluster down`` / ``cluster up``. Every create/update/delete writes an Arvados ``logs``
record in the same transaction: that record is what the websocket event bus pushes and what the
SDK's polling fallback reads with ``logs.list``, so both paths see one history.
"""
from __future__ import annotations

import copy
import json
import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any, Callable, Iterable

from ..timestamps import timestamp  # noqa: F401  (the cluster imports it from here)
from .uuids import RESOURCE_KINDS, kind_of_table, new_uuid, table_of

logger = logging.getLogger(__name__)

LogListener = Callable[[dict], None]

# Attributes never copied into a log record's old/new attributes: they are secrets.
# Also manifest_text: Arvados leaves it out of logs, where it would only bloat every event.
_SECRET_ATTRIBUTES = {"secret_mounts", "runtime_token", "api_token", "manifest_text", "unsigned_manifest_text"}


class Store:
    """All objects by UUID, grouped by resource table, plus the ordered event log."""

    def __init__(self, db_path: Path, cluster_id: str, system_user_uuid: str) -> None:
        self.cluster_id = cluster_id
        self.system_user_uuid = system_user_uuid
        # One writer at a time: the event loop and the dispatcher's worker threads both write,
        # and a log id must be taken and committed by the same writer.
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(db_path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before the API answers (Arvados' PostgreSQL fsyncs commits).
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS objects (uuid TEXT PRIMARY KEY, tbl TEXT NOT NULL, data TEXT NOT NULL)"
        )
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self.tables: dict[str, dict[str, dict]] = {t: {} for t in RESOURCE_KINDS}
        self._listeners: list[LogListener] = []
        self._log_list: list[dict] = []  # logs in id order, for replay
        for uuid, tbl, data in self._db.execute("SELECT uuid, tbl, data FROM objects"):
            self.tables.setdefault(tbl, {})[uuid] = json.loads(data)
        self._log_list = sorted(self.tables["logs"].values(), key=lambda r: r["id"])
        self._next_log_id = (self._log_list[-1]["id"] + 1) if self._log_list else 1

    # -- reading -------------------------------------------------------------------------------

    def get(self, uuid: str) -> dict | None:
        """The stored record (do not mutate it: use :meth:`update`)."""
        table = table_of(uuid)
        return self.tables.get(table, {}).get(uuid) if table else None

    def records(self, table: str) -> Iterable[dict]:
        # A snapshot: the dispatcher saves outputs and logs in worker threads (store.create) while
        # the event loop iterates, and a live dict view would raise "changed size during iteration".
        return list(self.tables[table].values())

    def logs_after(self, last_id: int) -> list[dict]:
        """Log records with ``id > last_id`` in id order (websocket ``last_log_id`` replay)."""
        lo, hi = 0, len(self._log_list)
        while lo < hi:  # binary search: ids are increasing
            mid = (lo + hi) // 2
            if self._log_list[mid]["id"] <= last_id:
                lo = mid + 1
            else:
                hi = mid
        return self._log_list[lo:]

    @property
    def last_log_id(self) -> int:
        return self._next_log_id - 1

    def meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # -- writing -------------------------------------------------------------------------------

    def add_listener(self, fn: LogListener) -> None:
        """Call ``fn(log_record)`` after each change is committed (on the writer's thread)."""
        self._listeners.append(fn)

    def create(self, table: str, attrs: dict, *, by: str | None = None, uuid: str | None = None,
               log: bool = True) -> dict:
        """Store a new object, filling the common fields Arvados gives every resource."""
        now = timestamp()
        record = copy.deepcopy(attrs)
        record["uuid"] = uuid or new_uuid(self.cluster_id, table)
        record["kind"] = kind_of_table(table)
        record.setdefault("owner_uuid", by or self.system_user_uuid)
        record["created_at"] = record.get("created_at") or now
        record["modified_at"] = now
        record["modified_by_user_uuid"] = by or self.system_user_uuid
        with self._lock:
            if table == "logs":  # a client-written log (e.g. live stderr) is an event of its own
                record["id"] = self._next_log_id
                record.setdefault("event_at", now)
            record["etag"] = _etag(record)
            entry = self._log_entry("create", None, record, by) if log and table != "logs" else None
            self._commit(table, record, None, record if table == "logs" else entry)
            self._notify(record if table == "logs" else entry)
        return record

    def update(self, uuid: str, changes: dict, *, by: str | None = None, log: bool = True,
               touch: bool = True) -> dict:
        """Apply ``changes`` to a stored object and record the change in the event log."""
        table = table_of(uuid)
        with self._lock:
            old = self.tables[table][uuid]
            new = dict(old)
            new.update(copy.deepcopy(changes))
            if new == old:
                return old
            if touch:
                new["modified_at"] = timestamp()
                new["modified_by_user_uuid"] = by or self.system_user_uuid
            new["etag"] = _etag(new)
            entry = self._log_entry("update", old, new, by) if log else None
            self._commit(table, new, None, entry)
            self._notify(entry)
        return new

    def delete(self, uuid: str, *, by: str | None = None) -> dict:
        table = table_of(uuid)
        with self._lock:
            old = self.tables[table][uuid]
            entry = self._log_entry("delete", old, None, by)
            self._commit(table, None, old, entry)
            self._notify(entry)
        return old

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- internals -----------------------------------------------------------------------------

    def _commit(self, table: str, record: dict | None, deleted: dict | None, entry: dict | None) -> None:
        """Make one change durable, then visible: the object row and its ``logs`` row go to SQLite
        in one transaction, and memory changes only once that committed. (``entry`` is
        ``record`` itself for a client-created log: that row is the event.)

        Why this order: a crash (or a failed write) must never leave an object that readers saw,
        or an event a client received, missing from the database, nor an object change without
        its event; and log ids must stay unique and increasing across a restart, so an id is
        only consumed by a committed row. The caller holds ``self._lock``.
        """
        # Explicit BEGIN: the connection is in autocommit mode (isolation_level=None), where
        # ``with connection:`` alone would commit each statement on its own.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            if record is not None:
                self._write(table, record)
            else:
                assert deleted is not None
                self._db.execute("DELETE FROM objects WHERE uuid=?", (deleted["uuid"],))
            if entry is not None and entry is not record:
                self._write("logs", entry)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")  # memory is untouched: nothing of the change is seen
            raise
        if record is not None:
            self.tables[table][record["uuid"]] = record
        else:
            self.tables[table].pop(deleted["uuid"], None)  # type: ignore[index]
        if entry is not None:
            self.tables["logs"][entry["uuid"]] = entry
            self._log_list.append(entry)
            self._next_log_id = entry["id"] + 1

    def _write(self, table: str, record: dict) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO objects (uuid, tbl, data) VALUES (?, ?, ?)",
            (record["uuid"], table, json.dumps(record, separators=(",", ":"))),
        )

    def _log_entry(self, event_type: str, old: dict | None, new: dict | None, by: str | None) -> dict:
        """The ``logs`` record of a change, with the next id (consumed only when committed)."""
        subject = new or old
        assert subject is not None
        now = timestamp()
        entry = {
            "id": self._next_log_id,
            "uuid": new_uuid(self.cluster_id, "logs"),
            "kind": "arvados#log",
            "etag": "",
            "owner_uuid": by or self.system_user_uuid,
            "object_uuid": subject["uuid"],
            "object_owner_uuid": subject.get("owner_uuid"),
            "event_type": event_type,
            "event_at": now,
            "summary": f"{event_type} of {subject['uuid']}",
            "properties": {
                "old_attributes": _public(old),
                "new_attributes": _public(new),
            },
            "created_at": now,
            "modified_at": now,
            "modified_by_user_uuid": by or self.system_user_uuid,
        }
        entry["etag"] = _etag(entry)
        return entry

    def _notify(self, entry: dict | None) -> None:
        if entry is None:
            return
        for fn in self._listeners:
            try:
                fn(entry)
            except Exception:  # a broken subscriber must not break writes
                logger.exception("event listener failed")


def _public(record: dict | None) -> dict | None:
    if record is None:
        return None
    return {k: v for k, v in record.items() if k not in _SECRET_ATTRIBUTES}


def _etag(record: dict) -> str:
    """Arvados etags are base-36 digests of the record; clients only compare them for equality."""
    import hashlib

    body = json.dumps({k: v for k, v in record.items() if k != "etag"}, sort_keys=True, default=str)
    n = int(hashlib.md5(body.encode()).hexdigest(), 16)
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = []
    while n:
        n, r = divmod(n, 36)
        out.append(digits[r])
    return "".join(reversed(out))[:25]


def deep_copy(record: Any) -> Any:
    return copy.deepcopy(record)
