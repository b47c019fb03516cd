"""The plugin's one gateway to Arvados: client, retries, error kinds, paging, cancel, logs.

Credentials come from where the SDK always looks (``ARVADOS_API_HOST``/``ARVADOS_API_TOKEN``
environment variables, ``~/.config/arvados/settings.conf``), never from the command line, and
never appear in an error message. Failures become :class:`ArvadosSetupError`, one line that
names the problem and what to do, which the command-line entry points print without a traceback.

Two retry policies, because the two situations differ:

* the very first contact (:func:`connect`, :func:`check_connection`) fails fast (about 10 s):
  nothing has been submitted yet, and a wrong host or token must be said at once;
* every later call (:func:`call`, :func:`retrying`) rides out an API or Keep outage: connection
  errors and 5xx are retried with capped exponential backoff for up to :data:`OUTAGE_BUDGET`
  seconds, so a cluster restart or a load balancer hiccup does not fail a running workflow.
  Keep block transfers (:class:`PatientKeepClient`, the ``keep`` of a :func:`connect` client)
  follow the same policy instead of the SDK Keep client's own ~4 minutes of retries.

Errors are told apart by HTTP status (:func:`error_kind`), never by message text.
"""
from __future__ import annotations

import json
import logging
import os
import random
import re
import ssl
import threading
import time
import uuid as uuidlib
from typing import Any, Callable, Iterable, TypeVar

logger = logging.getLogger(__name__)

NUM_RETRIES = 5
# The first contact (the discovery document) retries less: with NUM_RETRIES the SDK's randomised
# exponential backoff keeps a leader pointed at a dead host waiting 30-60 s before it can say so.
CONNECT_RETRIES = 3


class ArvadosSetupError(Exception):
    """A configuration problem the user must fix (bad token, unknown project, missing image...)."""


# -- error kinds -------------------------------------------------------------------------------

AUTH = "auth"  # 401/403: the token is wrong, expired or lacks permission
NOT_FOUND = "not_found"  # 404
CONFLICT = "conflict"  # 409/422: the request clashes with what exists (e.g. a duplicate name) or is invalid
RETRYABLE = "retryable"  # 5xx, 408/429 and connection errors: the cluster may answer later
OTHER = "other"

# Later calls retry this long (seconds) through an outage; the first contact fails fast instead.
OUTAGE_BUDGET = 600.0
_BACKOFF_START, _BACKOFF_MAX = 1.0, 30.0
_CONNECTION_ERROR_NAMES = ("ServerNotFoundError", "HttpLib2Error", "RemoteDisconnected", "IncompleteRead",
                           "RelativeURIError")

T = TypeVar("T")


def kind_of_status(status: int) -> str:
    """The kind of an HTTP status the API answered with (pure)."""
    if status in (401, 403):
        return AUTH
    if status == 404:
        return NOT_FOUND
    if status in (409, 422):
        return CONFLICT
    if status in (408, 429) or status >= 500:
        return RETRYABLE
    return OTHER


def status_of(error: BaseException) -> int | None:
    """The HTTP status behind an SDK error: ``ApiError.resp.status`` or Keep's ``HttpError.status_code``."""
    status = getattr(getattr(error, "resp", None), "status", None)
    if status is None:
        status = getattr(error, "status_code", None)
    try:
        return int(status) if status is not None else None
    except (TypeError, ValueError):
        return None


def error_kind(error: BaseException) -> str:
    """Classify an exception from an API or Keep call by status code or exception type, never by text."""
    status = status_of(error)
    if status is not None:
        return kind_of_status(status)
    keep_errors = getattr(error, "request_errors", None)
    if callable(keep_errors):  # arvados.errors.KeepRequestError: one outcome per Keep service
        if type(error).__name__ == "NotFoundError":
            return NOT_FOUND
        outcomes = list(keep_errors().values())
        if not outcomes or any(error_kind(o) == RETRYABLE for o in outcomes if isinstance(o, BaseException)):
            return RETRYABLE
        return OTHER
    if isinstance(error, (OSError, TimeoutError)) or type(error).__name__ in _CONNECTION_ERROR_NAMES \
            or any(c.__name__ in _CONNECTION_ERROR_NAMES for c in type(error).__mro__):
        return RETRYABLE
    if type(error).__module__.startswith("pycurl"):  # Keep client transport errors
        return RETRYABLE
    return OTHER


