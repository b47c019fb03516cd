"""The registry of resource kinds, and what derives from it, stay consistent.

Why: each kind is defined once (``registry.py``), and the API attributes, the filters' column
types, the store's indexes and the routes all follow from that definition and the methods in
``schema.py``. These checks catch a definition that one consumer could not honour: an attribute
clients can set but not filter on, an index the list planner could not use, a method the
discovery document promises but no route serves (or a route no client can discover).
"""
from __future__ import annotations

from toil_arvados.localcluster import filters, indexes, registry, schema, uuids, validation
from toil_arvados.localcluster.api import ApiServer, singular_of
from toil_arvados.localcluster.auth import Authorizer
from toil_arvados.localcluster.collections import Collections
from toil_arvados.localcluster.containers import ContainerRequests, Containers
from toil_arvados.localcluster.resources import (ApiClientAuthorizations, Groups, KeepServices, Links, Logs,
                                                 Users, Workflows)
from toil_arvados.localcluster.store import Store

SERVED = (Users, ApiClientAuthorizations, Groups, Links, Logs, KeepServices, Workflows, Collections,
          ContainerRequests, Containers)

# Attributes that are not database columns of the same name in Arvados (tokens belong to a user
# through user_id; user agreements are not stored here at all).
_NOT_COLUMNS = {
    "api_client_authorizations": {"owner_uuid", "modified_at", "modified_by_user_uuid"},
    "user_agreements": {"uuid", "owner_uuid", "created_at", "modified_at", "modified_by_user_uuid"},
}


def test_every_stored_attribute_is_a_column_filters_can_type():
    for table, kind in registry.KINDS.items():
        columns = kind.column_types()
        missing = {name for name, attr in schema.ATTRIBUTES[table].items()
                   if name not in columns and not attr.virtual and name not in ("kind", "etag")}
        assert missing == _NOT_COLUMNS.get(table, set()), table


def test_indexed_and_name_columns_are_string_or_property_columns():
    for table, kind in registry.KINDS.items():
        columns = kind.column_types()
        for column in kind.name_columns:
            assert columns.get(column) == "string", f"{table}.{column}"
        for column in kind.indexed:
            assert columns.get(column) in ("string", "jsonb"), f"{table}.{column}"
        if kind.unique_names:
            assert columns.get("name") == "string" and columns.get("owner_uuid") == "string", table


def test_consumers_read_the_registry():
    kinds = registry.KINDS
    assert filters.COLUMN_TYPES == {t: k.column_types() for t, k in kinds.items() if k.columns}
    assert uuids.RESOURCE_KINDS == {t: (k.kind, k.uuid_code) for t, k in kinds.items() if k.uuid_code}
    assert validation.NAME_COLUMNS == {t: k.name_columns for t, k in kinds.items() if k.name_columns}
    assert {t: schema.RESOURCES[t].singular for t in kinds} == {t: singular_of(t) for t in kinds}
    assert {(s.table, s.name) for s in indexes.INDEXES if s.column} == {
        (t, c) for t, k in kinds.items() for c in k.indexed}
    assert {s.table for s in indexes.INDEXES if s.name == "owner_name"} == {
        t for t, k in kinds.items() if k.unique_names}


def _served_routes(tmp_path) -> set[tuple[str, str]]:
    store = Store(tmp_path / "db.sqlite3", "zzzzz", "zzzzz-tpzed-000000000000000")
    server = ApiServer(store, Authorizer(store), discovery=lambda http: {})
    for resource in SERVED:
        server.add(resource(server))
    routes = {(r.method, r.resource.canonical.removeprefix("/arvados/v1/"))
              for r in server.make_app().router.routes()
              if r.resource is not None and r.resource.canonical.startswith("/arvados/v1/")
              and "{tail" not in r.resource.canonical}
    store.close()
    return routes


def test_routes_serve_exactly_the_described_methods(tmp_path):
    """Routes derive from the methods schema.py describes (which the discovery document lists):
    each served kind answers every method it describes that it has a handler for, plus PATCH as
    another way to update; links' get_permissions is described (clients may probe it) but not served."""
    described = {(m.http_method, m.path) for res in SERVED for m in schema.RESOURCES[res.table].methods}
    described |= {("PATCH", f"{res.table}/{{uuid}}") for res in SERVED}
    described -= {("GET", "permissions/{uuid}")}
    assert _served_routes(tmp_path) == described
