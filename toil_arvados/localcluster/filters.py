"""Arvados ``list`` semantics (filters, order, limit, offset, select, count, distinct) over dicts.

The local cluster keeps its objects in memory as plain JSON dicts, so list queries are evaluated
here in Python instead of SQL. The behaviour follows what the Arvados API server really does
(``services/api/lib/record_filters.rb`` and ``load_param.rb``), including its quirks, because the
SDK and tools were written against that server, not against an idealised spec:

* validation depends on the *column type* (``like`` on an integer column is an invalid attribute,
  ``contains``/``exists`` need a jsonb column), so a per-table column map mirrors Arvados' schema;
* SQL NULL logic: ``!=`` and ``not in`` also match NULL, ordering puts NULLs last ascending and
  first descending (PostgreSQL's default);
* subproperty filters (``properties.foo``) use jsonb containment, as Arvados does;
* unknown ``order`` entries are silently ignored, and with ``select`` the ordering is restricted
  to selected columns; ``kind`` is always returned.

Arvados' source is AGPL; this is an independent implementation from its observable behaviour.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable, Iterable, Mapping, Sequence

from .registry import KINDS
from .uuids import KIND_TO_TABLE, RESOURCE_KINDS


class FilterError(ValueError):
    """A list request Arvados rejects with HTTP 422; ``str(err)`` is the Arvados-style message."""


#: table name -> {column name -> "integer"|"string"|"text"|"datetime"|"boolean"|"float"|"jsonb"}:
#: Arvados' database columns (services/api/db/structure.sql) as the registry lists them.
COLUMN_TYPES: dict[str, dict[str, str]] = {t: k.column_types() for t, k in KINDS.items() if k.columns}

# Columns Arvados refuses to filter on / search in, per table (model overrides).
_NOT_SEARCHABLE = {t: set(k.not_searchable) for t, k in KINDS.items() if k.not_searchable}
_NOT_FULL_TEXT = {t: set(k.not_full_text) for t, k in KINDS.items() if k.not_full_text}
# Never returned by the API, so never selectable.
_NOT_SELECTABLE = {"secret_mounts", "secret_mounts_md5", "runtime_token", "id", "updated_at"}
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000  # Arvados' API.MaxItemsPerResponse default


# --------------------------------------------------------------------------- schema


@dataclass(frozen=True)
class Schema:
    """Column types of one table, which decide what a filter may do with each column."""

    table: str | None
    columns: Mapping[str, str]

    def searchable(self, operator: str) -> list[str]:
        """Columns an operator may name (Arvados' ``searchable_columns``)."""
        text_only = not re.search(r"[<=>]", operator) and operator not in ("in", "not in")
        allowed = {"string", "text"} if text_only else {"string", "text", "datetime", "integer",
                                                        "boolean"}
        skip = _NOT_SEARCHABLE.get(self.table or "", set())
        return [c for c, t in self.columns.items() if t in allowed and c not in skip]

    def any_searchable(self, operator: str) -> list[str]:
        return [c for c in self.searchable(operator) if self.columns[c] != "datetime"]

    def full_text(self) -> list[str]:
        """Columns concatenated for ``["any", "like", "%...%"]`` searches."""
        skip = _NOT_FULL_TEXT.get(self.table or "", set())
        return [c for c, t in self.columns.items()
                if t in ("string", "text", "jsonb") and c not in skip
                and not re.search(r"(^|_)(uuid|hash)$", c) and c != "container_image"]

    def model_name(self) -> str:
        if self.table in RESOURCE_KINDS:
            kind = RESOURCE_KINDS[self.table][0].split("#", 1)[1]
            return kind[0].upper() + kind[1:]
        return (self.table or "Object").title().replace("_", "")


_TS_INFER = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")


def schema_for(table: str | None = None, records: Iterable[dict] = (),
               columns: Mapping[str, str] | None = None) -> Schema:
    """The schema for a table: explicit ``columns``, else Arvados' schema, else inferred.

    Inference (for tables we do not know) types each key by its first non-null value, so an
    unknown table still gets sensible operator validation.
    """
    if columns is not None:
        return Schema(table, dict(columns))
    if table in COLUMN_TYPES:
        return Schema(table, COLUMN_TYPES[table])
    inferred: dict[str, str] = {}
    for rec in records:
        for key, value in rec.items():
            if inferred.get(key, "unknown") != "unknown":
                continue
            inferred[key] = _infer_type(value)
    return Schema(table, {k: ("string" if t == "unknown" else t) for k, t in inferred.items()})


def _infer_type(value: Any) -> str:
    if value is None:
        return "unknown"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, (dict, list)):
        return "jsonb"
    if isinstance(value, str) and _TS_INFER.match(value):
        return "datetime"
    return "string"


