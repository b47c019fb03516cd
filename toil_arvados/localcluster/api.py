"""The HTTPS REST layer: request parsing, authentication, errors and the generic CRUD methods.

What a resource *means* (collections' manifests, container requests' life cycle) lives in the
resource modules; this module only turns HTTP into calls on them and answers the way the Arvados
API server does: JSON records with ``kind``/``etag``, list envelopes, and ``{"errors": [...]}``
with 401/403/404/422 statuses that the SDK and googleapiclient turn into ``ApiError``.
"""
from __future__ import annotations

import json
import logging
import secrets
import time
from typing import Any, Awaitable, Callable

from aiohttp import web

from . import indexes, registry, schema, validation
from .auth import Authorizer, Caller, trashed_now
from .filters import FilterError, apply_list
from .frozen import frozen_project_of
from .store import Store
from .uuids import RESOURCE_KINDS, new_uuid, table_of

logger = logging.getLogger(__name__)

#: Arvados' ``API.MaxRequestSize`` default (lib/config/config.default.yml): larger bodies get 413.
MAX_REQUEST_SIZE = 128 << 20

_LIST_PARAMS = ("filters", "where", "order", "select", "limit", "offset", "count", "distinct")


class ApiError(Exception):
    """An error the client should see, with the HTTP status Arvados would use."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def not_found(what: str = "Path not found") -> ApiError:
    return ApiError(404, what)


def unprocessable(message: str) -> ApiError:
    return ApiError(422, message)


def error_response(status: int, messages: list[str]) -> web.Response:
    token = f"{int(time.time())}+{secrets.token_hex(4)}"
    return web.json_response({"errors": messages, "error_token": token}, status=status)


class Request:
    """One API call: the caller, its merged parameters and its body."""

    def __init__(self, http: web.Request, caller: Caller | None, params: dict[str, Any],
                 json_body: dict | None = None) -> None:
        self.http = http
        self.caller = caller
        self.params = params
        self.json_body = json_body

    @property
    def user(self) -> Caller:
        if self.caller is None:
            raise ApiError(401, "Not logged in")
        return self.caller

    def body(self, singular: str, table: str | None = None) -> dict:
        """The resource attributes sent under the resource's singular name.

        Like Rails' ``wrap_parameters`` on the Arvados API server, a JSON body that is the bare
        object (as the SDK's ``Collection.save_new`` sends) counts too, keeping only attributes.
        """
        value = self.params.get(singular)
        if value is None and self.json_body and table in schema.ATTRIBUTES:
            known = schema.ATTRIBUTES[table]
            return {k: v for k, v in self.json_body.items() if k in known}
        if value is None:
            return {}
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                raise unprocessable(f"Invalid JSON for parameter {singular!r}") from None
        if not isinstance(value, dict):
            raise unprocessable(f"Parameter {singular!r} must be an object")
        return value

    def flag(self, name: str, default: bool = False) -> bool:
        value = self.params.get(name, default)
        if isinstance(value, str):
            return value.lower() in ("true", "1", "yes", "t")
        return bool(value)


Handler = Callable[[Request], Awaitable[Any]]


def _decode_param(value: str) -> Any:
    """Query parameters carry JSON for structured values (filters, order, select)."""
    if value and value[0] in "[{\"" or value in ("true", "false", "null"):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def list_filters(params: dict[str, Any]) -> list:
    """A list call's filters: ``filters`` plus the legacy ``where`` hash as ``=``/``in`` filters."""
    filters = list(params.get("filters") or [])
    where = params.get("where")
    if isinstance(where, dict):
        filters += [[k, "in" if isinstance(v, list) else "=", v] for k, v in where.items()]
    return filters


def singular_of(table: str) -> str:
    """``container_requests`` -> ``container_request``: the body key googleapiclient uses."""
    kind = registry.kind_of(table)
    return kind.singular if kind else table[:-1]


class Resource:
    """Generic Arvados resource behaviour; subclasses add what is special about their kind."""

    table: str = ""

    def __init__(self, api: "ApiServer") -> None:
        self.api = api
        self.store: Store = api.store
        self.authz: Authorizer = api.authz

    # Hooks for subclasses ---------------------------------------------------------------------

    def prepare_create(self, req: Request, attrs: dict) -> dict:
        return attrs

    def prepare_update(self, req: Request, old: dict, changes: dict) -> dict:
        return changes

    def after_write(self, req: Request, record: dict, old: dict | None) -> None:
        """Side effects once a record is stored (e.g. a committed request gets a container)."""

    def present(self, req: Request, record: dict) -> dict:
        """The record as this caller sees it (signed locators, secrets removed)."""
        return record

    def visible(self, req: Request, record: dict) -> bool:
        """Whether get and list show ``record`` to this caller (Arvados' ``readable_by``)."""
        if req.flag("include_trash"):
            # Trash inside a frozen project stays hidden from all but admins (``readable_by``).
            return self.authz.can_read(req.user, record) and (
                req.user.is_admin or not self._trash_in_frozen_project(record))
        return not trashed_now(record) and self.authz.can_read_live(req.user, record)

    def _trash_in_frozen_project(self, record: dict) -> bool:
        return ((trashed_now(record) or self.authz.in_trashed_project(record))
                and frozen_project_of(self.store, {"owner_uuid": record.get("owner_uuid")}) is not None)

    def routes(self) -> list[tuple[str, str, Handler]]:
        """Extra (method, path, handler) routes under /arvados/v1/<table>/: the resource's
        non-CRUD methods in :mod:`schema` (which the discovery document lists too), each served
        by this class's handler of the same name; a method without one is not served."""
        described = schema.RESOURCES.get(self.table)
        prefix = self.table + "/"
        out: list[tuple[str, str, Handler]] = []
        for m in described.methods if described else ():
            handler = getattr(self, m.name, None)
            if m.name not in _CRUD_METHODS and m.path.startswith(prefix) and callable(handler):
                out.append((m.http_method, m.path[len(prefix):], handler))
        return out

    # Generic methods --------------------------------------------------------------------------

    def fetch(self, req: Request, uuid: str) -> dict:
        record = self.store.get(uuid)
        if record is None or table_of(uuid) != self.table or not self.authz.can_read(req.user, record):
            raise not_found()
        return record

    def check_writable(self, req: Request, old: dict, changes: dict | None) -> None:
        """A 403 unless the caller may apply ``changes`` to ``old`` (None: delete or trash it)."""
        if self.authz.can_write(req.user, old):
            return
        frozen = self._frozen_for(req, old)
        if frozen is not None:
            raise ApiError(403, f"Forbidden: {old['uuid']} is in frozen project {frozen} (read-only until it is unfrozen)")
        raise ApiError(403, f"Forbidden: no write permission on {old['uuid']}")

    def _frozen_for(self, req: Request, record: dict) -> str | None:
        """The frozen project that keeps ``record`` read-only, named only to who can read it."""
        frozen = frozen_project_of(self.store, record)
        return frozen if frozen is not None and self.authz.can_read(req.user, record) else None

    def check_owner(self, req: Request, owner_uuid: str) -> None:
        """Writing into a project needs write permission on it; a missing owner is a 422."""
        if owner_uuid == req.user.uuid or req.user.is_admin and owner_uuid == self.store.system_user_uuid:
            return
        owner = self.store.get(owner_uuid)
        if owner is None or table_of(owner_uuid) not in ("users", "groups"):
            raise unprocessable(f"owner_uuid {owner_uuid} is not a user or project that exists")
        if not self.authz.can_write(req.user, owner):
            frozen = self._frozen_for(req, owner)
            if frozen is not None:
                raise ApiError(403, f"Forbidden: owner_uuid {owner_uuid} cannot be set or changed because "
                                    f"project {frozen} is frozen")
            raise ApiError(403, f"Forbidden: cannot write to owner_uuid {owner_uuid}")
        if table_of(owner_uuid) == "groups" and owner.get("group_class") != "project":
            # arvados_model.rb ensure_owner_uuid_is_permitted: PermissionDeniedError, for every kind.
            raise ApiError(403, f"Owner uuid must be a project: {owner_uuid} is a "
                                f"{owner.get('group_class')} group")

    def check_name_lengths(self, attrs: dict) -> None:
        """Names are ``varchar(255)`` in Arvados: longer ones are refused (422), never truncated."""
        errors = validation.name_length_errors(self.table, attrs)
        if errors:
            raise unprocessable("; ".join(errors))

    # Attributes a list leaves out unless asked for with ``select`` (Arvados: collections' manifests).
    list_omits: frozenset[str] = frozenset()

    async def list(self, req: Request) -> dict:
        records = [r for r in self.candidates(self.table, list_filters(req.params)) if self.visible(req, r)]
        items, available = self.select_list(req, records)
        shaped = [self._shape(req, r) for r in items]
        if self.list_omits and not req.params.get("select"):
            shaped = [{k: v for k, v in r.items() if k not in self.list_omits} for r in shaped]
        return self.list_envelope(req, shaped, available)

    def candidates(self, table: str, filters: list) -> list[dict]:
        """The records of ``table`` a list with ``filters`` must look at, in table order: those an
        index finds for one of the filters (:mod:`indexes`), else all of them. A superset of the
        matches: the filters still run on each, so the result is what a full scan gives."""
        found = indexes.candidates(table, filters, self.store)
        return self.store.records(table) if found is None else found

    def select_list(self, req: Request, records: list[dict]) -> tuple[list[dict], int | None]:
        p = req.params
        filters = list_filters(p)
        try:
            return apply_list(
                records, filters=filters, order=p.get("order"), limit=_int(p.get("limit"), 100, "limit"),
                offset=_int(p.get("offset"), 0, "offset"), select=None, count=p.get("count") or "exact",
                distinct=req.flag("distinct"), table=self.table if self.table in RESOURCE_KINDS else None,
            )
        except FilterError as e:
            raise unprocessable(str(e)) from None

    def list_envelope(self, req: Request, items: list[dict], available: int | None) -> dict:
        out = {
            "kind": RESOURCE_KINDS[self.table][0] + "List",
            "etag": "",
            "self_link": "",
            "offset": _int(req.params.get("offset"), 0, "offset"),
            "limit": min(_int(req.params.get("limit"), 100, "limit"), 1000),
            "items": items,
        }
        if available is not None:
            out["items_available"] = available
        return out

    async def get(self, req: Request) -> dict:
        record = self.fetch(req, req.params["uuid"])
        if not self.visible(req, record):
            raise not_found()
        return self._shape(req, record)

    async def create(self, req: Request) -> dict:
        attrs = req.body(singular_of(self.table), self.table)
        try:
            attrs = schema.validate(self.table, attrs, creating=True)
        except schema.SchemaError as e:
            raise unprocessable(str(e)) from None
        full = schema.defaults(self.table)
        full.update(attrs)
        if not full.get("owner_uuid"):
            full["owner_uuid"] = req.user.uuid
        if self.table not in UNOWNED_TABLES:
            self.check_owner(req, full["owner_uuid"])
        self.check_name_lengths(full)
        full = self.prepare_create(req, full)
        given = attrs.get("uuid") if req.user.is_admin else None
        renamed = self.ensure_unique_name(req, full, exclude=given)
        record = self.store.create(self.table, full, by=req.user.uuid, uuid=given or renamed)
        self.after_write(req, record, None)
        return self._shape(req, self.store.get(record["uuid"]) or record)

    async def update(self, req: Request) -> dict:
        old = self.fetch(req, req.params["uuid"])
        changes = req.body(singular_of(self.table), self.table)
        try:
            changes = schema.validate(self.table, changes, creating=False)
        except schema.SchemaError as e:
            raise unprocessable(str(e)) from None
        changes.pop("uuid", None)
        self.check_writable(req, old, changes)
        if "owner_uuid" in changes and changes["owner_uuid"] != old.get("owner_uuid"):
            self.check_owner(req, changes["owner_uuid"])
        self.check_name_lengths(changes)
        changes = self.prepare_update(req, old, changes)
        if "name" in changes or "owner_uuid" in changes:
            merged = dict(old, **changes)
            self.ensure_unique_name(req, merged, exclude=old["uuid"])
            changes["name"] = merged.get("name")
        record = self.store.update(old["uuid"], changes, by=req.user.uuid)
        self.after_write(req, record, old)
        return self._shape(req, self.store.get(record["uuid"]) or record)

    async def delete(self, req: Request) -> dict:
        old = self.fetch(req, req.params["uuid"])
        self.check_writable(req, old, None)
        self.before_delete(req, old)
        self.store.delete(old["uuid"], by=req.user.uuid)
        return self._shape(req, old)

    def before_delete(self, req: Request, record: dict) -> None:
        """Refuse or prepare a delete (e.g. a running container request cannot be deleted)."""

    # Names ----------------------------------------------------------------------------------

    @property
    def unique_names(self) -> bool:
        """Names are unique per owner for this kind (the registry says which kinds)."""
        kind = registry.kind_of(self.table)
        return bool(kind and kind.unique_names)

    def ensure_unique_name(self, req: Request, attrs: dict, exclude: str | None = None) -> str | None:
        """Arvados keeps names unique per owner for projects and collections (422 otherwise).

        With ``ensure_unique_name=true`` it renames instead, as arv-put relies on: the name's
        first 237 characters plus the object's UUID tail (``add_uuid_to_name``), so the result
        still fits the 255-character column. Returns the UUID the new object must then get.
        """
        if not self.unique_names or not attrs.get("name") or attrs.get("is_trashed"):
            return None
        owner, name = attrs.get("owner_uuid"), attrs["name"]

        def taken(n: str) -> bool:
            return any(r.get("owner_uuid") == owner and r.get("name") == n and r["uuid"] != exclude
                       and not r.get("is_trashed")
                       for r in self.store.lookup(self.table, "owner_name", (owner, n)))

        if not taken(name):
            return None
        if not req.flag("ensure_unique_name"):
            raise unprocessable(
                f"Duplicate name: {name!r} already exists in {owner}; choose another name or pass ensure_unique_name=true"
            )
        uuid = exclude or new_uuid(self.store.cluster_id, self.table)
        attrs["name"] = validation.unique_name(name, uuid)
        if taken(attrs["name"]):
            raise unprocessable(f"Duplicate name: {attrs['name']!r} already exists in {owner}")
        return uuid

    # Helpers ---------------------------------------------------------------------------------

    def _shape(self, req: Request, record: dict) -> dict:
        hidden = schema.secret_attributes(self.table) if self.table in schema.ATTRIBUTES else set()
        shown = {k: v for k, v in record.items() if not k.startswith("_") and k not in hidden
                 and k != "secret_mounts_md5"}
        shown = self.present(req, shown)
        select = req.params.get("select")
        if select:
            if isinstance(select, str):
                select = [select]
            keep = set(select) | {"kind"}
            shown = {k: v for k, v in shown.items() if k in keep}
        return shown


class Trashable(Resource):
    """Arvados' trash for collections and projects: ``delete`` trashes, ``untrash`` restores."""

    TRASH_LIFETIME = 14 * 24 * 3600  # Collections.DefaultTrashLifetime (336h), as exported in the config

    def _writable(self, req: Request) -> dict:
        old = self.fetch(req, req.params["uuid"])
        self.check_writable(req, old, None)
        return old

    async def trash(self, req: Request) -> dict:
        from ..timestamps import timestamp

        old = self._writable(req)
        self.before_trash(req, old)
        now = time.time()
        changes = {"is_trashed": True, "trash_at": timestamp(now), "delete_at": timestamp(now + self.TRASH_LIFETIME)}
        return self._shape(req, self.store.update(old["uuid"], changes, by=req.user.uuid))

    def before_trash(self, req: Request, old: dict) -> None:
        """Refuse to trash ``old`` (e.g. a project holding a frozen one)."""

    async def delete(self, req: Request) -> dict:
        """Arvados' ``delete`` puts the object in the trash (``untrash`` brings it back)."""
        return await self.trash(req)

    async def untrash(self, req: Request) -> dict:
        old = self._writable(req)
        changes = {"is_trashed": False, "trash_at": None, "delete_at": None}
        return self._shape(req, self.store.update(old["uuid"], changes, by=req.user.uuid))


# Methods every resource serves through the generic routes (see ApiServer.make_app).
_CRUD_METHODS = frozenset({"get", "list", "create", "update", "delete"})

# Tables whose owner_uuid is not a project to check write permission on.
UNOWNED_TABLES = frozenset({"logs", "keep_services", "api_client_authorizations", "users", "links"})


def _int(value: Any, default: int, name: str) -> int:
    if value is None or value == "":
        return default
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise unprocessable(f"Invalid value for {name}: {value!r} is not an integer") from None
    if n < 0:
        raise unprocessable(f"Invalid value for {name}: must be >= 0")
    return n


class ApiServer:
    """Wires resources to routes and runs every request through auth and error handling."""

    def __init__(self, store: Store, authz: Authorizer, discovery: Callable[[web.Request], dict]) -> None:
        self.store = store
        self.authz = authz
        self.discovery = discovery
        self._discovery_body: bytes | None = None
        self.resources: dict[str, Resource] = {}
        self.extra_routes: list[tuple[str, str, Handler, bool]] = []
        # API calls served, by token and by endpoint: benchmarks count calls per job at the server.
        self.calls_by_token: dict[str, int] = {}
        self.calls_by_endpoint: dict[str, int] = {}

    def add(self, resource: Resource) -> None:
        self.resources[resource.table] = resource

    def route(self, method: str, path: str, handler: Handler, *, auth: bool = True) -> None:
        """An extra endpoint at ``/arvados/v1/<path>`` (path may contain ``{uuid}``)."""
        self.extra_routes.append((method, path, handler, auth))

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_REQUEST_SIZE)
        app.router.add_get("/discovery/v1/apis/arvados/v1/rest", self._discovery)
        app.router.add_get("/_health/ping", self._ping)
        app.router.add_get("/_health/stats", self._wrap(self._stats, True, counted=False))
        for method, path, handler, auth in self.extra_routes:
            app.router.add_route(method, "/arvados/v1/" + path, self._wrap(handler, auth))
        for table, res in self.resources.items():
            for method, path, handler in res.routes():
                app.router.add_route(method, f"/arvados/v1/{table}/{path}", self._wrap(handler, True))
            app.router.add_route("GET", f"/arvados/v1/{table}", self._wrap(res.list, True))
            app.router.add_route("POST", f"/arvados/v1/{table}",
                                 _method_override(self._wrap(res.create, True), {"GET": self._wrap(res.list, True)}))
            app.router.add_route("GET", f"/arvados/v1/{table}/{{uuid}}", self._wrap(res.get, True))
            app.router.add_route("PUT", f"/arvados/v1/{table}/{{uuid}}", self._wrap(res.update, True))
            app.router.add_route("PATCH", f"/arvados/v1/{table}/{{uuid}}", self._wrap(res.update, True))
            app.router.add_route("DELETE", f"/arvados/v1/{table}/{{uuid}}", self._wrap(res.delete, True))
        app.router.add_route("*", "/arvados/v1/{tail:.*}", self._unknown)
        return app

    async def _discovery(self, http: web.Request) -> web.Response:
        # Every client the SDK builds fetches it, and it depends on the cluster's settings only:
        # encode it once (building and encoding it took more CPU than any other request).
        if self._discovery_body is None:
            self._discovery_body = json.dumps(self.discovery(http)).encode()
        return web.Response(body=self._discovery_body, content_type="application/json")

    async def _stats(self, req: Request) -> dict:
        """Call counters for benchmarks (admin only); not part of the Arvados API."""
        if not req.user.is_admin:
            raise ApiError(403, "Forbidden")
        return {"calls_total": sum(self.calls_by_token.values()), "calls_by_token": dict(self.calls_by_token),
                "calls_by_endpoint": dict(self.calls_by_endpoint)}

    async def _ping(self, http: web.Request) -> web.Response:
        return web.json_response({"health": "OK"})

    async def _unknown(self, http: web.Request) -> web.Response:
        return error_response(404, ["Path not found"])

    def _wrap(self, handler: Handler, auth: bool,
              counted: bool = True) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        endpoint = getattr(handler, "__qualname__", "handler")

        async def serve(http: web.Request) -> web.StreamResponse:
            try:
                _check_size(http)
                params, json_body = await self._params(http)
                token = _token_of(http, params)
                caller = self.authz.authenticate(token) if token else None
                if auth and caller is None:
                    # Arvados answers 401 both for a missing and for an unknown token.
                    raise ApiError(401, "Not logged in" if not token else "Not logged in (invalid API token)")
                if counted:
                    who = caller.token["uuid"] if caller else "anonymous"
                    self.calls_by_token[who] = self.calls_by_token.get(who, 0) + 1
                    # "<resource>.<method>", e.g. "container_requests.create", for per-kind counts.
                    resource = http.path.removeprefix("/arvados/v1/").split("/", 1)[0]
                    key = f"{resource}.{endpoint.rsplit('.', 1)[-1]}"
                    self.calls_by_endpoint[key] = self.calls_by_endpoint.get(key, 0) + 1
                result = await handler(Request(http, caller, params, json_body))
            except ApiError as e:
                return error_response(e.status, [e.message])
            except web.HTTPRequestEntityTooLarge:  # a chunked body that grew past the limit
                return error_response(413, [_too_large()])
            except web.HTTPException:
                raise
            except Exception as e:  # a bug here must not kill the server; the client gets a 500
                logger.exception("internal error serving %s %s", http.method, http.path)
                return error_response(500, [f"Internal server error: {type(e).__name__}: {e}"])
            if isinstance(result, web.StreamResponse):
                return result
            return web.json_response(result, dumps=_dumps)
        return serve

    async def _params(self, http: web.Request) -> tuple[dict[str, Any], dict | None]:
        params: dict[str, Any] = {k: _decode_param(v) for k, v in http.query.items()}
        json_body = None
        if http.can_read_body:
            ctype = http.content_type
            if ctype == "application/json":
                raw = await http.read()
                if raw:
                    try:
                        body = json.loads(raw)
                    except ValueError:
                        raise unprocessable("Request body is not valid JSON") from None
                    if isinstance(body, dict):
                        params.update(body)
                        json_body = body
            elif ctype in ("application/x-www-form-urlencoded", "multipart/form-data"):
                form = await http.post()
                params.update({k: _decode_param(str(v)) for k, v in form.items()})
        params.update(http.match_info)
        if params.get("_method"):
            params.pop("_method")
        return params, json_body


