"""The generated discovery document: real clients build from it, and it matches Arvados' own.

The Arvados SDK and tools call methods by the names, paths and parameter names in the discovery
document, so the checks against the reference document (when present) are what keeps our server
callable by unmodified clients.
"""
from __future__ import annotations

import json
import re
import urllib.parse
from pathlib import Path
from typing import Any

import httplib2
import pytest

import arvados.api  # also installs the SDK's patches on googleapiclient (JSON-encoded arrays)
from googleapiclient.discovery import build_from_document
from googleapiclient.http import HttpMock

from toil_arvados.localcluster import discovery, schema
from toil_arvados.localcluster.schema import SchemaError

REPO = Path(__file__).resolve().parents[1]
REFERENCE_DIR = REPO.parent / "shared" / "arvados-reference"
REFERENCE_DOC = REFERENCE_DIR / "arvados-v1-discovery.json"
ROOT = "https://127.0.0.1:8443/"
WS = "wss://127.0.0.1:8443/websocket"


def make_doc(**kw: Any) -> dict:
    return discovery.discovery_document(ROOT, WS, uuid_prefix="zzzzz", blob_signature_ttl=1209600, **kw)


@pytest.fixture(scope="module")
def doc() -> dict:
    return make_doc()


@pytest.fixture(scope="module")
def reference() -> dict:
    if not REFERENCE_DOC.exists():
        pytest.skip(f"reference discovery document not found at {REFERENCE_DOC}: "
                    "cannot compare our methods and attributes with Arvados'")
    return json.loads(REFERENCE_DOC.read_text())


class FakeHttp:
    """An httplib2.Http stand-in: serves the discovery document, records every other request."""

    def __init__(self, document: dict) -> None:
        self.document = document
        self.requests: list[tuple[str, str, Any]] = []
        self.timeout = None
        self.connections: dict = {}

    def request(self, uri: str, method: str = "GET", body: Any = None, headers: Any = None,
                **_kw: Any) -> tuple[httplib2.Response, bytes]:
        if "/discovery/v1/apis/" in uri:
            return httplib2.Response({"status": "200", "content-type": "application/json"}), \
                json.dumps(self.document).encode()
        self.requests.append((method, uri, body))
        return httplib2.Response({"status": "200", "content-type": "application/json"}), b'{"items": []}'


# -- (a) real clients build from it -----------------------------------------------------------


def test_document_is_json_and_has_google_and_arvados_keys(doc: dict) -> None:
    json.dumps(doc)
    for key in ("rootUrl", "servicePath", "basePath", "batchPath", "parameters", "auth", "schemas",
                "resources", "uuidPrefix", "websocketUrl", "blobSignatureTtl",
                "defaultCollectionReplication", "maxRequestSize", "revision", "dockerImageFormats",
                "remoteHosts", "keepWebServiceUrl", "maxItemsPerResponse"):
        assert key in doc, key
    assert doc["rootUrl"] == ROOT and doc["servicePath"] == "arvados/v1/"
    assert {"alt", "fields", "prettyPrint"} <= set(doc["parameters"])
    assert doc["uuidPrefix"] == "zzzzz" and doc["websocketUrl"] == WS


def test_root_url_gets_trailing_slash() -> None:
    assert discovery.discovery_document("https://h:1", WS, uuid_prefix="zzzzz",
                                        blob_signature_ttl=1)["rootUrl"] == "https://h:1/"