def is_retryable(error: BaseException) -> bool:
    return error_kind(error) == RETRYABLE


# -- retries -----------------------------------------------------------------------------------

def retrying(fn: Callable[[], T], what: str, budget: float = OUTAGE_BUDGET,
             sleep: Callable[[float], None] | None = None) -> T:
    """``fn()``, retried through connection errors and 5xx with capped exponential backoff.

    Only for idempotent work (reads, updates to a fixed value, Keep transfers); creates go
    through :func:`create_request`, which first looks for what an earlier attempt made. Gives
    up, re-raising the last error, when the next wait would pass ``budget`` seconds.
    ``sleep`` defaults to ``time.sleep`` looked up at call time (tests replace the clock).
    """
    sleep = sleep or time.sleep
    deadline = time.monotonic() + budget
    delay = _BACKOFF_START
    failing_since: float | None = None
    while True:
        try:
            result = fn()
        except Exception as e:
            wait = delay * random.uniform(0.8, 1.2)  # the jittered wait is the one that must fit
            if not is_retryable(e) or time.monotonic() + wait > deadline:
                raise
            if failing_since is None:
                failing_since = time.monotonic()
                logger.warning("%s; retrying for up to %.0f s", describe(e, f"Arvados unavailable ({what})"), budget)
            sleep(wait)
            delay = min(_BACKOFF_MAX, delay * 2)
            continue
        if failing_since is not None:
            logger.warning("Arvados answers again (%s) after %.0f s", what, time.monotonic() - failing_since)
        return result


def call(make_request: Callable[[], Any], what: str, budget: float = OUTAGE_BUDGET) -> Any:
    """Execute an (idempotent) SDK request, retrying through an outage: ``call(lambda: api.x().get(...))``.

    ``budget`` is the whole wait: the request is executed unwrapped, so a patient client's own
    (longer) retries do not stretch it."""
    return retrying(lambda: unwrapped(make_request()).execute(), what, budget)


def _execute_once(request: Any) -> Any:
    """Execute without the SDK's own retries: a create the SDK re-sent after a dropped connection
    could exist twice. The HTTP object is this thread's own (the SDK's client is per thread)."""
    request = unwrapped(request)
    http = getattr(request, "http", None)
    saved = getattr(http, "num_retries", None)
    if saved is None:
        return request.execute()
    http.num_retries = 0
    try:
        return request.execute(num_retries=0)
    finally:
        http.num_retries = saved


PROPERTY_SUBMISSION = "toil_submission_id"


def create_request(api: Any, body: dict, what: str, budget: float = OUTAGE_BUDGET, **kwargs: Any) -> dict:
    """Create a container request exactly once, even if the connection drops mid-call.

    The body carries a fresh :data:`PROPERTY_SUBMISSION`; after a failed attempt that may have
    reached the server, the next attempt first looks the request up by it, so a workflow never
    runs the same step twice because an answer was lost.
    """
    token = uuidlib.uuid4().hex
    body = {**body, "properties": {**(body.get("properties") or {}), PROPERTY_SUBMISSION: token}}
    uncertain = False

    def attempt() -> dict:
        nonlocal uncertain
        if uncertain:
            found = unwrapped(api.container_requests().list(
                filters=[[f"properties.{PROPERTY_SUBMISSION}", "=", token]], limit=1, count="none")).execute()
            if found["items"]:
                logger.info("Found %s (%s) created before the connection dropped", found["items"][0]["uuid"], what)
                return found["items"][0]
        uncertain = True
        return _execute_once(api.container_requests().create(body={"container_request": body}, **kwargs))

    return retrying(attempt, what, budget)


# -- paging, cancel, logs ------------------------------------------------------------------------

_UUID_CHUNK = 500  # uuids per ``in`` filter: keeps request bodies modest