# --------------------------------------------------------------------------- value helpers


def _ruby_class(value: Any) -> str:
    """Ruby's class name for a JSON value, as Arvados' error messages show it."""
    if value is None:
        return "NilClass"
    if isinstance(value, bool):
        return "TrueClass" if value else "FalseClass"
    return {int: "Integer", float: "Float", str: "String", list: "Array",
            dict: "ActionController::Parameters"}.get(type(value), type(value).__name__)


def _inspect(value: Any) -> str:
    return "nil" if value is None else json.dumps(value)


def _compact_json(value: Any) -> str:
    """How Arvados stores a serialized (text) column: compact JSON, hash keys sorted."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def _pg_json_text(value: Any) -> str:
    """PostgreSQL's text rendering of a jsonb value (``col::text`` / ``->>`` on non-strings)."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


_TS_PARSE = re.compile(
    r"^\s*(\d{4})-(\d{1,2})-(\d{1,2})(?:[T ](\d{1,2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?)?"
    r"\s*(Z|UTC|[+-]\d{2}(?::?\d{2})?)?\s*$", re.IGNORECASE)


def normalize_timestamp(value: str) -> str:
    """A UTC timestamp string with nanosecond digits, so timestamps compare correctly as text.

    Arvados parses timestamp operands (``Time.parse``), so ``"2026-01-01T00:00:00Z"`` and
    ``"2026-01-01 00:00:00.5+00:00"`` both work; plain string comparison would misorder them
    against our nanosecond-precision ``...Z`` values.
    """
    m = _TS_PARSE.match(value)
    if not m:
        raise FilterError(f"Invalid timestamp {value!r} in filter")
    y, mo, d, h, mi, s, frac, tz = m.groups()
    dt = datetime(int(y), int(mo), int(d), int(h or 0), int(mi or 0), int(s or 0))
    if tz and tz.upper() not in ("Z", "UTC"):
        sign = 1 if tz[0] == "+" else -1
        digits = tz[1:].replace(":", "")
        offset = timedelta(hours=int(digits[:2]), minutes=int(digits[2:4] or 0))
        dt = dt - sign * offset
    nanos = (frac or "").ljust(9, "0")[:9]
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + "." + nanos


