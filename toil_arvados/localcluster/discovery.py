"""The discovery document the Arvados SDK builds its client from, generated from ``schema.py``.

``arvados.api('v1')`` fetches ``https://HOST/discovery/v1/apis/arvados/v1/rest`` and hands it to
googleapiclient, which turns every ``resources.<r>.methods.<m>`` entry into a callable
``api.<r>().<m>(**params)``: the HTTP method, the path template and the parameter names and
locations come from this document alone, so they must be Arvados' own. Besides the Google keys,
Arvados clients read cluster facts from the document's top level (``_rootDesc``):

* ``uuidPrefix`` -- arvados.collection (is a UUID local?), arvados-cwl-runner (cluster target);
* ``websocketUrl`` -- arvados.events (the event bus endpoint);
* ``defaultCollectionReplication`` -- arvados.collection (copies per block when writing);
* ``maxRequestSize`` -- arvados.api (refuses larger bodies client-side);
* ``dockerImageFormats`` -- arv-keepdocker (refuses to upload images in other formats);
* ``revision`` -- arvados-cwl-runner (feature gates: output_glob, GPU constraints, published ports);
* ``remoteHosts`` -- arvados-cwl-runner (``--submit-runner-cluster`` validation);
* ``maxItemsPerResponse`` -- arvados-cwl-runner (page size when polling states);
* ``blobSignatureTtl`` -- arv-mount (how often to refresh signed locators);
* ``rootUrl`` -- arv-copy (host of the source cluster);
* ``resources`` -- arvados.util (presence of ``configs``/``vocabularies``), arvados-cwl-runner
  (``containers`` API present; ``credentials`` absent means no stored cloud credentials).
"""
from __future__ import annotations

import copy
import functools
from datetime import datetime, timezone
from typing import Any, Mapping

from . import schema

# Arvados' API revision (YYYYMMDD) that our surface matches: clients compare it as text to enable
# features, so it must be at least the revision of every feature we support (published_ports is
# 20250327). 20250402 is Arvados 3.2's.
REVISION = "20250402"

_SCOPES = {
    "https://api.arvados.org/auth/arvados": {"description": "View and manage objects"},
    "https://api.arvados.org/auth/arvados.readonly": {"description": "View objects"},
}
_ALL_SCOPES = list(_SCOPES)

# googleapiclient strips these from every method's keyword arguments and may add them to URLs.
_GLOBAL_PARAMETERS = {
    "alt": {
        "type": "string",
        "description": "Response format (only JSON).",
        "default": "json",
        "enum": ["json"],
        "enumDescriptions": ["application/json"],
        "location": "query",
    },
    "fields": {
        "type": "string",
        "description": "Partial response selector (ignored: use select).",
        "location": "query",
    },
    "key": {
        "type": "string",
        "description": "API key (unused: authenticate with an Authorization header).",
        "location": "query",
    },
    "oauth_token": {
        "type": "string",
        "description": "An API token, as an alternative to the Authorization header.",
        "location": "query",
    },
    "prettyPrint": {
        "type": "boolean",
        "description": "Indent the JSON response.",
        "default": "true",
        "location": "query",
    },
}


def _param(p: schema.Param) -> dict[str, Any]:
    out: dict[str, Any] = {"type": p.type, "description": p.description or p.name,
                           "required": p.required, "location": p.location}
    if p.default is not None:
        out["default"] = p.default
    return out


def _method(resource: schema.Resource, m: schema.Method) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": m.id or f"arvados.{resource.name}.{m.name}",
        "path": m.path,
        "httpMethod": m.http_method,
        "description": m.description,
        "parameters": {p.name: _param(p) for p in m.params},
        "parameterOrder": [p.name for p in m.params if p.required],
        "response": {"$ref": m.response} if m.response else {},
        "scopes": list(_ALL_SCOPES),
    }
    if m.request:
        out["request"] = {
            "required": True,
            "properties": {resource.singular: {"$ref": resource.schema}},
        }
    return out