def list_all(method: Callable[..., Any], filters: list, select: list[str] | None = None, *,
             what: str = "list", page_size: int | None = None, budget: float = OUTAGE_BUDGET) -> list[dict]:
    """Every record ``method`` (e.g. ``api.containers().list``) finds, over as many pages as the
    server chooses to send (the SDK's keyset paging; never assumes a page size).

    ``page_size`` asks for smaller pages (tests). A long ``uuid in`` filter is split into chunks.
    """
    uuid_filter = next((f for f in filters if f[0] == "uuid" and f[1] == "in"), None)
    if uuid_filter is not None and len(uuid_filter[2]) > _UUID_CHUNK:
        uuids = list(uuid_filter[2])
        out: list[dict] = []
        for i in range(0, len(uuids), _UUID_CHUNK):
            chunk = [f if f is not uuid_filter else ["uuid", "in", uuids[i:i + _UUID_CHUNK]] for f in filters]
            out += list_all(method, chunk, select, what=what, page_size=page_size, budget=budget)
        return out
    import arvados.util

    # Pages are fetched unwrapped: ``budget`` bounds the whole listing, not each page.
    fn = (lambda **kw: unwrapped(method(**kw))) if page_size is None else \
        (lambda **kw: unwrapped(method(**{**kw, "limit": page_size})))
    kwargs: dict[str, Any] = {"filters": filters}
    if select is not None:
        kwargs["select"] = list(select)
    return retrying(lambda: list(arvados.util.keyset_list_all(fn, **kwargs)), what, budget)


def get_many(method: Callable[..., Any], uuids: list[str], select: list[str] | None = None, *,
             what: str = "look up", budget: float = OUTAGE_BUDGET) -> list[dict]:
    """The records among ``uuids`` that exist and are visible, usually in one call per chunk."""
    return list_by_values(method, "uuid", uuids, select, what=what, budget=budget)


def list_by_values(method: Callable[..., Any], field: str, values: list[str], select: list[str] | None = None, *,
                   what: str = "look up", budget: float = OUTAGE_BUDGET, every: bool = True) -> list[dict]:
    """Every visible record whose ``field`` is one of ``values``, usually in one call per chunk.

    A page with fewer records than the server's page limit is complete, and so is one holding a
    record per value of a field no two records share (``uuid``); only otherwise (the server cut
    the page) does it fall back to keyset paging, which always costs one more call. For other
    fields the page asks for two records per value (e.g. a collection kept by an earlier run
    shares its ``portable_data_hash`` with this run's copy). ``every=False``: some record per
    value is enough, and a page cut short is taken as it is (an empty collection's hash is
    shared by thousands); callers look up the values it left out themselves."""
    out: list[dict] = []
    for i in range(0, len(values), _UUID_CHUNK):
        chunk = list(values[i:i + _UUID_CHUNK])
        limit = len(chunk) if field == "uuid" else 2 * len(chunk)
        kwargs: dict[str, Any] = {"filters": [[field, "in", chunk]], "limit": limit, "count": "none",
                                  "order": ["uuid asc"]}
        if select is not None:
            kwargs["select"] = list({*select, "uuid"})
        page = retrying(lambda: unwrapped(method(**kwargs)).execute(), what, budget)
        items = page.get("items") or []
        if not every or (field == "uuid" and len(items) == len(chunk)) or len(items) < int(page.get("limit") or limit):
            out += items
        else:
            out += list_all(method, [[field, "in", chunk]], select, what=what, budget=budget)
    return out


def manifests_by_pdh(api: Any, pdhs: Iterable[str], *, what: str,
                     budget: float = OUTAGE_BUDGET) -> dict[str, str]:
    """The manifest of a readable collection for each portable data hash in ``pdhs``, from one
    listing per chunk of hashes (one ``get`` each would cost a call per hash). The empty
    collection's is "" without a call; a hash the listing missed is left out, for the caller to
    read on its own."""
    from .keep_locations import EMPTY_PDH

    wanted = set(pdhs)
    found: dict[str, str] = {EMPTY_PDH: ""} if EMPTY_PDH in wanted else {}
    for rec in list_by_values(api.collections().list, "portable_data_hash", sorted(wanted - {EMPTY_PDH}),
                              ["portable_data_hash", "manifest_text"], what=what, budget=budget, every=False):
        found.setdefault(rec["portable_data_hash"], rec["manifest_text"])
    return found


def cancel_request(api: Any, cr_uuid: str, budget: float = OUTAGE_BUDGET, *, quietly: bool = False) -> None:
    """Priority 0 is Arvados' cancel: the container stops unless another request shares it.
    ``quietly``: a failure is logged as a warning instead of raised (a run being torn down)."""
    try:
        call(lambda: api.container_requests().update(uuid=cr_uuid, body={"container_request": {"priority": 0}}),
             f"cancel {cr_uuid}", budget)
    except Exception as e:
        if not quietly:
            raise
        logger.warning("%s", describe(e, f"could not cancel {cr_uuid}"))


_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z ")
_LOG_FILES = ("stderr.txt", "crunch-run.txt")