def _too_large() -> str:
    return f"Request body too large: the limit is {MAX_REQUEST_SIZE} bytes (API.MaxRequestSize)"


def _check_size(http: web.Request) -> None:
    """Refuse a declared body over the limit before reading any of it (Arvados: 413)."""
    if (http.content_length or 0) > MAX_REQUEST_SIZE:
        raise ApiError(413, _too_large())


def _method_override(post: Callable[[web.Request], Awaitable[web.StreamResponse]],
                     others: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]],
                     ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A POST that says it is another method is that method, its parameters in the body.

    Arvados treats ``POST ...?_method=GET`` as a GET (api__requests), and so does its controller
    for the ``X-Http-Method-Override`` header, which the SDK's HTTP layer sends when a list's
    query string is too long for a URL (e.g. a ``["uuid", "in", [...]]`` filter of 60 uuids).
    Without this such a list would run as a create.
    """
    async def serve(http: web.Request) -> web.StreamResponse:
        if (http.content_length or 0) > MAX_REQUEST_SIZE:
            return error_response(413, [_too_large()])
        method = http.headers.get("X-Http-Method-Override") or http.query.get("_method")
        if not method and http.content_type == "application/x-www-form-urlencoded":
            method = (await http.post()).get("_method")
        return await others.get(str(method or "POST").upper(), post)(http)
    return serve


def _token_of(http: web.Request, params: dict) -> str | None:
    header = http.headers.get("Authorization", "")
    for scheme in ("Bearer ", "OAuth2 "):
        if header.startswith(scheme):
            return header[len(scheme):].strip()
    token = params.pop("api_token", None)
    return str(token) if token else None


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))
