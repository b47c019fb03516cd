"""The cluster's object store: every Arvados object in memory, written through to SQLite.

A single-machine cluster holds at most a few hundred thousand objects, so keeping them all in
memory makes list queries (filters, order) simple Python over dicts while SQLite gives durability
across ``cluster down`` / ``cluster up``. Every create/update/delete writes an Arvados ``logs``
record in the same transaction: that record is what the websocket event bus pushes and what the
SDK's polling fallback reads with ``logs.list``, so both paths see one history.

Lookups by key (a name in a project, a content hash, a queue state, a list of UUIDs) go through
secondary indexes (:mod:`indexes`) kept in step with every committed change, so no request has
to scan every record: a workflow run makes thousands of them.
"""
from __future__ import annotations

import copy
import json
import logging
import secrets
import sqlite3
import threading
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable

from ..timestamps import timestamp  # noqa: F401  (the cluster imports it from here)
from .indexes import INDEXES, IndexSpec
from .uuids import BASE36, RESOURCE_KINDS, kind_of_table, new_uuid, table_of

logger = logging.getLogger(__name__)

LogListener = Callable[[dict], None]

# Attributes never copied into a log record's old/new attributes: they are secrets.
# Also manifest_text: Arvados leaves it out of logs, where it would only bloat every event.
_SECRET_ATTRIBUTES = {"secret_mounts", "runtime_token", "api_token", "manifest_text", "unsigned_manifest_text"}


class _Index:
    """One secondary index: key -> {uuid: position in its table}, each bucket in table order."""

    def __init__(self, spec: IndexSpec) -> None:
        self.spec = spec
        self.buckets: dict[Hashable, dict[str, int]] = {}
        self.unordered: set[Hashable] = set()  # buckets a moved record left out of table order

    def keys(self, record: dict) -> frozenset:
        """The keys ``record`` is found under: one, none, or (a multi-key index) several."""
        found = self.spec.key(record)
        keys = found if self.spec.multi else (found,)
        return frozenset(k for k in keys if k is not None and _hashable(k))

    def add(self, key: Hashable, uuid: str, position: int) -> None:
        bucket = self.buckets.setdefault(key, {})
        if bucket and next(reversed(bucket.values())) > position:
            self.unordered.add(key)
        bucket[uuid] = position

    def remove(self, key: Hashable, uuid: str) -> None:
        bucket = self.buckets.get(key)
        if bucket is not None:
            bucket.pop(uuid, None)
            if not bucket:
                del self.buckets[key]
                self.unordered.discard(key)

    def uuids(self, key: Hashable) -> list[str]:
        """The UUIDs under ``key`` in table order (the order a scan would see them in)."""
        bucket = self.buckets.get(key)
        if not bucket:
            return []
        if key in self.unordered:
            self.buckets[key] = bucket = dict(sorted(bucket.items(), key=lambda kv: kv[1]))
            self.unordered.discard(key)
        return list(bucket)