def untimestamped(line: str) -> str:
    """A crunch log line without the timestamp crunch-run puts in front of it (pure)."""
    return _TIMESTAMP.sub("", line, count=1)


def log_tail(api: Any, log_collection_ref: str, lines: int, budget: float = 60.0) -> tuple[str, list[str]] | None:
    """The last ``lines`` lines of a request's log (``log_uuid``): stderr, else crunch-run's own log.

    Read through the *request's* log collection, the one users can read (the container's own log
    belongs to the dispatcher). Returns the file's name and its lines, timestamps stripped.
    """
    import arvados.collection

    def read() -> tuple[str, list[str]] | None:
        logs = arvados.collection.CollectionReader(log_collection_ref, api_client=unwrapped(api),
                                                   keep_client=unwrapped(api).keep)  # ``budget`` is the whole wait
        for name in _LOG_FILES:
            if name in logs:
                with logs.open(name) as f:
                    tail = f.read().splitlines()[-lines:]
                if tail:
                    return name, [untimestamped(line) for line in tail]
        return None

    return retrying(read, f"read log {log_collection_ref}", budget)


def log_text(api: Any, log_collection_ref: str, names: tuple[str, ...], lines: int,
             budget: float = 60.0) -> str:
    """The last ``lines`` lines of each of the log files ``names`` a request's log collection has,
    timestamps stripped, as one text (e.g. to look for a memory error in what a tool printed)."""
    import arvados.collection

    def read() -> str:
        logs = arvados.collection.CollectionReader(log_collection_ref, api_client=unwrapped(api),
                                                   keep_client=unwrapped(api).keep)
        out: list[str] = []
        for name in names:
            if name in logs:
                with logs.open(name) as f:
                    out += [untimestamped(line) for line in f.read().splitlines()[-lines:]]
        return "\n".join(out)

    return retrying(read, f"read log {log_collection_ref}", budget)


# -- events --------------------------------------------------------------------------------------

# Arvados' websocket server (ws, session_v0.go) honours only these filters; the rest is ignored
# there, so clients filter e.g. by object kind themselves.
_WS_FILTER_FIELDS = ("event_type", "created_at")


def ws_filters(event_types: list[str]) -> list[list[Any]]:
    """The subscription filters a real ws server applies: ``event_type in [...]`` only (pure)."""
    return [["event_type", "in", list(event_types)]]


def subscribe_events(api: Any, event_types: list[str], on_event: Callable[[dict], None]) -> Any:
    """A websocket subscription that survives outages: it reconnects with capped backoff for as
    long as it is open, where the SDK's client gives up after ~4 min and interrupts the main
    thread. ``on_event`` must do its own filtering beyond event types (see :func:`ws_filters`).
    Raises if the first connection fails (callers then rely on polling)."""
    import arvados.events

    class PatientEventClient(arvados.events.EventClient):  # type: ignore[misc, name-defined]
        def on_closed(self) -> None:
            delay = _BACKOFF_START
            while not self.is_closed.is_set():
                try:
                    self._connect()
                    logger.info("Arvados event bus: reconnected")
                    return
                except Exception as e:
                    logger.debug("Arvados event bus: reconnect failed: %s", scrub(str(e)))
                self.is_closed.wait(delay * random.uniform(0.8, 1.2))
                delay = min(_BACKOFF_MAX, delay * 2)

    def deliver(event: dict) -> None:
        try:
            on_event(event)
        except Exception:  # the SDK would interrupt the main thread
            logger.exception("error handling Arvados event %s", event.get("id"))

    endpoint = api._rootDesc.get("websocketUrl")
    if not endpoint:
        raise ArvadosSetupError("the cluster advertises no websocket endpoint")
    return PatientEventClient(f"{endpoint}?api_token={api.api_token}", ws_filters(event_types), deliver)


def missing_image_message(image: str, what: str) -> str:
    """One line saying that ``image`` is not in Keep, and how to put it there."""
    from .images import upload_hint  # noqa: PLC0415
    repo, _, tag = image.partition(":")
    build = upload_hint(image)
    return (f"{what} {image} not found in Keep on {api_host()}: upload it with "
            f"`arv-keepdocker {repo} {tag or 'latest'}`" + (f" (or build and store it: `{build}`)" if build else ""))


_clients: dict[tuple[str, str], Any] = {}
_lock = threading.Lock()


