"""What the local cluster serves: resources, their attributes and their API methods.

This module is the declarative description of the Arvados API surface we implement: the API
methods, and the attribute tables of every kind, which it reads from the registry
(:mod:`registry`, one definition per kind). The discovery document (``discovery.py``) is
generated from it, so the methods a generated client sees are exactly the ones the server routes,
and the server uses the same attribute tables to fill defaults and to check request bodies.
Attribute and parameter names are Arvados' own (from its discovery document and API docs):
clients such as ``arv-put`` or ``arvados-cwl-runner`` send them by name, so any drift breaks them
silently.

Attribute tables are compact text, one attribute per line::

    name  type  default  flags

* ``type`` is the Arvados discovery type (``string``, ``text``, ``datetime``, ``integer``,
  ``float``, ``boolean``, ``Hash``, ``Array``, ``jsonb``);
* ``default`` is a JSON literal (no spaces) stored when a create does not give the attribute;
* ``flags``: ``w`` writable on create and update, ``c`` writable on create only, ``-`` maintained
  by the server (silently ignored in request bodies, as Arvados does for computed attributes),
  plus ``s`` for secrets (accepted, stored, never returned) and ``v`` for virtual attributes
  computed per response and never stored (e.g. a group's ``can_write``).
"""
from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

from .registry import KINDS


class SchemaError(ValueError):
    """A request body that does not fit the resource: the API answers 422 with ``str(error)``."""


# -- attributes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attr:
    """One attribute of a stored resource."""

    name: str
    type: str
    default: Any = None
    writable: bool = False      # clients may set it on create and update
    create_only: bool = False   # clients may set it on create only
    secret: bool = False        # stored but never shown in responses or logs
    virtual: bool = False       # computed per response, never stored

    def default_value(self) -> Any:
        """A fresh copy of the default, so callers can mutate dicts and lists safely."""
        return copy.deepcopy(self.default)


# Every Arvados resource has these (api/resources.html); the store fills them, clients may only
# choose the owner and, on create, the UUID.
_COMMON = """
uuid                   string    null  c
owner_uuid             string    null  w
created_at             datetime  null  -
modified_at            datetime  null  -
modified_by_user_uuid  string    null  -
kind                   string    null  -
etag                   string    ""    -
"""
COMMON_ATTRIBUTES: tuple[str, ...] = tuple(line.split()[0] for line in _COMMON.split("\n") if line.strip())

# Sent back by some clients (copied records, older SDKs); Arvados drops them without complaint.
_IGNORED_INPUT = frozenset({"href", "modified_by_client_uuid"})

# The attribute tables of every stored kind come from the registry, one definition per kind.
_TABLES: dict[str, str] = {t: k.attributes for t, k in KINDS.items()}


def _parse_table(text: str) -> dict[str, Attr]:
    attrs: dict[str, Attr] = {}
    for line in text.strip().splitlines():
        name, typ, default, flags = line.split()
        attrs[name] = Attr(
            name=name,
            type=typ,
            default=json.loads(default),
            writable="w" in flags,
            create_only="c" in flags,
            secret="s" in flags,
            virtual="v" in flags,
        )
    return attrs


_COMMON_ATTRS = _parse_table(_COMMON)

# table -> attribute name -> Attr, common attributes first (the order responses show them in).
ATTRIBUTES: dict[str, dict[str, Attr]] = {
    table: {**_COMMON_ATTRS, **_parse_table(text)} for table, text in _TABLES.items()
}


def defaults(table: str) -> dict[str, Any]:
    """Values for a new record's resource-specific attributes (fresh copies, safe to mutate).

    Common attributes (uuid, owner, timestamps, kind, etag) and virtual ones are left out: the
    store and the request handler fill those, and a ``None`` here would hide their absence.
    """
    return {
        a.name: a.default_value()
        for a in ATTRIBUTES[table].values()
        if a.name not in _COMMON_ATTRS and not a.virtual
    }


def writable(table: str, *, creating: bool = False) -> set[str]:
    """Attributes a client may set: on update, or (``creating=True``) on create."""
    return {a.name for a in ATTRIBUTES[table].values() if a.writable or (creating and a.create_only)}


def secret_attributes(table: str) -> set[str]:
    """Attributes accepted from clients but never returned to them (``secret_mounts``...)."""
    return {a.name for a in ATTRIBUTES[table].values() if a.secret}