def _like_regex(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    """SQL LIKE pattern (``%``, ``_``, backslash escape) as an anchored regex."""
    out, i = [], 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        elif ch == "%":
            out.append(".*")
        elif ch == "_":
            out.append(".")
        else:
            out.append(re.escape(ch))
        i += 1
    return re.compile("^" + "".join(out) + "$", re.DOTALL | (re.IGNORECASE if ignore_case else 0))


def _jsonb_equal(a: Any, b: Any) -> bool:
    """jsonb equality: numbers by value, but booleans are not numbers."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_jsonb_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_jsonb_equal(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def jsonb_contains(container: Any, contained: Any, top: bool = True) -> bool:
    """PostgreSQL's ``@>``: objects contain sub-objects, arrays contain any subset of elements.

    A top-level array also contains a bare scalar; nested arrays do not, which is why Arvados'
    ``contains`` subproperty filter tries both ``{"k": v}`` and ``{"k": [v]}``.
    """
    if isinstance(container, dict) and isinstance(contained, dict):
        return all(k in container and jsonb_contains(container[k], v, False)
                   for k, v in contained.items())
    if isinstance(container, list) and isinstance(contained, list):
        return all(any(jsonb_contains(c, x, False) for c in container) for x in contained)
    if isinstance(container, list) and top and not isinstance(contained, (dict, list)):
        return any(_jsonb_equal(c, contained) for c in container)
    if isinstance(container, (dict, list)) or isinstance(contained, (dict, list)):
        return False
    return _jsonb_equal(container, contained)


def _jsonb_exists(value: Any, key: Any) -> bool:
    """PostgreSQL's ``?``: a top-level key, a string array element, or an equal string scalar."""
    if isinstance(value, dict):
        return key in value
    if isinstance(value, list):
        return any(isinstance(v, str) and v == key for v in value)
    return isinstance(value, str) and value == key


def _pg_literal_type(value: Any) -> str:
    """PostgreSQL's type for a value ActiveRecord quoted into SQL (a quoted string or NULL is
    ``unknown`` until a function signature types it)."""
    if value is None or isinstance(value, str):
        return "unknown"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer" if -2**31 <= value < 2**31 else "bigint" if -2**63 <= value < 2**63 else "numeric"
    return "numeric"


def _exists_key(operand: Any) -> str | None:
    """The key of a top-level ``[column, "exists", operand]`` filter, None for SQL NULL (no match).

    Arvados binds the operand into ``jsonb_exists_inline_op(column, ?)``, which takes one text
    argument. ActiveRecord quotes a string as one literal and nil (and an empty array or hash)
    as NULL; it spreads an array into comma-separated literals (a hash into its key/value
    pairs, which cannot be quoted). So a string or a one-string array works; any other shape is
    an error, reported as Arvados reports it: a 422 with the database's or the quoting's message.
    """
    if isinstance(operand, (dict, list)):
        if not operand:
            return None
        if isinstance(operand, dict) or any(isinstance(v, (dict, list)) for v in operand):
            inner = operand if isinstance(operand, list) else [list(pair) for pair in operand.items()]
            unquotable = next(v for v in inner if isinstance(v, (dict, list)))
            raise FilterError(f"can't quote {'Hash' if isinstance(unquotable, dict) else 'Array'}")
        values = operand
    else:
        values = [operand]
    if len(values) == 1 and (values[0] is None or isinstance(values[0], str)):
        return values[0]
    types = ", ".join(["jsonb", *(_pg_literal_type(v) for v in values)])
    raise FilterError(f"PG::UndefinedFunction: ERROR:  function jsonb_exists_inline_op({types}) does not exist")


def _jsonb_sort_key(value: Any) -> tuple:
    """PostgreSQL's jsonb ordering: Object > Array > Boolean > Number > String > Null."""
    if value is None:
        return (0,)
    if isinstance(value, bool):
        return (3, value)
    if isinstance(value, (int, float)):
        return (2, value)
    if isinstance(value, str):
        return (1, value)
    if isinstance(value, list):
        return (4, len(value), tuple(_jsonb_sort_key(v) for v in value))
    if isinstance(value, dict):
        keys = sorted(value, key=lambda k: (len(k), k))
        return (5, len(value), tuple((k, _jsonb_sort_key(value[k])) for k in keys))
    return (6, str(value))


def _cmp(op: str, left: Any, right: Any) -> bool:
    try:
        if op == "=":
            return left == right
        if op == "<>":
            return left != right
        if op == "<":
            return left < right
        if op == "<=":
            return left <= right
        if op == ">":
            return left > right
        if op == ">=":
            return left >= right
    except TypeError:
        return False
    raise FilterError(f"Invalid operator '{op}'")


# --------------------------------------------------------------------------- filter compilation

Row = Mapping[str, dict | None]  # "" -> the record itself, join name -> joined record
Predicate = Callable[[Row], bool]


@dataclass(frozen=True)
class Join:
    """An attribute prefix that reads another object, e.g. ``container.state`` on requests.

    Arvados implements it as an inner JOIN, so records whose joined object is missing never match
    a query that uses the prefix.
    """

    table: str
    fetch: Callable[[dict], dict | None]


def _column_value(record: dict | None, column: str, ctype: str) -> Any:
    """A record's value as the database would compare it (None = SQL NULL)."""
    if record is None:
        return None
    value = record.get(column)
    if value is None:
        return None
    if ctype == "datetime" and isinstance(value, str):
        try:
            return normalize_timestamp(value)
        except FilterError:
            return value
    if ctype in ("string", "text") and not isinstance(value, str):
        return _compact_json(value) if isinstance(value, (dict, list)) else (
            json.dumps(value) if isinstance(value, bool) else str(value))
    return value


#: The public name: the store's indexes key records by it, so they agree with the filters.
column_value = _column_value


class _Compiler:
    def __init__(self, schema: Schema, joins: Mapping[str, Join]) -> None:
        self.schema = schema
        self.joins = joins
        self.used_joins: set[str] = set()

    # -- entry point
    def compile(self, filters: Any) -> list[Predicate]:
        filters = parse_filters(filters)
        preds: list[Predicate] = []
        for f in filters:
            if isinstance(f, str):
                f = [f, "=", True]  # boolean expression form, as the controller converts it
            if not isinstance(f, (list, tuple)):
                raise FilterError(
                    f"Invalid element in filters array: {_inspect(f)} is not an array")
            if len(f) != 3:
                raise FilterError(f"Invalid filter {_inspect(f)}: must have exactly 3 elements "
                                  "[attribute, operator, operand]")
            pred = self._one(*f)
            if pred is not None:
                preds.append(pred)
        return preds

    def _one(self, attrs_in: Any, operator: Any, operand: Any) -> Predicate | None:
        if operator == "@@":
            raise FilterError("Full text search operator is no longer supported")
        if not isinstance(operator, str):
            raise FilterError(f"Invalid operator '{operator}' ({_ruby_class(operator)}) in filter")
        operator = operator.lower()
        preds: list[Predicate] = []
        if attrs_in == "any":
            attrs = self.schema.any_searchable(operator)
            if (operator in ("like", "ilike") and isinstance(operand, str)
                    and re.match(r"^%.*%$", operand, re.DOTALL)):
                preds.append(self._full_text(operator, operand))
                attrs = []
        elif isinstance(attrs_in, list):
            attrs = attrs_in
        elif isinstance(attrs_in, str):
            attrs = [attrs_in]
        else:
            raise FilterError(f"Invalid attribute '{attrs_in}' in filter")
        for attr in attrs:
            if not isinstance(attr, str):
                raise FilterError(f"Invalid attribute '{attr}' in filter")
            preds.append(self._attr(attr, operator, operand, lenient=attrs_in == "any"))
        if not preds:
            return None
        return preds[0] if len(preds) == 1 else (lambda row: any(p(row) for p in preds))

    def _full_text(self, operator: str, pattern: str) -> Predicate:
        regex = _like_regex(pattern, operator == "ilike")
        cols = [(c, self.schema.columns[c]) for c in self.schema.full_text()]

        def pred(row: Row) -> bool:
            rec = row[""] or {}
            parts = []
            for col, ctype in cols:
                v = rec.get(col)
                parts.append("" if v is None else v if isinstance(v, str)
                             else _pg_json_text(v) if ctype == "jsonb" else _compact_json(v))
            return bool(regex.match(" ".join(parts)))
        return pred

    def _resolve(self, attr: str) -> tuple[str, Schema, str, str | None]:
        """(join name or "", schema, column, subproperty path) for an attribute string."""
        parts = attr.split(".", 1)
        join, schema = "", self.schema
        if len(parts) == 2 and parts[0] in self.joins:
            join = parts[0]
            schema = schema_for(self.joins[join].table)
            parts = parts[1].split(".", 1)
        return join, schema, parts[0], (parts[1] if len(parts) == 2 else None)

    def _attr(self, attr: str, operator: str, operand: Any, lenient: bool) -> Predicate:
        join, schema, col, proppath = self._resolve(attr)
        ctype = schema.columns.get(col)
        if join:
            self.used_joins.add(join)

        def get(row: Row) -> Any:
            return _column_value(row.get(join), col, ctype or "string")

        if proppath is not None:
            if ctype != "jsonb":
                raise FilterError(f"Invalid attribute '{col}' for subproperty filter")
            if proppath.startswith("<") and proppath.endswith(">"):
                proppath = proppath[1:-1]
            return self._subproperty(get, proppath, operator, operand)
        if operator == "exists":
            if ctype != "jsonb":
                raise FilterError(
                    f"Invalid attribute '{col}' for operator '{operator}' in filter")
            key = _exists_key(operand)
            if key is None:
                return lambda row: False  # jsonb ? NULL is NULL: no record matches
            return lambda row: (v := get(row)) is not None and _jsonb_exists(v, key)
        expr = re.match(r"^ *\( *(\w+) *(<=?|>=?|=) *(\w+) *\) *$", col)
        if expr:
            return self._expression(attr, expr, operator, operand, schema, join)
        if col not in schema.searchable(operator) and not (
                ctype == "jsonb" and operator in ("contains", "=", "<>", "!=")):
            raise FilterError(f"Invalid attribute '{col}' in filter")
        if operator in ("=", "<", "<=", ">", ">=", "!=", "<>", "like", "ilike"):
            return self._compare(get, col, ctype, operator, operand, lenient)
        if operator in ("in", "not in"):
            return self._in(get, col, ctype, operator, operand)
        if operator == "is_a":
            return self._is_a(get, col, schema, operand)
        if operator == "contains":
            return self._contains(get, col, ctype, operand)
        raise FilterError(f"Invalid operator '{operator}'")

    def _expression(self, attr: str, expr: re.Match, operator: str, operand: Any,
                    schema: Schema, join: str) -> Predicate:
        if operator != "=" or not (operand is True or operand == "true"):
            raise FilterError(f"Invalid expression filter '{attr}': subsequent elements must be "
                              '["=", true]')
        op = expr.group(2)
        for tok in (expr.group(1), expr.group(3)):
            if tok not in schema.searchable(op):
                raise FilterError(f"Invalid attribute in expression: '{tok}'")
            if schema.columns[tok] != "integer":
                raise FilterError(f"Non-numeric attribute in expression: '{tok}'")
        a, b = expr.group(1), expr.group(3)

        def pred(row: Row) -> bool:
            rec = row.get(join) or {}
            x, y = rec.get(a), rec.get(b)
            return x is not None and y is not None and _cmp(op, x, y)
        return pred

    def _compare(self, get: Callable[[Row], Any], col: str, ctype: str | None, operator: str,
                 operand: Any, lenient: bool) -> Predicate:
        op = "<>" if operator == "!=" else operator
        if isinstance(operand, str):
            if ctype == "boolean":
                if op not in ("=", "<>"):
                    if lenient:
                        return lambda row: False
                    raise FilterError(f"Invalid operator '{op}' for boolean attribute '{col}'")
                low = operand.lower()
                if low in ("1", "t", "true", "y", "yes"):
                    operand = True
                elif low in ("0", "f", "false", "n", "no"):
                    operand = False
                elif lenient:
                    return lambda row: False  # "any": this column just cannot match
                else:
                    raise FilterError(f"Invalid operand '{operand}' for boolean attribute '{col}'")
            elif ctype == "datetime" and re.search(r"[<=>]", op):
                operand = normalize_timestamp(operand)
            elif ctype == "integer":
                try:
                    operand = int(operand.strip())
                except ValueError:
                    if not lenient:
                        raise FilterError(f"Invalid operand '{operand}' for integer attribute "
                                          f"'{col}'") from None
                    return lambda row: False
            elif ctype == "jsonb":
                try:
                    operand = json.loads(operand)
                except ValueError:
                    raise FilterError(f"Invalid operand '{operand}' for jsonb attribute "
                                      f"'{col}': not valid JSON") from None
                return self._jsonb_eq(get, op, operand)
            return self._scalar(get, op, operand)
        if operand is None and op == "=":
            return lambda row: get(row) is None
        if operand is None and op == "<>":
            return lambda row: get(row) is not None
        if ctype == "boolean" and op in ("=", "<>") and isinstance(operand, bool):
            return self._scalar(get, op, operand)
        if ctype == "integer":
            if (not isinstance(operand, int) or isinstance(operand, bool)
                    or operand.bit_length() > 64):
                raise FilterError(f"Invalid operand '{operand}' for integer attribute '{col}'")
            return self._scalar(get, op, operand)
        raise FilterError(f"Invalid operand type '{_ruby_class(operand)}' for '{op}' operator "
                          "in filters")

    @staticmethod
    def _scalar(get: Callable[[Row], Any], op: str, operand: Any) -> Predicate:
        if op in ("like", "ilike"):
            regex = _like_regex(operand, op == "ilike")
            return lambda row: isinstance(v := get(row), str) and bool(regex.match(v))
        if op == "<>":
            return lambda row: (v := get(row)) is None or v != operand
        return lambda row: (v := get(row)) is not None and _cmp(op, v, operand)

    @staticmethod
    def _jsonb_eq(get: Callable[[Row], Any], op: str, operand: Any) -> Predicate:
        if op == "=":
            return lambda row: (v := get(row)) is not None and _jsonb_equal(v, operand)
        if op == "<>":
            return lambda row: (v := get(row)) is None or not _jsonb_equal(v, operand)
        raise FilterError(f"Invalid operator '{op}' for jsonb attribute")

    @staticmethod
    def _in(get: Callable[[Row], Any], col: str, ctype: str | None, operator: str,
            operand: Any) -> Predicate:
        if not isinstance(operand, list):
            raise FilterError(f"Invalid operand type '{_ruby_class(operand)}' for '{operator}' "
                              "operator in filters")
        if ctype == "integer":
            for el in operand:
                if not isinstance(el, int) or isinstance(el, bool) or el.bit_length() > 64:
                    raise FilterError(f"Invalid element '{'' if el is None else el}' in array "
                                      f"for integer attribute '{col}'")
        values = [normalize_timestamp(v) if ctype == "datetime" and isinstance(v, str) else v
                  for v in operand]
        if operator == "in":
            return lambda row: (v := get(row)) is not None and v in values
        if None in values:
            # SQL: x NOT IN (..., NULL) is never true.
            return lambda row: False
        return lambda row: (v := get(row)) is None or v not in values

    def _is_a(self, get: Callable[[Row], Any], col: str, schema: Schema,
              operand: Any) -> Predicate:
        kinds = operand if isinstance(operand, list) else [operand]
        codes = set()
        for kind in kinds:
            table = _table_for_kind(kind)
            if table is not None:
                codes.add(RESOURCE_KINDS[table][1])
        if col == "uuid" and schema.table in RESOURCE_KINDS:
            own = RESOURCE_KINDS[schema.table][1] in codes
            return lambda row: own
        return lambda row: isinstance(v := get(row), str) and v[6:11] in codes

    @staticmethod
    def _contains(get: Callable[[Row], Any], col: str, ctype: str | None,
                  operand: Any) -> Predicate:
        if ctype != "jsonb":
            raise FilterError(f"Invalid attribute '{col}' for 'contains' operator")
        if operand == []:
            raise FilterError("Invalid operand '[]' for 'contains' operator")
        items = operand if isinstance(operand, list) else [operand]
        if not all(isinstance(i, str) for i in items):
            raise FilterError(f"Invalid element {_inspect(operand)} in operand for \"contains\" "
                              "operator (operand must be a string or array of strings)")
        return lambda row: (v := get(row)) is not None and all(_jsonb_exists(v, i) for i in items)

    @staticmethod
    def _subproperty(get: Callable[[Row], Any], key: str, operator: str,
                     operand: Any) -> Predicate:
        def prop(row: Row) -> tuple[bool, Any]:
            v = get(row)
            return (True, v[key]) if isinstance(v, dict) and key in v else (False, None)

        def text(row: Row) -> str | None:  # PostgreSQL's ->> : NULL for a JSON null
            found, v = prop(row)
            if not found or v is None:
                return None
            return v if isinstance(v, str) else _pg_json_text(v)

        if operator in ("=", "!="):
            negate = operator == "!="

            def eq(row: Row) -> bool:
                v = get(row)
                if v is None:
                    return False  # NOT (NULL @> x) is NULL too
                return jsonb_contains(v, {key: operand}) != negate
            return eq
        if operator == "in":
            if not isinstance(operand, list):
                raise FilterError(f"Invalid operand type '{_ruby_class(operand)}' for "
                                  f"'{operator}' operator in filters")
            return lambda row: (v := get(row)) is not None and any(
                jsonb_contains(v, {key: o}) for o in operand)
        if operator in ("<", "<=", ">", ">="):
            right = _jsonb_sort_key(operand)

            def order(row: Row) -> bool:
                found, v = prop(row)
                return found and _cmp(operator, _jsonb_sort_key(v), right)
            return order
        if operator in ("like", "ilike"):
            if not isinstance(operand, str):
                raise FilterError(f"Invalid operand type '{_ruby_class(operand)}' for "
                                  f"'{operator}' operator in filters")
            regex = _like_regex(operand, operator == "ilike")
            return lambda row: (t := text(row)) is not None and bool(regex.match(t))
        if operator == "not in":
            if not isinstance(operand, list):
                raise FilterError(f"Invalid operand type '{_ruby_class(operand)}' for "
                                  f"'{operator}' operator in filters")
            texts = [o if isinstance(o, str) else _pg_json_text(o) for o in operand]
            return lambda row: (t := text(row)) is None or t not in texts
        if operator == "exists":
            if operand is True:
                return lambda row: prop(row)[0]
            if operand is False:
                return lambda row: not prop(row)[0]
            raise FilterError(f"Invalid operand '{'' if operand is None else operand}' for "
                              f"'{operator}' must be true or false")
        if operator == "contains":
            return lambda row: (v := get(row)) is not None and (
                jsonb_contains(v, {key: operand}) or jsonb_contains(v, {key: [operand]}))
        raise FilterError(f"Invalid operator for subproperty search '{operator}'")


def _table_for_kind(kind: Any) -> str | None:
    """Resource table for ``arvados#collection`` (Rails' classify also accepts plurals)."""
    if not isinstance(kind, str) or not kind.startswith("arvados#"):
        return None
    if kind in KIND_TO_TABLE:
        return KIND_TO_TABLE[kind]
    if kind.endswith("s") and kind[:-1] in KIND_TO_TABLE:
        return KIND_TO_TABLE[kind[:-1]]
    return None


def parse_filters(filters: Any) -> list:
    """The ``filters`` parameter as a list: it may arrive as a JSON string (query parameter)."""
    if filters is None or filters == "":
        return []
    if isinstance(filters, str):
        try:
            filters = json.loads(filters)
        except ValueError:
            raise FilterError('Could not parse "filters" param as an array') from None
        if filters is None:
            return []
    if not isinstance(filters, list):
        raise FilterError('Could not parse "filters" param as an array')
    return filters


def compile_filters(filters: Any, *, table: str | None = None,
                    columns: Mapping[str, str] | None = None,
                    records: Iterable[dict] = (),
                    joins: Mapping[str, Join] | None = None) -> Callable[[dict], bool]:
    """Validate ``filters`` once and return a predicate over records.

    Validation happens up front (as Arvados builds its SQL before running it), so an invalid
    filter fails even when no record would be examined.
    """
    joins = joins or {}
    compiler = _Compiler(schema_for(table, records, columns), joins)
    preds = compiler.compile(filters)
    used = [(name, joins[name]) for name in sorted(compiler.used_joins)]

    def predicate(record: dict) -> bool:
        row: dict[str, dict | None] = {"": record}
        for name, join in used:
            row[name] = join.fetch(record)
            if row[name] is None:
                return False  # inner join
        return all(p(row) for p in preds)
    return predicate


def matches(record: dict, filters: Any, *, table: str | None = None,
            columns: Mapping[str, str] | None = None,
            joins: Mapping[str, Join] | None = None) -> bool:
    """True if ``record`` satisfies every filter (the implicit AND of Arvados' list)."""
    return compile_filters(filters, table=table, columns=columns, records=[record],
                           joins=joins)(record)


# --------------------------------------------------------------------------- order / select


def _parse_param_list(value: Any, name: str) -> list | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise FilterError(f'Could not parse "{name}" param as an array') from None
    if value is None or value is False:
        return None
    if not isinstance(value, list):
        raise FilterError(f'Could not parse "{name}" param as an array')
    return value


def parse_order(order: Any, schema: Schema) -> list[tuple[str, bool]]:
    """``order`` as [(column, descending)], then Arvados' defaults, deduplicated.

    Arvados silently drops entries naming unknown columns or directions, and appends its default
    order (``modified_at desc, uuid desc``; ``id desc`` for tokens) so paging is deterministic.
    It stops at the first unique column (uuid/id): later keys cannot change the order.
    """
    if isinstance(order, str):
        entries = _parse_param_list(order, "order") if order.startswith("[") else order.split(",")
    elif isinstance(order, list):
        entries = order
    else:
        entries = []
    given: list[tuple[str, bool]] = []
    for entry in entries:
        words = str(entry).strip().split()
        if not words:
            continue
        attr, direction = words[0], (words[1] if len(words) > 1 else "asc").lower()
        if direction not in ("asc", "desc"):
            continue
        if "." in attr and schema.table and attr.split(".", 1)[0] == schema.table:
            attr = attr.split(".", 1)[1]
        if re.match(r"^[a-z][_a-z0-9]+$", attr) and attr in schema.columns:
            given.append((attr, direction == "desc"))
    defaults = ([("id", True)] if schema.table == "api_client_authorizations"
                else [("modified_at", True), ("uuid", True)])
    result: list[tuple[str, bool]] = []
    seen: set[str] = set()
    for col, desc in given + defaults:
        if col in seen:
            continue
        seen.add(col)
        result.append((col, desc))
        if col in ("uuid", "id"):
            break
    return result


def _sort_key(value: Any, ctype: str) -> tuple:
    if ctype == "jsonb":
        return _jsonb_sort_key(value)
    if isinstance(value, bool):
        return (0, value)
    if isinstance(value, (int, float)):
        return (1, value)
    return (2, value if isinstance(value, str) else _compact_json(value))


def sort_records(records: list[dict], orders: Sequence[tuple[str, bool]],
                 schema: Schema) -> list[dict]:
    """Stable multi-key sort with PostgreSQL NULL placement (NULLs are the largest values)."""
    out = list(records)
    for col, desc in reversed(orders):
        ctype = schema.columns.get(col, "string")

        def key(rec: dict, col: str = col, ctype: str = ctype) -> tuple:
            v = _column_value(rec, col, ctype)
            return (1, ()) if v is None else (0, _sort_key(v, ctype))
        out.sort(key=key, reverse=desc)
    return out


def _parse_count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not re.match(r"^\d+$", str(value)):
        raise FilterError(f"Invalid value for {name} parameter")
    return int(value)


def normalize_limit(limit: Any, max_limit: int = MAX_LIMIT) -> int:
    """The limit in effect (echoed as ``limit`` in list responses): default 100, capped."""
    if limit is None or limit == "":
        return DEFAULT_LIMIT
    return min(_parse_count(limit, "limit"), max_limit)


def normalize_offset(offset: Any) -> int:
    """The offset in effect (echoed as ``offset`` in list responses)."""
    return 0 if offset is None or offset == "" else _parse_count(offset, "offset")


def parse_select(select: Any, schema: Schema, records: Sequence[dict]) -> list[str] | None:
    """Validated ``select`` list, or None for "all attributes"."""
    sel = _parse_param_list(select, "select")
    if sel is None:
        return None
    allowed = {"kind", "etag", "href"}
    allowed.update(c for c in schema.columns if c not in _NOT_SELECTABLE)
    for rec in records:
        allowed.update(rec.keys())
    out: list[str] = []
    for column in sel:
        column = str(column)
        if column == "modified_by_client_uuid":
            continue  # Arvados ignores this retired field instead of failing
        if schema.table and column.startswith(schema.table + "."):
            column = column[len(schema.table) + 1:]
        if column not in allowed:
            raise FilterError(f"Invalid attribute '{column}' of {schema.model_name()} in "
                              "select parameter")
        out.append(column)
    return out


def project(record: dict, select: Sequence[str] | None) -> dict:
    """The record restricted to ``select`` plus ``kind``, which Arvados always returns."""
    if select is None:
        return dict(record)
    keys = list(dict.fromkeys([*select, "kind"]))
    return {k: record.get(k) for k in keys if k in record or k != "kind"}


def apply_list(records: Iterable[dict], *, filters: Any = None, order: Any = None,
               limit: Any = DEFAULT_LIMIT, offset: Any = 0, select: Any = None,
               count: Any = "exact", distinct: Any = False, table: str | None = None,
               columns: Mapping[str, str] | None = None,
               joins: Mapping[str, Join] | None = None,
               max_limit: int = MAX_LIMIT) -> tuple[list[dict], int | None]:
    """Evaluate an Arvados ``list`` call: returns (items, items_available).

    ``items_available`` is None when ``count == "none"``. It counts matching records before
    limit/offset (and, like Arvados' ``count(id)``, before ``distinct``). ``table`` selects
    Arvados' column types (see :data:`COLUMN_TYPES`); ``joins`` enables prefixed attributes such
    as ``container.state`` on container requests. Raises :class:`FilterError` for invalid input.
    """
    records = list(records)
    schema = schema_for(table, records, columns)
    lim = normalize_limit(limit, max_limit)
    off = normalize_offset(offset)
    if count not in (None, "", "exact", "none"):
        raise FilterError("count parameter must be 'exact' or 'none'")
    sel = parse_select(select, schema, records)
    predicate = compile_filters(filters, table=table, columns=schema.columns, joins=joins)
    orders = parse_order(order, schema)
    if sel is not None:
        orders = [(c, d) for c, d in orders if c in sel]
    matched = sort_records([r for r in records if predicate(r)], orders, schema)
    items = [project(r, sel) for r in matched]
    if distinct and distinct not in ("false", "0", 0):
        seen: set[str] = set()
        unique = []
        for item in items:
            key = _compact_json(item)
            if key not in seen:
                seen.add(key)
                unique.append(item)
        items = unique
    available = None if count == "none" else len(matched)
    return items[off:off + lim], available