def api_host() -> str:
    import arvados.config

    return os.environ.get("ARVADOS_API_HOST") or arvados.config.get("ARVADOS_API_HOST", "")


# Set (in the leader's environment, inherited by its local job processes and given to workers) once
# the leader's first contact succeeded: from then on even connecting rides out an outage.
STARTED_ENV = "TOIL_ARVADOS_STARTED"


def started() -> bool:
    """Whether this process belongs to a running workflow (not a leader's very first contact)."""
    return bool(os.environ.get(STARTED_ENV))


def mark_started() -> None:
    os.environ[STARTED_ENV] = "1"


def mark_starting() -> None:
    """A leader starting: its first contact fails fast even if this process inherited the mark
    (from a shell, a test runner or a job of another workflow)."""
    os.environ.pop(STARTED_ENV, None)


def connect() -> Any:
    """A thread-safe SDK client for the configured cluster (cached per host and token).

    Fails fast (one line, ~10 s) at a leader's first contact; rides out an outage in processes
    of a running workflow (:func:`started`)."""
    import arvados
    import arvados.config

    host = api_host()
    token = os.environ.get("ARVADOS_API_TOKEN") or arvados.config.get("ARVADOS_API_TOKEN", "")
    if not host or not token:
        raise ArvadosSetupError(
            "no Arvados credentials: set ARVADOS_API_HOST and ARVADOS_API_TOKEN (for the local cluster: "
            "eval \"$(toil-arvados cluster env)\")")
    key = (host, token)
    with _lock:
        client = _clients.get(key)
        if client is None:
            insecure = (os.environ.get("ARVADOS_API_HOST_INSECURE")
                        or arvados.config.get("ARVADOS_API_HOST_INSECURE", "")).lower() in ("1", "true", "yes")
            def build() -> Any:
                return arvados.api("v1", host=host, token=token, insecure=insecure, num_retries=CONNECT_RETRIES)
            try:
                client = retrying(build, "connect", OUTAGE_BUDGET if started() else 0.0)
            except Exception as e:
                raise ArvadosSetupError(describe(e, f"cannot reach the Arvados API at {host}")) from None
            _full_retries(client)
            client = _clients[key] = PatientClient(client)
    return client


def _outage_budget() -> float:
    """How long a call of this process waits out an outage: the full budget in a started
    workflow, nothing beyond one attempt at start-up (fail fast)."""
    return OUTAGE_BUDGET if started() else 0.0


class PatientClient:
    """The SDK client, with every ``execute()`` riding out an outage once the workflow started.

    Code that only knows the SDK (collections, the Keep job store, ``list_images_in_arv``) gets
    the outage policy without change: a resource method's request retries connection errors and
    5xx through :func:`retrying` — for up to :data:`OUTAGE_BUDGET` in a started workflow
    (:func:`started`), not at all beyond the SDK's own retries before (fail fast at start-up).
    Its ``keep`` is a :class:`PatientKeepClient`, so Keep block transfers do the same.
    Creates whose repetition matters go through :func:`create_request`, which unwraps it.
    Everything else (``api_token``, ...) is the SDK client's own.
    """

    def __init__(self, client: Any) -> None:
        self._client = client
        self._resources = set((getattr(client, "_rootDesc", None) or {}).get("resources", {}))
        self._keep: PatientKeepClient | None = None
        # googleapiclient builds a resource object (every method, from the discovery document)
        # on each ``api.collections()``: about a millisecond, a tenth of the leader's CPU at
        # scale. One per resource per thread is kept (they are not thread-safe; the SDK's
        # client is already one per thread underneath).
        self._local = threading.local()

    @property
    def keep(self) -> "PatientKeepClient":
        if self._keep is None:
            self._keep = PatientKeepClient(self._client.keep)
        return self._keep

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if name not in self._resources:
            return attr
        return lambda *args, **kwargs: self._resource(name, attr, args, kwargs)

    def _resource(self, name: str, make: Any, args: tuple, kwargs: dict) -> "_PatientResource":
        if args or kwargs:
            return _PatientResource(make(*args, **kwargs), name)
        cache = self._local.__dict__.setdefault("resources", {})
        resource = cache.get(name)
        if resource is None:
            resource = cache[name] = _PatientResource(make(), name)
        return resource


