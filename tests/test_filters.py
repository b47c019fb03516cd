"""Arvados list semantics over plain dicts (toil_arvados.localcluster.filters)."""
from __future__ import annotations

import pytest

from toil_arvados.localcluster.filters import (
    FilterError, Join, apply_list, jsonb_contains, matches, normalize_limit, normalize_timestamp,
)

C1 = "zzzzz-4zz18-aaaaaaaaaaaaaaa"
C2 = "zzzzz-4zz18-bbbbbbbbbbbbbbb"
C3 = "zzzzz-4zz18-ccccccccccccccc"
PROJECT = "zzzzz-j7d0g-ppppppppppppppp"
USER = "zzzzz-tpzed-uuuuuuuuuuuuuuu"


def coll(uuid: str, name: str, modified_at: str, **kw) -> dict:
    rec = {"kind": "arvados#collection", "etag": "e", "uuid": uuid, "name": name,
           "owner_uuid": PROJECT, "modified_at": modified_at, "created_at": modified_at,
           "properties": {}, "replication_desired": None, "file_count": 0,
           "storage_classes_desired": ["default"], "is_trashed": False,
           "portable_data_hash": "d41d8cd98f00b204e9800998ecf8427e+0", "description": None}
    rec.update(kw)
    return rec


RECORDS = [
    coll(C1, "alpha.txt", "2026-11-25T11:38:57.100000000Z", file_count=3,
         properties={"type": "output", "n": 5, "tags": ["a", "b"], "http://x/y": "u"},
         replication_desired=2, storage_classes_desired=["default", "fast"]),
    coll(C2, "Beta.txt", "2026-11-25T11:38:58.000000000Z", file_count=1,
         properties={"type": "log", "n": 10}, owner_uuid=USER, description="some words here"),
    coll(C3, "gamma_1", "2026-11-24T00:00:00.000000000Z", file_count=3, is_trashed=True),
]


def uuids(filters, **kw) -> list[str]:
    items, _ = apply_list(RECORDS, filters=filters, table="collections",
                          order=kw.pop("order", "uuid asc"), **kw)
    return [i["uuid"] for i in items]


@pytest.mark.parametrize("flt, expected", [
    (["name", "=", "alpha.txt"], [C1]),
    (["name", "!=", "alpha.txt"], [C2, C3]),
    (["file_count", "=", 3], [C1, C3]),
    (["file_count", "<", 3], [C2]),
    (["file_count", "<=", 1], [C2]),
    (["file_count", ">", 1], [C1, C3]),
    (["file_count", ">=", 3], [C1, C3]),
    (["file_count", "=", "3"], [C1, C3]),  # string operand cast to the integer column
    (["name", "like", "b%"], []),  # case-sensitive
    (["name", "like", "B%"], [C2]),
    (["name", "ilike", "%.TXT"], [C1, C2]),
    (["name", "like", "gamma_1"], [C3]),
    (["name", "like", "gamm__1"], [C3]),
    (["name", "like", "gamma\\_%"], [C3]),
    (["name", "in", ["alpha.txt", "gamma_1", "nope"]], [C1, C3]),
    (["name", "not in", ["alpha.txt"]], [C2, C3]),
    (["file_count", "in", [1]], [C2]),
    (["owner_uuid", "is_a", "arvados#user"], [C2]),
    (["owner_uuid", "is_a", ["arvados#group", "arvados#user"]], [C1, C2, C3]),
    (["owner_uuid", "is_a", "arvados#nonsense"], []),
    (["uuid", "is_a", "arvados#collection"], [C1, C2, C3]),
    (["uuid", "is_a", "arvados#group"], []),
    (["is_trashed", "=", True], [C3]),
    (["is_trashed", "=", "false"], [C1, C2]),
    (["is_trashed", "!=", True], [C1, C2]),
    (["modified_at", ">", "2026-11-25T11:38:57Z"], [C1, C2]),  # parsed, not text-compared
    (["modified_at", ">=", "2026-11-25 11:38:58+00:00"], [C2]),
    (["modified_at", "<", "2026-11-25T12:38:00+01:00"], [C3]),
    (["description", "=", None], [C1, C3]),
    (["description", "!=", None], [C2]),
    (["description", "!=", "x"], [C1, C2, C3]),  # != also matches NULL
    (["replication_desired", "not in", [2]], [C2, C3]),  # not in also matches NULL
    (["description", "not in", ["x", None]], []),  # SQL NOT IN with NULL
    (["storage_classes_desired", "contains", "fast"], [C1]),
    (["storage_classes_desired", "contains", ["default", "fast"]], [C1]),
    (["storage_classes_desired", "contains", ["default"]], [C1, C2, C3]),
    (["storage_classes_desired", "=", '["default"]'], [C2, C3]),
    (["properties", "exists", "type"], [C1, C2]),
    (["properties.type", "=", "output"], [C1]),
    (["properties.n", "=", 10], [C2]),
    (["properties.type", "!=", "output"], [C2, C3]),  # missing key also matches
    (["properties.type", "in", ["log", "x"]], [C2]),
    (["properties.type", "not in", ["log"]], [C1, C3]),
    (["properties.n", "<", 7], [C1]),
    (["properties.n", ">=", 5], [C1, C2]),
    (["properties.type", "like", "out%"], [C1]),
    (["properties.type", "ilike", "OUT%"], [C1]),
    (["properties.type", "exists", True], [C1, C2]),
    (["properties.type", "exists", False], [C3]),
    (["properties.tags", "contains", "a"], [C1]),
    (["properties.type", "contains", "log"], [C2]),
    (["properties.<http://x/y>", "=", "u"], [C1]),
    (["any", "like", "%words%"], [C2]),
    (["any", "ilike", "%BETA%"], [C2]),
    (["any", "ilike", "%log%"], [C2]),  # jsonb properties are part of the full-text search
    (["any", "=", "gamma_1"], [C3]),
    ([["name", "description"], "ilike", "%word%"], [C2]),
])
def test_operators(flt, expected):
    assert uuids([flt]) == expected