class Store:
    """All objects by UUID, grouped by resource table, plus the ordered event log.

    Thread-safe: the event loop and the dispatcher's worker threads (saving outputs and logs)
    use one store. Writers serialize on ``_lock`` (held across the SQLite transaction, the log
    id and the listeners); the in-memory tables and indexes change only under ``_mem``, which
    readers also take, briefly, so a reader never sees a record without its index entries or a
    half-applied change. Reads return the stored dicts (or lists of them): never mutate one, use
    :meth:`update`. Listeners run on the writer's thread, under ``_lock``. Each call is atomic;
    a read-then-write sequence is not (the life cycle makes those on the event loop only, while
    worker threads only add collections).
    """

    def __init__(self, db_path: Path, cluster_id: str, system_user_uuid: str,
                 indexes: Iterable[IndexSpec] = INDEXES) -> None:
        self.cluster_id = cluster_id
        self.system_user_uuid = system_user_uuid
        # One writer at a time: the event loop and the dispatcher's worker threads both write,
        # and a log id must be taken and committed by the same writer.
        self._lock = threading.RLock()
        # Memory (tables, indexes, positions, event list): held only while memory changes or is
        # read, never across I/O, so a reader never waits for a writer's fsync.
        self._mem = threading.Lock()
        self._indexes: dict[str, dict[str, _Index]] = {}
        for spec in indexes:
            self._indexes.setdefault(spec.table, {})[spec.name] = _Index(spec)
        # Position of each record in its table (insertion order): index lookups return records in
        # the order a scan of the table would, so results never depend on which path ran.
        self._position: dict[str, int] = {}
        self._next_position = 0
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
            self.tables.setdefault(tbl, {})[uuid] = record = json.loads(data)
            self._index_add(tbl, record)
        self._log_list = sorted(self.tables["logs"].values(), key=lambda r: r["id"])
        self._next_log_id = (self._log_list[-1]["id"] + 1) if self._log_list else 1

    # -- reading -------------------------------------------------------------------------------

    def get(self, uuid: str) -> dict | None:
        """The stored record (do not mutate it: use :meth:`update`)."""
        table = table_of(uuid)
        if not table:
            return None
        with self._mem:
            return self.tables.get(table, {}).get(uuid)

    def records(self, table: str) -> list[dict]:
        """Every record of ``table``, in table order: O(records), so only for whole-table work
        (a list no index can narrow, crash repair). Look up by key with :meth:`lookup`."""
        # A snapshot: the dispatcher saves outputs and logs in worker threads (store.create) while
        # the event loop iterates, and a live dict view would raise "changed size during iteration".
        with self._mem:
            return list(self.tables[table].values())

    def index_of(self, table: str, column: str) -> IndexSpec | None:
        """The index on column ``column`` of ``table``, if there is one (list planning)."""
        index = self._indexes.get(table, {}).get(column)
        return index.spec if index is not None and index.spec.column == column else None

    def has_index(self, table: str, index: str) -> bool:
        return index in self._indexes.get(table, {})

    def lookup(self, table: str, index: str, key: Hashable) -> list[dict]:
        """The records of ``table`` whose ``index`` key is ``key``, in table order."""
        return self.lookup_many(table, index, (key,))

    def lookup_many(self, table: str, index: str, keys: Iterable[Hashable]) -> list[dict]:
        """The records of ``table`` whose ``index`` key is any of ``keys``, in table order."""
        idx = self._indexes[table][index]
        keys = [k for k in keys if _hashable(k)]  # an unhashable key is no record's key
        with self._mem:
            rows = self.tables[table]
            uuids = [u for k in dict.fromkeys(keys) for u in idx.uuids(k)]
            if len(keys) > 1:  # a record of a multi-key index may be under several of the keys
                uuids = sorted(dict.fromkeys(uuids), key=self._position.__getitem__)
            return [rows[u] for u in uuids]

    def count(self, table: str, index: str, keys: Iterable[Hashable]) -> int:
        """How many records :meth:`lookup_many` would return (without building the list)."""
        idx = self._indexes[table][index]
        with self._mem:
            return sum(len(idx.buckets.get(k, ())) for k in dict.fromkeys(keys) if _hashable(k))

    def get_many(self, table: str, uuids: Iterable[str]) -> list[dict]:
        """The records of ``table`` with these UUIDs (missing ones left out), in table order."""
        with self._mem:
            rows = self.tables[table]
            found = [rows[u] for u in dict.fromkeys(uuids) if u in rows]
            found.sort(key=lambda r: self._position[r["uuid"]])
            return found

    def logs_after(self, last_id: int) -> list[dict]:
        """Log records with ``id > last_id`` in id order (websocket ``last_log_id`` replay)."""
        with self._mem:
            log_list = self._log_list
            lo, hi = 0, len(log_list)
            while lo < hi:  # binary search: ids are increasing
                mid = (lo + hi) // 2
                if log_list[mid]["id"] <= last_id:
                    lo = mid + 1
                else:
                    hi = mid
            return log_list[lo:]

    @property
    def last_log_id(self) -> int:
        return self._next_log_id - 1

    def meta(self, key: str) -> str | None:
        with self._lock:  # the connection is shared with writers on other threads
            row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self._lock:
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
            record["etag"] = _new_etag()
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
            new["etag"] = _new_etag()
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
        with self._mem:
            if record is not None:
                self._put(table, record)
            else:
                assert deleted is not None
                self._remove(table, deleted["uuid"])
            if entry is not None:
                self._put("logs", entry)
                self._log_list.append(entry)
                self._next_log_id = entry["id"] + 1

    def _put(self, table: str, record: dict) -> None:
        """Store ``record`` in memory and move its index entries (caller holds ``_mem``)."""
        rows = self.tables[table]
        old = rows.get(record["uuid"])
        rows[record["uuid"]] = record
        if old is None:
            self._index_add(table, record)
            return
        position = self._position[record["uuid"]]
        for idx in self._indexes.get(table, {}).values():
            before, after = idx.keys(old), idx.keys(record)
            for key in before - after:
                idx.remove(key, record["uuid"])
            for key in after - before:
                idx.add(key, record["uuid"], position)

    def _remove(self, table: str, uuid: str) -> None:
        old = self.tables[table].pop(uuid, None)
        if old is None:
            return
        for idx in self._indexes.get(table, {}).values():
            for key in idx.keys(old):
                idx.remove(key, uuid)
        del self._position[uuid]

    def _index_add(self, table: str, record: dict) -> None:
        """Give a new record its table position and index entries."""
        position = self._position[record["uuid"]] = self._next_position
        self._next_position += 1
        for idx in self._indexes.get(table, {}).values():
            for key in idx.keys(record):
                idx.add(key, record["uuid"], position)

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
        entry["etag"] = _new_etag()
        return entry

    def _notify(self, entry: dict | None) -> None:
        if entry is None:
            return
        for fn in self._listeners:
            try:
                fn(entry)
            except Exception:  # a broken subscriber must not break writes
                logger.exception("event listener failed")


def groups_above(store: "Store", record: dict) -> Iterable[dict]:
    """The groups that own ``record``, nearest first (its project, that project's owner, ...),
    up to a user or a missing group: the chain Arvados' trashed and frozen groups follow."""
    owner, seen = record.get("owner_uuid"), set()
    while isinstance(owner, str) and table_of(owner) == "groups" and owner not in seen:
        seen.add(owner)
        group = store.get(owner)
        if group is None:
            return
        yield group
        owner = group.get("owner_uuid")


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _public(record: dict | None) -> dict | None:
    if record is None:
        return None
    return {k: v for k, v in record.items() if k not in _SECRET_ATTRIBUTES}


def _new_etag() -> str:
    """A new etag for a new version of a record: base 36, as long as Arvados' (an md5 digest of
    the record there). Clients only compare etags, so a random 128-bit one per version serves
    them alike, without serializing the record (and its manifest) once more per change."""
    n, digits = secrets.randbits(128), []
    while n:
        n, r = divmod(n, 36)
        digits.append(BASE36[r])
    return "".join(reversed(digits))[:25]


def deep_copy(record: Any) -> Any:
    return copy.deepcopy(record)