class _PatientResource:
    def __init__(self, resource: Any, name: str) -> None:
        self._resource, self._name = resource, name

    def __getattr__(self, method: str) -> Any:
        attr = getattr(self._resource, method)
        if not callable(attr):
            return attr

        def request(*args: Any, **kwargs: Any) -> Any:
            req = attr(*args, **kwargs)
            return _PatientRequest(req, f"{self._name}.{method}") if hasattr(req, "execute") else req
        return request


class _PatientRequest:
    def __init__(self, request: Any, what: str) -> None:
        self._request, self._what = request, what

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        return retrying(lambda: self._request.execute(*args, **kwargs), self._what, _outage_budget())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)


class PatientKeepClient:
    """The SDK's Keep client, with block reads and writes riding out a Keep (or API) outage.

    The SDK's own loop (``num_retries``, backoff from 2 s) gives up after about 4 minutes at the
    job store's setting and stretches any budget of ours; instead each transfer here is one
    attempt of the SDK client (every Keep service tried once), repeated by :func:`retrying` —
    the same backoff and :data:`OUTAGE_BUDGET` as API calls. At start-up (before
    :func:`started`) a transfer gets the SDK's short fail-fast retries only. A block that is not
    there (404) fails at once. Everything else (block cache, prefetch...) is the SDK client's.
    """

    def __init__(self, keep: Any) -> None:
        self._keep = keep

    def get(self, locator: str, **kwargs: Any) -> Any:
        return self._transfer(self._keep.get, f"Keep read {_block_name(locator)}", locator, **kwargs)

    def head(self, locator: str, **kwargs: Any) -> Any:
        return self._transfer(self._keep.head, f"Keep check {_block_name(locator)}", locator, **kwargs)

    def put(self, data: Any, **kwargs: Any) -> Any:
        return self._transfer(self._keep.put, "Keep write", data, **kwargs)

    def _transfer(self, method: Callable[..., T], what: str, *args: Any, **kwargs: Any) -> T:
        kwargs["num_retries"] = 0 if started() else CONNECT_RETRIES
        return retrying(lambda: method(*args, **kwargs), what, _outage_budget())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._keep, name)


def patient_keep(keep: Any) -> PatientKeepClient:
    """``keep`` (an SDK KeepClient made with its own options) under the gateway's outage policy."""
    return keep if isinstance(keep, PatientKeepClient) else PatientKeepClient(keep)


def _block_name(locator: str) -> str:
    """A block's hash, for logs: the permission signature in a locator is a credential."""
    return str(locator).split("+", 1)[0]


def unwrapped(obj: Any) -> Any:
    """The SDK's own client or request behind a patient one."""
    if isinstance(obj, _PatientRequest):
        return obj._request
    if isinstance(obj, PatientClient):
        return obj._client
    if isinstance(obj, PatientKeepClient):
        return obj._keep
    return obj


def _full_retries(client: Any) -> None:
    """Once the host answered, give every later call (in any thread) the full retry budget.

    ``arvados.api`` builds this thread's client at once and other threads' clients lazily from
    the same keyword arguments; the SDK's retry wrapper uses the larger of a call's own
    ``num_retries`` and the HTTP object's, so raising both is enough.
    """
    kwargs = getattr(client, "_api_kwargs", None)
    if isinstance(kwargs, dict):
        kwargs["num_retries"] = max(int(kwargs.get("num_retries") or 0), NUM_RETRIES)
    http = getattr(getattr(getattr(client, "local", None), "api", None), "_http", None)
    if http is not None and hasattr(http, "num_retries"):
        http.num_retries = max(int(http.num_retries or 0), NUM_RETRIES)


def describe(error: BaseException, context: str) -> str:
    """A one-line description of an SDK or HTTP error, with any token scrubbed out."""
    status = getattr(getattr(error, "resp", None), "status", None)
    detail = ""
    content = getattr(error, "content", None)
    if content:
        try:
            detail = "; ".join(json.loads(content.decode("utf-8", "replace"))["errors"])
        except (ValueError, KeyError, TypeError, AttributeError):
            detail = ""
    if not detail:
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
    hint = ""
    if status == 401:
        hint = ": check ARVADOS_API_TOKEN (it is missing, wrong or expired)"
    elif status == 403:
        hint = ": the token lacks permission for this"
    elif isinstance(error, ssl.SSLCertVerificationError):  # the SDK re-raises it with its own message
        hint = (": the cluster's TLS certificate is not trusted here (set SSL_CERT_FILE to a bundle with "
                "its CA, for the local cluster `eval \"$(toil-arvados cluster env)\"`; or, to skip the check, "
                "ARVADOS_API_HOST_INSECURE=1)")
    elif status is None and error_kind(error) == RETRYABLE:
        hint = ": check ARVADOS_API_HOST and that the cluster is up"
    return scrub(f"{context}: {detail}{hint}")