def virtual_attributes(table: str) -> set[str]:
    """Attributes computed per response (not stored), e.g. a group's ``can_write``."""
    return {a.name for a in ATTRIBUTES[table].values() if a.virtual}


# -- validating request bodies ------------------------------------------------------------------

_RUBY_CLASS = {dict: "Hash", list: "Array", str: "String", int: "Integer", float: "Float",
               bool: "TrueClass", type(None): "NilClass"}


def _ruby_class(value: Any) -> str:
    """The class name Arvados (Rails) would report, so our 422 messages read like the real ones."""
    if value is False:
        return "FalseClass"
    return _RUBY_CLASS.get(type(value), type(value).__name__)


_FRACTION = re.compile(r"\.(\d+)")


def normalize_timestamp(value: str) -> str:
    """An ISO 8601 time in Arvados' stored form (UTC, nanosecond digits, ``Z``).

    Arvados compares timestamps in filters as text; storing one form keeps those comparisons
    right whatever form the client sent (``+00:00``, no fraction, a date only...).
    """
    text = value.strip()
    # Python keeps at most microseconds: carry the fraction's digits through by hand.
    frac = ""
    m = _FRACTION.search(text)
    if m:
        frac, text = m.group(1), text[:m.start()] + text[m.end():]
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    parsed = parsed.astimezone(timezone.utc)
    return parsed.strftime("%Y-%m-%dT%H:%M:%S") + "." + (frac + "0" * 9)[:9] + "Z"


