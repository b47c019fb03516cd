"""Secondary indexes of the object store, and the list planner that uses them.

A workflow run makes thousands of container requests and collections, and the API server, the
life cycle and the dispatcher look records up by key for each of them (a name in a project, a
content hash, a queue state, a list of UUIDs). Scanning every record for each lookup made each
call cost O(records), so a run cost O(records²). The store keeps these indexes up to date on
every committed change; lookups then cost what they return.

Everything here is pure: an :class:`IndexSpec` says how to compute a record's key, and
:func:`plan` picks, from a ``list`` call's filters, the index that bounds the records that can
match. The planner only ever narrows to a *superset* of the matches (the full filters still run
on what it returns), so results are exactly what a scan gives.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Iterable, Protocol

from . import reuse
from .filters import COLUMN_TYPES, column_value, parse_filters, FilterError
from .registry import KINDS

#: A record's key in an index (None leaves the record out), or for a multi-key index its keys.
KeyFunction = Callable[[dict], Any]


@dataclass(frozen=True)
class IndexSpec:
    """One index: records of ``table`` grouped by ``key(record)``.

    ``column`` names the column the index is on, for the planner: a string column's index keys
    records by the column's value *as a filter compares it* (:func:`filters.column_value`), which
    is what lets the planner answer ``=``/``in`` filters from it exactly. ``multi``: ``key``
    returns several keys (a jsonb column's index has one per property).
    """

    table: str
    name: str
    key: KeyFunction
    column: str | None = None
    multi: bool = False


def column_index(table: str, column: str) -> IndexSpec:
    """An index on a string column, or on the properties of a jsonb column (planner-usable)."""
    ctype = COLUMN_TYPES.get(table, {}).get(column)
    if ctype == "jsonb":
        return IndexSpec(table, column, lambda r: property_keys(r.get(column)), column, multi=True)
    if ctype != "string":
        raise ValueError(f"{table}.{column} is neither a string nor a jsonb column: the planner cannot "
                         "use an index on it")
    return IndexSpec(table, column, lambda r: column_value(r, column, "string"), column)


def property_keys(value: Any) -> list[tuple[str, str]]:
    """(key, value) of each string-valued property: exactly what ``["<column>.<key>", "=",
    "<value>"]`` matches (jsonb containment of ``{key: value}`` in an object), so a job store
    finding its files by a property, or a runner its requests, needs no scan."""
    if not isinstance(value, dict):
        return []
    return [(k, v) for k, v in value.items() if isinstance(v, str)]


def owner_name_key(record: dict) -> Hashable | None:
    """(owner, name) as filters compare them: the per-owner unique-name check and the frequent
    ``owner_uuid = P, name = N`` list (a job store finding a file in its project) use it."""
    name = column_value(record, "name", "string")
    return None if name is None else (column_value(record, "owner_uuid", "string"), name)


def token_digest(secret: str) -> str:
    """What tokens are indexed by: a digest, so a lookup's timing says nothing about how much
    of a guessed secret was right (each candidate is then compared in constant time)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def _token_key(record: dict) -> str:
    return token_digest(str(record.get("api_token") or ""))


#: Every index the store keeps: the registry's indexed columns (they serve ``list`` filters as
#: well as the server's own lookups), owner+name where names are unique per owner, and two that
#: serve one lookup each.
INDEXES: tuple[IndexSpec, ...] = (
    *(column_index(t, column) for t, k in KINDS.items() for column in k.indexed),
    *(IndexSpec(t, "owner_name", owner_name_key) for t, k in KINDS.items() if k.unique_names),
    # Reuse candidates: containers that run the same command the same way (reuse.reuse_key).
    IndexSpec("containers", "reuse_key", reuse.reuse_key),
    IndexSpec("api_client_authorizations", "token", _token_key),
)


# --------------------------------------------------------------------------- planning


class IndexedRecords(Protocol):
    """What the planner needs of the store."""

    def index_of(self, table: str, column: str) -> IndexSpec | None: ...
    def has_index(self, table: str, index: str) -> bool: ...
    def count(self, table: str, index: str, keys: Iterable[Hashable]) -> int: ...
    def lookup_many(self, table: str, index: str, keys: Iterable[Hashable]) -> list[dict]: ...
    def get_many(self, table: str, uuids: Iterable[str]) -> list[dict]: ...


@dataclass(frozen=True)
class Plan:
    """Read the records of ``table`` whose ``index`` key is one of ``keys`` (``uuid``: by id)."""

    index: str
    keys: tuple[Hashable, ...]


def plan(table: str, filters: Any, store: IndexedRecords) -> Plan | None:
    """The most selective index lookup the filters allow, or None (scan every record).

    A filter qualifies when it names one indexed string column (or ``uuid``) with ``=`` and a
    string, or ``in`` and a list: a record matches it only if the column's value is one of the
    strings, so the lookup returns every record that can match. ``owner_uuid = O`` and
    ``name = N`` together use the owner+name index. Anything else (``any``, joins,
    subproperties, other operators, malformed filters) is left to the scan, which also reports
    invalid filters exactly as before.
    """
    try:
        parsed = parse_filters(filters)
    except FilterError:
        return None
    plans = [p for p in (_plannable(table, f, store) for f in parsed) if p is not None]
    equal = {p.index: p.keys[0] for p in plans if len(p.keys) == 1 and p.index in ("owner_uuid", "name")}
    if len(equal) == 2 and store.has_index(table, "owner_name"):
        plans.append(Plan("owner_name", ((equal["owner_uuid"], equal["name"]),)))
    best: tuple[int, Plan] | None = None
    for candidate in plans:
        if candidate.index != "uuid" and not store.has_index(table, candidate.index):
            continue  # a name filter without its owner, on a table with no name index
        size = (len(candidate.keys) if candidate.index == "uuid"
                else store.count(table, candidate.index, candidate.keys))
        if best is None or size < best[0]:
            best = (size, candidate)
    return best[1] if best else None


def _plannable(table: str, f: Any, store: IndexedRecords) -> Plan | None:
    """The lookup one filter allows on its own (``name`` is only used with ``owner_uuid``)."""
    if not isinstance(f, (list, tuple)) or len(f) != 3:
        return None
    column, operator, operand = f
    if not isinstance(column, str) or not isinstance(operator, str):
        return None
    if "." in column:
        return _property_plan(table, column, operator.lower(), operand, store)
    spec = store.index_of(table, column)
    if column not in ("uuid", "name") and (spec is None or spec.multi):
        return None  # (a jsonb column compared whole is not what its property index holds)
    op = operator.lower()
    if op == "=" and isinstance(operand, str):
        return Plan(column, (operand,))
    if op == "in" and isinstance(operand, list):
        # Only strings can equal a string column's value; other elements match nothing.
        return Plan(column, tuple(dict.fromkeys(x for x in operand if isinstance(x, str))))
    return None


def _property_plan(table: str, attr: str, op: str, operand: Any, store: IndexedRecords) -> Plan | None:
    """``["properties.k", "=", "v"]`` (or ``in`` a list of strings): the property index's
    records whose property ``k`` is the string ``v``. A non-string operand may also match
    numbers, objects or arrays, which that index does not hold: left to the scan."""
    column, _, key = attr.partition(".")
    spec = store.index_of(table, column)
    if spec is None or not spec.multi:
        return None
    if key.startswith("<") and key.endswith(">"):
        key = key[1:-1]
    if op == "=" and isinstance(operand, str):
        return Plan(column, ((key, operand),))
    if op == "in" and isinstance(operand, list) and all(isinstance(x, str) for x in operand):
        return Plan(column, tuple(dict.fromkeys((key, x) for x in operand)))
    return None


def candidates(table: str, filters: Any, store: IndexedRecords) -> list[dict] | None:
    """The records a list with ``filters`` needs to look at (table order), or None for all."""
    p = plan(table, filters, store)
    if p is None:
        return None
    if p.index == "uuid":
        return store.get_many(table, p.keys)  # type: ignore[arg-type]
    return store.lookup_many(table, p.index, p.keys)