def test_filters_are_anded_and_may_be_json_text():
    flts = [["file_count", "=", 3], ["name", "like", "alpha%"]]
    assert uuids(flts) == [C1]
    assert uuids('[["file_count", "=", 3], ["name", "like", "alpha%"]]') == [C1]
    assert uuids("") == [C1, C2, C3]
    assert uuids(None) == [C1, C2, C3]


def test_boolean_expression_filter():
    recs = [coll(C1, "a", "2026-01-01T00:00:00Z", replication_desired=3,
                 replication_confirmed=2),
            coll(C2, "b", "2026-01-01T00:00:00Z", replication_desired=2,
                 replication_confirmed=2)]
    items, _ = apply_list(recs, table="collections",
                          filters=["(replication_desired > replication_confirmed)"])
    assert [i["uuid"] for i in items] == [C1]
    items, _ = apply_list(recs, table="collections",
                          filters=[["(replication_desired = replication_confirmed)", "=", True]])
    assert [i["uuid"] for i in items] == [C2]
    with pytest.raises(FilterError, match="Non-numeric attribute in expression: 'name'"):
        apply_list(recs, table="collections", filters=["(name = uuid)"])
    with pytest.raises(FilterError, match="subsequent elements must be"):
        apply_list(recs, table="collections",
                   filters=[["(replication_desired = replication_confirmed)", "=", False]])


def test_matches_single_record():
    assert matches(RECORDS[0], [["name", "=", "alpha.txt"]], table="collections")
    assert not matches(RECORDS[0], [["name", "=", "x"]], table="collections")
    # unknown table: types inferred from the record itself
    rec = {"uuid": "x", "n": 4, "props": {"a": 1}, "at": "2026-01-01T00:00:00.000000000Z"}
    assert matches(rec, [["n", ">", 3], ["props.a", "=", 1], ["at", "<", "2027-01-01"]])