def _coerce(model: str, attr: Attr, value: Any) -> Any:
    """``value`` as ``attr``'s type, casting the way Rails does for scalars; SchemaError if not."""
    t = attr.type
    if value is None:
        # Serialized hash/array columns turn nil into their empty default, as Arvados does.
        return attr.default_value() if t in ("Hash", "Array") else None
    if t == "jsonb":
        return copy.deepcopy(value)
    if t in ("Hash", "Array"):
        want = dict if t == "Hash" else list
        if not isinstance(value, want):
            raise SchemaError(f"{attr.name} parameter must be {t}, not {_ruby_class(value)}")
        return copy.deepcopy(value)
    if t in ("string", "text"):
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise SchemaError(f"{attr.name} must be a string, not {_ruby_class(value)}")
        return value if isinstance(value, str) else str(value)
    if t == "datetime":
        if not isinstance(value, str):
            raise SchemaError(f"{attr.name} must be a timestamp string, not {_ruby_class(value)}")
        if value == "":
            return None
        try:
            return normalize_timestamp(value)
        except ValueError:
            raise SchemaError(f"{attr.name} is not a valid timestamp: {value!r}") from None
    if t == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "t", "1", "yes", "false", "f", "0", "no", ""):
            return value.lower() in ("true", "t", "1", "yes")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise SchemaError(f"{attr.name} must be a boolean, not {_ruby_class(value)}")
    if t == "integer":
        if isinstance(value, bool):
            raise SchemaError(f"{attr.name} must be an integer, not {_ruby_class(value)}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise SchemaError(f"{attr.name} must be an integer, not {value!r}")
    if t == "float":
        if isinstance(value, bool):
            raise SchemaError(f"{attr.name} must be a number, not {_ruby_class(value)}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise SchemaError(f"{attr.name} must be a number, not {value!r}")
    raise AssertionError(f"{model}.{attr.name}: unknown attribute type {t!r}")


def validate(table: str, body: Any, *, creating: bool, current: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Check a client-supplied body for ``table`` and return the attributes to store.

    * unknown attributes are refused (422 ``unknown attribute 'x' for Collection.``), because a
      misspelt name would otherwise be dropped and the client never told;
    * values are cast to the attribute's type, or refused with a Rails-like message;
    * server-maintained attributes (timestamps, ``version``, ``file_count``...) are dropped
      silently, as Arvados does, so a client may send back a record it fetched;
    * create-only attributes are dropped on update when unchanged (``current`` given) and refused
      when changed; without ``current`` they are dropped.

    ``body`` may also be a JSON string (Arvados accepts the resource as a JSON-encoded parameter).
    """
    resource = RESOURCES[table]
    model = resource.schema or table
    if body is None:
        return {}
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            body = None
    if not isinstance(body, dict):
        camel = resource.singular.split("_")
        hint = f" (or {camel[0]}{''.join(w.title() for w in camel[1:])})" if len(camel) > 1 else ""
        raise SchemaError(f"No {resource.singular}{hint} hash provided with request")
    attrs = ATTRIBUTES[table]
    out: dict[str, Any] = {}
    for name, value in body.items():
        attr = attrs.get(name)
        if attr is None:
            if name in _IGNORED_INPUT:
                continue
            raise SchemaError(f"unknown attribute '{name}' for {model}.")
        if attr.writable or (creating and attr.create_only):
            out[name] = _coerce(model, attr, value)
        elif attr.create_only and current is not None:
            coerced = _coerce(model, attr, value)
            if coerced != current.get(name):
                raise SchemaError(f"{name} cannot be modified")
        # else: server-maintained (or create-only on update): ignored, as Arvados does.
    return out


coerce_body = validate  # the name the design notes use


# -- methods ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """One method parameter, as generated clients pass it (by this exact name)."""

    name: str
    type: str                    # "string", "integer", "boolean", "array", "object"
    location: str = "query"      # "query" or "path"
    required: bool = False
    default: str | None = None   # discovery documents give defaults as strings
    description: str = ""


@dataclass(frozen=True)
class Method:
    """One API method: ``<resource>().<name>(...)`` in a generated client."""

    name: str
    http_method: str
    path: str                     # relative to servicePath, e.g. "collections/{uuid}/trash"
    params: tuple[Param, ...] = ()
    description: str = ""
    request: bool = False         # body is {"<singular>": {...attributes...}}
    response: str | None = None   # schema id of the result, None for a free-form object
    id: str | None = None         # discovery method id, when not arvados.<resource>.<name>


@dataclass(frozen=True)
class Resource:
    """An API resource: its table name, body key, schema name and methods."""

    name: str                     # "container_requests"
    singular: str                 # "container_request": the request body key
    schema: str | None            # "ContainerRequest"; None for config-like resources
    description: str = ""
    methods: tuple[Method, ...] = field(default_factory=tuple)

    def method(self, name: str) -> Method:
        for m in self.methods:
            if m.name == name:
                return m
        raise KeyError(f"{self.name}.{name}")


def _p(name: str, typ: str, description: str, *, location: str = "query", required: bool = False,
       default: str | None = None) -> Param:
    return Param(name, typ, location, required, default, description)


_UUID = _p("uuid", "string", "The UUID of the object.", location="path", required=True)
_SELECT = _p("select", "array", "Names of the attributes to return.")
_INCLUDE_TRASH = _p("include_trash", "boolean", "Also return objects that are in the trash.", default="false")
_INCLUDE_OLD = _p("include_old_versions", "boolean",
                  "Also return past versions of collections.", default="false")
_REPLACE_FILES = _p("replace_files", "object",
                    "Map of target paths to source paths: build the manifest from existing collections.")
_REPLACE_SEGMENTS = _p("replace_segments", "object",
                       "Map of block segments to replacement segments in the manifest.")
_ASYNC = _p("async", "boolean", "Defer the permission graph update.", default="false")
_BYPASS_FED = _p("bypass_federation", "boolean", "Do not forward the request to other clusters.",
                 default="false")
_CLUSTER_ID = _p("cluster_id", "string", "Federated cluster to send the request to.")

_LIST_PARAMS: tuple[Param, ...] = (
    _p("filters", "array", "Conditions [attribute, operator, operand] that results must meet."),
    _p("where", "object", "Attribute values that results must have (prefer filters)."),
    _p("order", "array", "Sort order, each entry \"attribute [asc|desc]\"."),
    _SELECT,
    _p("distinct", "boolean", "Return each distinct set of selected values once.", default="false"),
    _p("limit", "integer", "Maximum number of items to return.", default="100"),
    _p("offset", "integer", "Number of matching items to skip.", default="0"),
    _p("count", "string", "\"exact\" to include items_available, \"none\" to skip counting.",
       default="exact"),
    _CLUSTER_ID,
    _BYPASS_FED,
)


def _crud(table: str, label: str, *, get: tuple[Param, ...] = (), list_: tuple[Param, ...] = (),
          create: tuple[Param, ...] = (), update: tuple[Param, ...] = ()) -> tuple[Method, ...]:
    """The five standard methods, with a resource's extra parameters appended."""
    schema = _SCHEMA_NAMES[table]
    return (
        Method("get", "GET", f"{table}/{{uuid}}", (_UUID, _SELECT) + get,
               f"Return the {label} with the given UUID.", response=schema),
        Method("list", "GET", table, _LIST_PARAMS + list_,
               f"Return {label} records matching the filters, one page at a time.", response=schema + "List"),
        Method("create", "POST", table,
               (_SELECT, _p("ensure_unique_name", "boolean",
                            "Add a suffix to the name if another object of the owner has it.",
                            default="false"), _CLUSTER_ID) + create,
               f"Create a {label}.", request=True, response=schema),
        Method("update", "PUT", f"{table}/{{uuid}}", (_UUID, _SELECT) + update,
               f"Change attributes of a {label}.", request=True, response=schema),
        Method("delete", "DELETE", f"{table}/{{uuid}}", (_UUID,),
               f"Delete a {label}.", response=schema),
    )


def _extra(table: str, name: str, http: str, path: str, description: str,
           params: tuple[Param, ...] = (), response: str | None = "", method_id: str | None = None) -> Method:
    """A non-CRUD method; response defaults to the resource's own schema."""
    return Method(name, http, path, params, description,
                  response=_SCHEMA_NAMES.get(table) if response == "" else response, id=method_id)


_SCHEMA_NAMES: dict[str, str] = {t: k.model for t, k in KINDS.items()}


def _kind(table: str, methods: tuple[Method, ...]) -> Resource:
    """A stored kind's resource: its names and description come from the registry."""
    k = KINDS[table]
    return Resource(table, k.singular, k.model, k.description, methods)


_GROUP_LISTING = _LIST_PARAMS + (_INCLUDE_TRASH,)

_RESOURCE_LIST: tuple[Resource, ...] = (
    _kind("api_client_authorizations",
          _crud("api_client_authorizations", "API token") + (
              _extra("api_client_authorizations", "current", "GET", "api_client_authorizations/current",
                     "Return the record of the token that authenticated this request."),
          )),
    _kind("authorized_keys",
          _crud("authorized_keys", "authorized key")),
    _kind("collections",
          _crud("collections", "collection",
                get=(_INCLUDE_TRASH,), list_=(_INCLUDE_TRASH, _INCLUDE_OLD),
                create=(_REPLACE_FILES, _REPLACE_SEGMENTS), update=(_REPLACE_FILES, _REPLACE_SEGMENTS)) + (
              _extra("collections", "provenance", "GET", "collections/{uuid}/provenance",
                     "Return the processes and collections this collection was made from.", (_UUID,)),
              _extra("collections", "used_by", "GET", "collections/{uuid}/used_by",
                     "Return the processes and collections made from this collection.", (_UUID,)),
              _extra("collections", "trash", "POST", "collections/{uuid}/trash",
                     "Move the collection to the trash now.", (_UUID,)),
              _extra("collections", "untrash", "POST", "collections/{uuid}/untrash",
                     "Take the collection out of the trash.", (_UUID,)),
          )),
    _kind("container_requests",
          _crud("container_requests", "container request",
                get=(_INCLUDE_TRASH,), list_=(_INCLUDE_TRASH,)) + (
              _extra("container_requests", "container_status", "GET",
                     "container_requests/{uuid}/container_status",
                     "Return the scheduling status of the request's container.",
                     (_p("uuid", "string", "The UUID of the container request.", required=True),),
                     response=None),
          )),
    _kind("containers",
          _crud("containers", "container") + (
              _extra("containers", "auth", "GET", "containers/{uuid}/auth",
                     "Return the API token the container runs with.", (_UUID,),
                     response="ApiClientAuthorization"),
              _extra("containers", "lock", "POST", "containers/{uuid}/lock",
                     "Claim a queued container for dispatch.", (_UUID,)),
              _extra("containers", "unlock", "POST", "containers/{uuid}/unlock",
                     "Return a locked container to the queue.", (_UUID,)),
              _extra("containers", "secret_mounts", "GET", "containers/{uuid}/secret_mounts",
                     "Return the container's secret mounts (for its dispatcher).", (_UUID,),
                     response=None),
              _extra("containers", "current", "GET", "containers/current",
                     "Return the container whose token authenticated this request."),
          )),
    _kind("groups",
          _crud("groups", "group", get=(_INCLUDE_TRASH,), list_=(_INCLUDE_TRASH,),
                create=(_ASYNC,), update=(_ASYNC,)) + (
              _extra("groups", "contents", "GET", "groups/contents",
                     "List the objects in a project (or the caller's home project).",
                     _GROUP_LISTING + (
                         _p("uuid", "string", "The project to list; empty for the home project.",
                            default=""),
                         _p("recursive", "boolean", "Include the contents of subprojects.",
                            default="false"),
                         _p("include", "array", "Also return objects these attributes refer to."),
                         _INCLUDE_OLD,
                         _p("exclude_home_project", "boolean",
                            "Leave out objects in the caller's home project.", default="false"),
                     ), response="GroupList"),
              _extra("groups", "shared", "GET", "groups/shared",
                     "List the projects shared with the caller by other users.",
                     _GROUP_LISTING + (
                         _p("include", "string", "\"owner_uuid\" to also return the owners."),
                     ), response="GroupList"),
              _extra("groups", "trash", "POST", "groups/{uuid}/trash",
                     "Move the group to the trash now.", (_UUID,)),
              _extra("groups", "untrash", "POST", "groups/{uuid}/untrash",
                     "Take the group out of the trash.", (_UUID,)),
          )),
    _kind("keep_services",
          _crud("keep_services", "Keep service") + (
              _extra("keep_services", "accessible", "GET", "keep_services/accessible",
                     "List the Keep services this client should use.", response="KeepServiceList"),
          )),
    _kind("links",
          _crud("links", "link") + (
              _extra("links", "get_permissions", "GET", "permissions/{uuid}",
                     "List the permission links that grant access to an object.", (_UUID,),
                     response="LinkList"),
          )),
    _kind("logs",
          _crud("logs", "log")),
    _kind("users",
          _crud("users", "user", update=(_BYPASS_FED,)) + (
              _extra("users", "current", "GET", "users/current",
                     "Return the user whose token authenticated this request."),
              _extra("users", "system", "GET", "users/system", "Return the system user."),
          )),
    _kind("user_agreements",
          (
              Method("get", "GET", "user_agreements/{uuid}", (_UUID, _SELECT),
                     "Return the user agreement with the given UUID.", response="UserAgreement"),
              Method("list", "GET", "user_agreements", _LIST_PARAMS,
                     "Return user agreements (there are none).", response="UserAgreementList"),
              _extra("user_agreements", "signatures", "GET", "user_agreements/signatures",
                     "Return the caller's signatures (there are none).", response="UserAgreementList"),
          )),
    _kind("virtual_machines",
          _crud("virtual_machines", "virtual machine")),
    _kind("workflows",
          _crud("workflows", "workflow")),
    Resource("configs", "config", None, "The cluster's public configuration.",
             (_extra("configs", "get", "GET", "config", "Return the cluster's public configuration.",
                     response=None),)),
    Resource("vocabularies", "vocabulary", None, "The metadata vocabulary for properties.",
             (_extra("vocabularies", "get", "GET", "vocabulary",
                     "Return the vocabulary that properties keys and values are checked against.",
                     response=None),)),
    Resource("sys", "sys", None, "Cluster maintenance operations.",
             (_extra("sys", "get", "POST", "sys/trash_sweep",
                     "Delete trashed objects whose delete_at has passed.", response=None,
                     method_id="arvados.sys.trash_sweep"),)),
)

RESOURCES: dict[str, Resource] = {r.name: r for r in _RESOURCE_LIST}

# Tables that hold stored objects with attributes (the others are computed endpoints).
STORED_TABLES: tuple[str, ...] = tuple(ATTRIBUTES)


def methods_offered() -> Iterable[tuple[str, Method]]:
    """Every (resource name, method) the cluster serves, in document order."""
    for res in _RESOURCE_LIST:
        for m in res.methods:
            yield res.name, m


def model_name(table: str) -> str:
    """``"ContainerRequest"`` for ``"container_requests"``: error messages and schema ids use it."""
    return _SCHEMA_NAMES[table]