def scrub(text: str) -> str:
    """Remove the API token (and its secret part) from text bound for logs or errors."""
    token = os.environ.get("ARVADOS_API_TOKEN", "")
    for secret in {token, token.split("/")[-1] if token.startswith("v2/") else ""}:
        if secret and len(secret) > 8:
            text = text.replace(secret, "<token>")
    return text


def check_connection(api: Any) -> dict:
    """The current user, or a clear error for a bad token / unreachable host."""
    try:
        return call(lambda: unwrapped(api).users().current(), "check the token",
                    OUTAGE_BUDGET if started() else 0.0)
    except Exception as e:
        raise ArvadosSetupError(describe(e, f"cannot use the Arvados API at {api_host()}")) from None


def resolve_project(api: Any, project_uuid: str | None, user: dict) -> str:
    """The project to own requests and collections: given, or the user's home project."""
    if not project_uuid:
        return user["uuid"]
    if project_uuid == user["uuid"]:
        return project_uuid
    try:
        group = api.groups().get(uuid=project_uuid).execute()
    except Exception as e:
        status = getattr(getattr(e, "resp", None), "status", None)
        if status in (404, 422):
            raise ArvadosSetupError(
                f"project {project_uuid} not found on {api_host()}: check --arvadosProject "
                "(list projects with `arv group list` or create one)") from None
        raise ArvadosSetupError(describe(e, f"cannot look up project {project_uuid}")) from None
    return check_project_group(group)


def check_project_group(group: dict) -> str:
    """The group's uuid if it can own requests; a filter group or role cannot (Arvados refuses
    objects owned by them), so say so in one line before anything is submitted."""
    kind = group.get("group_class")
    if kind == "filter":
        raise ArvadosSetupError(f"{group['uuid']} is a filter group (a saved search), which cannot own "
                                "container requests: give a project UUID to --arvadosProject")
    if kind != "project":
        raise ArvadosSetupError(f"{group['uuid']} is a {kind} group, not a project: "
                                "give a project UUID to --arvadosProject")
    if group.get("frozen_by_uuid"):
        raise ArvadosSetupError(f"project {group['uuid']} is frozen (read-only, by {group['frozen_by_uuid']}): "
                                "give another project to --arvadosProject, or unfreeze it")
    return str(group["uuid"])


def image_pdh(api: Any, image: str) -> str | None:
    """The portable data hash of ``image`` (``repo:tag`` or a PDH) in Keep, as arv-keepdocker
    resolves it (newest first); None when it is not there."""
    from arvados.commands.keepdocker import list_images_in_arv  # the SDK's own image lookup

    repo, _, tag = image.partition(":")
    try:
        if _looks_like_pdh(image):
            found = api.collections().list(filters=[["portable_data_hash", "=", image]], limit=1,
                                           select=["uuid"]).execute()["items"]
            return image if found else None
        found = list_images_in_arv(api, NUM_RETRIES, repo, tag or "latest")
        if not found:
            return None
        return str(api.collections().get(uuid=found[0][0]).execute()["portable_data_hash"])
    except Exception as e:
        raise ArvadosSetupError(describe(e, f"cannot look up image {image}")) from None


def image_exists(api: Any, image: str) -> bool:
    """Whether ``image`` (``repo:tag`` or a portable data hash) is in Keep, as arv-keepdocker sees it."""
    return image_pdh(api, image) is not None


def check_image(api: Any, image: str) -> str:
    """Fail early, with the fix, when the worker image is not in Keep; else its portable data hash."""
    pdh = image_pdh(api, image)
    if pdh is None:
        raise ArvadosSetupError(missing_image_message(image, "worker image") + ", or choose another with "
                                "--arvadosWorkerImage")
    return pdh


def _looks_like_pdh(value: str) -> bool:
    head, _, size = value.partition("+")
    return len(head) == 32 and size.isdigit()


def cluster_config(api: Any) -> dict:
    """The cluster's exported config (``GET /arvados/v1/config``), {} when not offered."""
    try:
        return api.configs().get().execute()
    except Exception as e:
        logger.debug("cluster config unavailable: %s", scrub(str(e)))
        return {}