def test_every_ref_resolves(doc: dict) -> None:
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "$ref" in node:
                refs.append(node["$ref"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(doc["resources"])
    walk(doc["schemas"])
    assert refs and all(r in doc["schemas"] for r in refs), set(refs) - set(doc["schemas"])


def test_googleapiclient_builds_it() -> None:
    svc = build_from_document(make_doc(), http=HttpMock())  # it mutates the document: a fresh one
    for res, method in schema.methods_offered():
        assert callable(getattr(getattr(svc, res)(), method.name)), f"{res}.{method.name}"


def test_arvados_sdk_builds_a_client_offline() -> None:
    http = FakeHttp(make_doc())
    api = arvados.api.api_client("v1", ROOT + "discovery/v1/apis/{api}/{apiVersion}/rest", "v2/x/y",
                                 cache=False, http=http, num_retries=0)
    assert api._rootDesc["uuidPrefix"] == "zzzzz"
    assert api._rootDesc["websocketUrl"] == WS
    for res, meth in [("collections", "list"), ("container_requests", "create"),
                      ("keep_services", "accessible"), ("users", "current"),
                      ("api_client_authorizations", "current"), ("groups", "contents"),
                      ("containers", "lock"), ("configs", "get"), ("vocabularies", "get"),
                      ("links", "get_permissions"), ("workflows", "update")]:
        assert callable(getattr(getattr(api, res)(), meth)), f"{res}.{meth}"
    assert api.config() == {"items": []}  # arvados.util found the configs resource and called it

    api.collections().list(filters=[["name", "=", "x"]], limit=5, include_trash=True).execute()
    api.container_requests().create(body={"container_request": {"name": "n"}},
                                    ensure_unique_name=True).execute()
    api.containers().lock(uuid="zzzzz-dz642-000000000000000").execute()
    api.container_requests().container_status(uuid="zzzzz-xvhdp-000000000000000").execute()
    api.keep_services().accessible().execute()
    api.groups().contents(uuid="zzzzz-j7d0g-000000000000000", recursive=True).execute()
    calls = [(m, urllib.parse.urlsplit(u), b) for m, u, b in http.requests]
    paths = [(m, s.path) for m, s, _ in calls]
    assert paths[1:] == [
        ("GET", "/arvados/v1/collections"),
        ("POST", "/arvados/v1/container_requests"),
        ("POST", "/arvados/v1/containers/zzzzz-dz642-000000000000000/lock"),
        ("GET", "/arvados/v1/container_requests/zzzzz-xvhdp-000000000000000/container_status"),
        ("GET", "/arvados/v1/keep_services/accessible"),
        ("GET", "/arvados/v1/groups/contents"),
    ]
    query = urllib.parse.parse_qs(calls[1][1].query)
    assert json.loads(query["filters"][0]) == [["name", "=", "x"]]
    assert query["limit"] == ["5"] and query["include_trash"] == ["true"]
    assert json.loads(calls[2][2]) == {"container_request": {"name": "n"}}
    assert urllib.parse.parse_qs(calls[2][1].query)["ensure_unique_name"] == ["true"]


# -- (b) methods match the reference document --------------------------------------------------


def test_methods_match_reference(doc: dict, reference: dict) -> None:
    problems: list[str] = []
    for res, m in schema.methods_offered():
        ref_res = reference["resources"].get(res)
        if ref_res is None or m.name not in ref_res["methods"]:
            problems.append(f"{res}.{m.name}: not in the reference document")
            continue
        ref = ref_res["methods"][m.name]
        ours = doc["resources"][res]["methods"][m.name]
        for key in ("id", "path", "httpMethod"):
            if ours[key] != ref[key]:
                problems.append(f"{res}.{m.name}: {key} {ours[key]!r} != {ref[key]!r}")
        if set(ours["parameters"]) != set(ref["parameters"]):
            problems.append(f"{res}.{m.name}: parameters {sorted(ours['parameters'])} != "
                            f"{sorted(ref['parameters'])}")
        for name, p in ours["parameters"].items():
            rp = ref["parameters"].get(name)
            if rp is None:
                continue
            for key in ("type", "location", "required", "default"):
                if p.get(key, False if key == "required" else None) != \
                        rp.get(key, False if key == "required" else None):
                    problems.append(f"{res}.{m.name}({name}): {key} {p.get(key)!r} != {rp.get(key)!r}")
        if ("request" in ours) != ("request" in ref) or \
                ours.get("request", {}).get("properties") != ref.get("request", {}).get("properties"):
            problems.append(f"{res}.{m.name}: request body {ours.get('request')} != {ref.get('request')}")
    assert not problems, "\n".join(problems)


def test_top_level_google_keys_match_reference(doc: dict, reference: dict) -> None:
    for key in ("servicePath", "basePath", "batchPath", "id", "name", "version", "discoveryVersion",
                "protocol"):
        assert doc[key] == reference[key], key
    assert doc["revision"] >= reference["revision"]
    assert set(reference["parameters"]) <= set(doc["parameters"])
    assert doc["auth"] == reference["auth"]


# -- (c) attributes exist in Arvados ------------------------------------------------------------


def _documented_attributes(table: str) -> set[str]:
    """Attribute names in the resource's API doc table (before its methods section)."""
    path = REFERENCE_DIR / "docs" / f"api__methods__{table}.textile"
    if not path.exists():
        return set()
    text = path.read_text().split("h2. Methods")[0]
    return set(re.findall(r"^\|(\w+)\|", text, flags=re.M))


def test_attributes_exist_in_reference(reference: dict) -> None:
    common = set(re.findall(r"^\|(\w+)\|", (REFERENCE_DIR / "docs" / "api__resources.textile").read_text(),
                            flags=re.M))
    problems = []
    for table, attrs in schema.ATTRIBUTES.items():
        name = schema.model_name(table)
        known = set(reference["schemas"][name]["properties"]) | _documented_attributes(table) | common
        problems += [f"{table}.{a}" for a in attrs if a not in known]
        # and where the reference gives a type, ours is the same
        for a, attr in attrs.items():
            ref_prop = reference["schemas"][name]["properties"].get(a)
            if ref_prop and table != "user_agreements" and ref_prop.get("type") != attr.type:
                problems.append(f"{table}.{a}: type {attr.type} != {ref_prop.get('type')}")
    assert not problems, problems


def test_reference_attributes_clients_rely_on_are_present(reference: dict) -> None:
    """Every attribute of the reference schemas is ours too (except for the empty agreements)."""
    missing = []
    for table, attrs in schema.ATTRIBUTES.items():
        if table == "user_agreements":
            continue
        ref = reference["schemas"][schema.model_name(table)]["properties"]
        missing += [f"{table}.{a}" for a in ref if a not in attrs]
    assert not missing, missing


# -- schema helpers -----------------------------------------------------------------------------


def test_defaults_and_writable() -> None:
    d = schema.defaults("container_requests")
    assert d["state"] == "Uncommitted" and d["use_existing"] is True and d["mounts"] == {}
    assert "uuid" not in d and "owner_uuid" not in d
    d["mounts"]["x"] = 1
    assert schema.defaults("container_requests")["mounts"] == {}  # fresh copies
    assert schema.defaults("collections")["portable_data_hash"] == "d41d8cd98f00b204e9800998ecf8427e+0"
    assert "name" in schema.writable("collections") and "version" not in schema.writable("collections")
    assert "command" in schema.writable("containers", creating=True)
    assert "command" not in schema.writable("containers")
    assert schema.secret_attributes("container_requests") == {"secret_mounts", "runtime_token"}
    assert "can_write" in schema.virtual_attributes("groups")
    assert "can_write" not in schema.defaults("groups")


def test_validate_refuses_unknown_and_mistyped() -> None:
    with pytest.raises(SchemaError, match=r"unknown attribute 'nmae' for Collection\."):
        schema.validate("collections", {"nmae": "x"}, creating=True)
    with pytest.raises(SchemaError, match="properties parameter must be Hash, not String"):
        schema.validate("collections", {"properties": "x"}, creating=True)
    with pytest.raises(SchemaError, match="command parameter must be Array"):
        schema.validate("container_requests", {"command": "echo"}, creating=True)
    with pytest.raises(SchemaError, match="priority must be an integer"):
        schema.validate("container_requests", {"priority": "high"}, creating=True)
    with pytest.raises(SchemaError, match=r"No container_request \(or containerRequest\) hash"):
        schema.validate("container_requests", [1], creating=True)


def test_validate_casts_and_drops_server_fields() -> None:
    out = schema.validate("collections", {
        "name": "n", "replication_desired": "2", "is_trashed": "false", "version": 7,
        "created_at": "2020-01-01T00:00:00Z", "kind": "arvados#collection", "href": "/x",
        "trash_at": "2030-01-02T03:04:05.5+01:00", "properties": None,
    }, creating=True)
    assert out == {"name": "n", "replication_desired": 2, "is_trashed": False,
                   "trash_at": "2030-01-02T02:04:05.500000000Z", "properties": {}}
    assert schema.validate("collections", json.dumps({"name": "j"}), creating=False) == {"name": "j"}
    assert schema.validate("collections", None, creating=False) == {}


def test_validate_create_only() -> None:
    body = {"uuid": "zzzzz-dz642-000000000000000", "command": ["true"], "state": "Locked"}
    assert schema.validate("containers", body, creating=True) == body
    assert schema.validate("containers", body, creating=False) == {"state": "Locked"}
    with pytest.raises(SchemaError, match="command cannot be modified"):
        schema.validate("containers", {"command": ["false"]}, creating=False, current={"command": ["true"]})
    assert schema.validate("containers", {"command": ["true"]}, creating=False,
                           current={"command": ["true"]}) == {}