def _schemas() -> dict[str, Any]:
    """One object schema and one list schema per stored resource (secrets are not shown)."""
    from .uuids import RESOURCE_KINDS  # type codes are defined once, with the UUID helpers

    out: dict[str, Any] = {}
    for table, attrs in schema.ATTRIBUTES.items():
        name = schema.model_name(table)
        kind_code = RESOURCE_KINDS.get(table)
        kind = kind_code[0] if kind_code else f"arvados#{name[0].lower()}{name[1:]}"
        props: dict[str, Any] = {}
        for a in attrs.values():
            if a.secret:
                continue
            prop: dict[str, Any] = {"type": a.type, "description": _describe(a)}
            if a.name == "kind":
                prop["default"] = kind
            props[a.name] = prop
        obj: dict[str, Any] = {
            "id": name,
            "description": schema.RESOURCES[table].description,
            "type": "object",
            "properties": props,
        }
        if kind_code:
            obj["uuidPrefix"] = kind_code[1]
        out[name] = obj
        out[name + "List"] = {
            "id": name + "List",
            "description": f"A page of {name} objects.",
            "type": "object",
            "properties": {
                "kind": {"type": "string", "description": "Always " + kind + "List.",
                         "default": kind + "List"},
                "etag": {"type": "string", "description": "List version."},
                "items": {"type": "array", "description": f"The {name} objects on this page.",
                          "items": {"$ref": name}},
                "items_available": {"type": "integer",
                                    "description": "How many objects match in total (count=exact)."},
                "offset": {"type": "integer", "description": "Index of the first item."},
                "limit": {"type": "integer", "description": "Page size used."},
            },
        }
    return out


def _describe(a: schema.Attr) -> str:
    """A one-line description; the access note tells API users what they may send."""
    if a.writable:
        access = "writable"
    elif a.create_only:
        access = "set on create only"
    else:
        access = "read-only"
    return f"{a.name.replace('_', ' ').capitalize()} ({access})."


@functools.lru_cache(maxsize=1)
def _static_part() -> tuple[dict[str, Any], dict[str, Any]]:
    """Schemas and resources never change while the process runs: build them once."""
    resources = {
        res.name: {"methods": {m.name: _method(res, m) for m in res.methods}}
        for res in schema.RESOURCES.values()
    }
    return _schemas(), resources


def discovery_document(
    root_url: str,
    websocket_url: str,
    *,
    uuid_prefix: str,
    blob_signature_ttl: int,
    default_collection_replication: int = 1,
    keep_web_service_url: str = "",
    workbench_url: str = "",
    workbench2_url: str = "",
    max_request_size: int = 128 * 1024 * 1024,
    max_items_per_response: int = 1000,
    default_trash_lifetime: int = 14 * 24 * 3600,
    docker_image_formats: tuple[str, ...] = ("v2",),
    remote_hosts: Mapping[str, str] | None = None,
    crunch_log_update_period: int = 30 * 60,
    crunch_log_update_size: int = 32 * 1024 * 1024,
    source_version: str | None = None,
) -> dict[str, Any]:
    """The full discovery document for a cluster reachable at ``root_url``.

    ``root_url`` is the API server's base (``https://host:port/``; a trailing slash is added),
    ``websocket_url`` the event bus endpoint clients connect to with ``?api_token=``. The result is
    a fresh dict each call (googleapiclient mutates the document it is given).
    """
    if not root_url.endswith("/"):
        root_url += "/"
    if source_version is None:
        from .. import __version__ as source_version  # our package version stands for Arvados'
    schemas, resources = _static_part()
    return {
        "kind": "discovery#restDescription",
        "discoveryVersion": "v1",
        "id": "arvados:v1",
        "name": "arvados",
        "version": "v1",
        "revision": REVISION,
        "source_version": source_version,
        "sourceVersion": source_version,
        "packageVersion": source_version,
        "generatedAt": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "title": "Arvados API",
        "description": "The Arvados REST API, served by a toil-arvados local cluster.",
        "documentationLink": "https://doc.arvados.org/api/index.html",
        "protocol": "rest",
        "rootUrl": root_url,
        "servicePath": "arvados/v1/",
        "basePath": "/arvados/v1/",
        "baseUrl": root_url + "arvados/v1/",
        "batchPath": "batch",
        "uuidPrefix": uuid_prefix,
        "defaultCollectionReplication": default_collection_replication,
        "defaultTrashLifetime": default_trash_lifetime,
        "blobSignatureTtl": blob_signature_ttl,
        "maxRequestSize": max_request_size,
        "maxItemsPerResponse": max_items_per_response,
        "dockerImageFormats": list(docker_image_formats),
        "crunchLogUpdatePeriod": crunch_log_update_period,
        "crunchLogUpdateSize": crunch_log_update_size,
        "remoteHosts": dict(remote_hosts or {}),
        "remoteHostsViaDNS": False,
        "websocketUrl": websocket_url,
        "workbenchUrl": workbench_url,
        "workbench2Url": workbench2_url,
        "keepWebServiceUrl": keep_web_service_url,
        "parameters": copy.deepcopy(_GLOBAL_PARAMETERS),
        "auth": {"oauth2": {"scopes": copy.deepcopy(_SCOPES)}},
        "schemas": copy.deepcopy(schemas),
        "resources": copy.deepcopy(resources),
    }