@pytest.mark.parametrize("flt, message", [
    (["name", "=~", "x"], "Invalid operator '=~'"),
    (["name", "not like", "x%"], "Invalid operator 'not like'"),
    (["name", 3, "x"], "Invalid operator '3' (Integer) in filter"),
    (["nonexistent", "=", "x"], "Invalid attribute 'nonexistent' in filter"),
    (["file_count", "like", "3%"], "Invalid attribute 'file_count' in filter"),
    (["name", "in", "alpha.txt"], "Invalid operand type 'String' for 'in' operator in filters"),
    (["name", "=", 3], "Invalid operand type 'Integer' for '=' operator in filters"),
    (["file_count", "=", 1.5], "Invalid operand '1.5' for integer attribute 'file_count'"),
    (["file_count", "in", ["a"]], "Invalid element 'a' in array for integer attribute"),
    (["is_trashed", "=", "maybe"], "Invalid operand 'maybe' for boolean attribute 'is_trashed'"),
    (["is_trashed", "<", "true"], "Invalid operator '<' for boolean attribute 'is_trashed'"),
    (["name.foo", "=", "x"], "Invalid attribute 'name' for subproperty filter"),
    (["properties.foo", "is_a", "x"], "Invalid operator for subproperty search 'is_a'"),
    (["properties.foo", "exists", "yes"], "must be true or false"),
    (["name", "exists", "x"], "Invalid attribute 'name' for operator 'exists' in filter"),
    (["name", "contains", "x"], "Invalid attribute 'name' for 'contains' operator"),
    (["storage_classes_desired", "contains", []], "Invalid operand '[]' for 'contains'"),
    (["storage_classes_desired", "contains", [1]], "operand must be a string or array"),
    (["any", "@@", "x"], "Full text search operator is no longer supported"),
    ("name = x", "Invalid attribute 'name = x' in filter"),
    (42, "Invalid element in filters array: 42 is not an array"),
    (["name", "="], "exactly 3 elements"),
])
def test_invalid_filters(flt, message):
    with pytest.raises(FilterError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        apply_list(RECORDS, table="collections", filters=[flt])


def test_invalid_filters_fail_even_without_records():
    with pytest.raises(FilterError):
        apply_list([], table="collections", filters=[["nope", "=", 1]])
    with pytest.raises(FilterError, match='Could not parse "filters" param as an array'):
        apply_list(RECORDS, table="collections", filters="{not json")


def test_order_multiple_keys_and_defaults():
    items, _ = apply_list(RECORDS, table="collections", order=["file_count desc", "name asc"])
    assert [i["uuid"] for i in items] == [C1, C3, C2]
    items, _ = apply_list(RECORDS, table="collections", order="file_count desc, name desc")
    assert [i["uuid"] for i in items] == [C3, C1, C2]
    items, _ = apply_list(RECORDS, table="collections", order='["file_count asc"]')
    assert [i["uuid"] for i in items][0] == C2
    # default: modified_at desc, uuid desc
    items, _ = apply_list(RECORDS, table="collections")
    assert [i["uuid"] for i in items] == [C2, C1, C3]
    # unknown columns and directions are ignored (Arvados does not complain)
    items, _ = apply_list(RECORDS, table="collections", order=["bogus asc", "name sideways"])
    assert [i["uuid"] for i in items] == [C2, C1, C3]
    # table-qualified column
    items, _ = apply_list(RECORDS, table="collections", order=["collections.name asc"])
    assert [i["name"] for i in items] == ["Beta.txt", "alpha.txt", "gamma_1"]


def test_order_nulls_last_ascending_first_descending():
    items, _ = apply_list(RECORDS, table="collections", order=["replication_desired asc"])
    assert items[0]["uuid"] == C1
    items, _ = apply_list(RECORDS, table="collections",
                          order=["replication_desired desc", "uuid asc"])
    assert [i["uuid"] for i in items] == [C2, C3, C1]


def test_limit_offset_count():
    items, n = apply_list(RECORDS, table="collections", order="uuid", limit=2)
    assert [i["uuid"] for i in items] == [C1, C2] and n == 3
    items, n = apply_list(RECORDS, table="collections", order="uuid", limit="1", offset="2")
    assert [i["uuid"] for i in items] == [C3] and n == 3
    items, n = apply_list(RECORDS, table="collections", limit=0)
    assert items == [] and n == 3
    items, n = apply_list(RECORDS, table="collections", count="none")
    assert len(items) == 3 and n is None
    _, n = apply_list(RECORDS, table="collections", filters=[["file_count", "=", 3]], limit=1)
    assert n == 2
    with pytest.raises(FilterError, match="count parameter must be 'exact' or 'none'"):
        apply_list(RECORDS, table="collections", count="estimated")
    with pytest.raises(FilterError, match="Invalid value for limit parameter"):
        apply_list(RECORDS, table="collections", limit=-1)
    with pytest.raises(FilterError, match="Invalid value for offset parameter"):
        apply_list(RECORDS, table="collections", offset="x")
    assert normalize_limit(None) == 100 and normalize_limit(5000) == 1000


def test_select_and_distinct():
    items, _ = apply_list(RECORDS, table="collections", select=["uuid", "name"],
                          order="uuid asc")
    assert items[0] == {"uuid": C1, "name": "alpha.txt", "kind": "arvados#collection"}
    items, _ = apply_list(RECORDS, table="collections", select='["file_count"]',
                          order="file_count asc", distinct=True)
    assert items == [{"file_count": 1, "kind": "arvados#collection"},
                     {"file_count": 3, "kind": "arvados#collection"}]
    items, n = apply_list(RECORDS, table="collections", select=["owner_uuid"], distinct=True)
    assert len(items) == 2 and n == 3  # items_available counts records, as Arvados does
    with pytest.raises(FilterError, match="Invalid attribute 'bogus' of Collection in select"):
        apply_list(RECORDS, table="collections", select=["bogus"])


def test_join_on_container_attributes():
    containers = {"zzzzz-dz642-000000000000001": {"uuid": "zzzzz-dz642-000000000000001",
                                                  "state": "Running"}}
    reqs = [{"uuid": "zzzzz-xvhdp-000000000000001", "container_uuid":
             "zzzzz-dz642-000000000000001", "state": "Committed"},
            {"uuid": "zzzzz-xvhdp-000000000000002", "container_uuid": None,
             "state": "Uncommitted"}]
    join = {"container": Join("containers", lambda cr: containers.get(cr["container_uuid"]))}
    items, _ = apply_list(reqs, table="container_requests", joins=join,
                          filters=[["container.state", "=", "Running"]])
    assert [i["uuid"] for i in items] == ["zzzzz-xvhdp-000000000000001"]
    items, _ = apply_list(reqs, table="container_requests", joins=join,
                          filters=[["container.state", "!=", "Complete"]])
    assert len(items) == 1  # inner join: no container, no match


def test_serialized_text_columns_match_as_json_text():
    cr = {"uuid": "zzzzz-xvhdp-000000000000001", "command": ["echo", "hello world"]}
    assert matches(cr, [["command", "like", '%"hello world"%']], table="container_requests")
    with pytest.raises(FilterError, match="for subproperty filter"):
        matches(cr, [["mounts.x", "=", 1]], table="container_requests")


def test_helpers():
    assert normalize_timestamp("2026-11-25T11:38:57Z") == "2026-11-25T11:38:57.000000000"
    assert normalize_timestamp("2026-11-25T12:38:57.5+01:00") == "2026-11-25T11:38:57.500000000"
    assert jsonb_contains({"a": ["x", "y"]}, {"a": ["x"]})
    assert not jsonb_contains({"a": ["x", "y"]}, {"a": "x"})  # nested arrays need arrays
    assert jsonb_contains(["x", "y"], "x")  # top-level array contains a scalar
    assert not jsonb_contains({"a": 1}, {"a": True})


# Arvados binds a top-level exists operand into jsonb_exists_inline_op(column, ?) (one text
# argument), and ActiveRecord quotes a string as one literal, nil/[]/{} as NULL and spreads an
# array into several literals: services/api/lib/record_filters.rb, Rails' quote_bound_value.
@pytest.mark.parametrize("operand, uuids", [
    ("type", {C1, C2}),
    (["type"], {C1, C2}),  # one literal, like the string
    (None, set()), ([], set()), ({}, set()), ([None], set()),  # "? NULL": no record, no error
])
def test_top_level_exists_operands_arvados_accepts(operand, uuids):
    items, _ = apply_list(RECORDS, table="collections", filters=[["properties", "exists", operand]])
    assert {i["uuid"] for i in items} == uuids


@pytest.mark.parametrize("operand, message", [
    (["type", "n"], "function jsonb_exists_inline_op(jsonb, unknown, unknown) does not exist"),
    (3, "function jsonb_exists_inline_op(jsonb, integer) does not exist"),
    ([3], "function jsonb_exists_inline_op(jsonb, integer) does not exist"),
    (2**40, "function jsonb_exists_inline_op(jsonb, bigint) does not exist"),
    (1.5, "function jsonb_exists_inline_op(jsonb, numeric) does not exist"),
    (True, "function jsonb_exists_inline_op(jsonb, boolean) does not exist"),
    ([["type"]], "can't quote Array"),
    ([{"type": 1}], "can't quote Hash"),
    ({"type": 1}, "can't quote Array"),  # a hash spreads into its [key, value] pairs
])
def test_top_level_exists_operands_arvados_refuses(operand, message):
    with pytest.raises(FilterError) as info:
        apply_list([], table="collections", filters=[["properties", "exists", operand]])
    assert message in str(info.value)


_ATTRS = ["name", "file_count", "properties", "properties.type", "properties.<type>", "is_trashed",
          "created_at", "storage_classes_desired", "uuid", "any", ["name", "uuid"], ["name", 3],
          "(file_count > replication_desired)", 5, None, "", "properties.", "."]
_OPERATORS = ["=", "!=", "<>", "<", "<=", ">", ">=", "like", "ilike", "in", "not in", "is_a", "exists",
              "contains", "@@", "IN", "Exists", "", None, 3, ["="]]
_OPERANDS = ["x", "", "%a%", 3, -1, 2**70, 1.5, True, False, None, [], ["a"], ["a", "b"], [1], [None],
             [["a"]], [{"a": 1}], {}, {"a": 1}, "2026-01-01", "true", "[1]", "{bad", "arvados#collection"]


def test_every_filter_either_applies_or_is_a_filter_error():
    """A malformed filter is a 422 (FilterError), never a crash (a 500) while records are
    scanned: every attribute/operator/operand shape below, over records that have each column."""
    crashes = []
    for attr in _ATTRS:
        for operator in _OPERATORS:
            for operand in _OPERANDS:
                try:
                    apply_list(RECORDS, table="collections", filters=[[attr, operator, operand]])
                except FilterError:
                    pass
                except Exception as e:  # noqa: BLE001 - exactly what this test looks for
                    crashes.append(([attr, operator, operand], repr(e)))
    assert not crashes, crashes[:10]
