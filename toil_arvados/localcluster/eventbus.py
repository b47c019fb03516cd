"""Websocket event bus speaking the Arvados ``/websocket`` (v0) protocol.

``arvados.events.EventClient`` (and therefore ``arvados.events.subscribe``, arv-mount, and
anything else following the Arvados event stream) connects to the ``websocketUrl`` from the
discovery document with ``?api_token=...``, sends JSON messages like::

    {"method": "subscribe", "filters": [["object_uuid", "in", [...]]], "last_log_id": 12}
    {"method": "unsubscribe", "filters": [...]}

and passes every JSON message it receives to its callback. This module reproduces what the
Arvados websocket server (``services/ws``, v0 session) sends back:

* ``{"status":200}`` after each accepted ``subscribe`` and each ``unsubscribe`` that named an
  existing subscription; ``{"status":400,"message":...}`` for anything else (bad JSON, unknown
  method, malformed filters, unsubscribing a filter that is not subscribed).
* one message per log record that matches *any* of the connection's subscriptions and that the
  user may read::

    {"msgID": 1, "id": 42, "uuid": "<log uuid>", "object_uuid": ..., "object_owner_uuid": ...,
     "object_kind": "arvados#collection", "event_type": "update", "event_at": ...,
     "properties": {"old_attributes": {...}, "new_attributes": {...}}}

  ``msgID`` counts messages per connection from 1. As in the Go server, old/new attributes are
  trimmed to a few keys (state, name, owner_uuid, ...) so that big objects (manifests!) do not
  flood clients; log records whose properties carry ``text`` are sent with properties verbatim.
* ``{}`` as a keepalive when the connection has been idle for ``ping_interval`` seconds.
* On ``subscribe`` with a non-zero ``last_log_id``, matching logs with ``id > last_log_id``
  (created in the last 10 minutes) are replayed in id order before live events for that
  subscription.

Differences from the Go server, each chosen because it serves the SDK better:

* A missing/invalid token is refused during the handshake with HTTP 401 instead of accepting
  the socket and silently dropping every event. The SDK's ``EventClient`` constructor then
  raises, and ``arvados.events.subscribe`` falls back to polling (which reports the 401 clearly).
  Accepting and then closing (as the old Rails server did) would make the SDK thread retry 25
  times and finally ``interrupt_main()`` the caller.
* A log already sent on this connection is not sent again by a later replay.
* A 400 reply carries a ``message`` saying what was wrong (the Go server sends the status only).
* Subscribing and replaying happen in one step on the event loop, so no event can be lost or
  duplicated between the replay and the live stream.

A slow client cannot stall the server: each connection has its own bounded queue of live
events, filled synchronously by the store listener and drained by a per-connection writer
task. When the queue overflows the connection is closed (as the Go server terminates it with
"client queue full"); the SDK reconnects and catches up via ``last_log_id``.

Filters are honoured exactly as ``session_v0.go`` (``v0subscribe.prepare``) honours them: only
``["event_type", "in", [strings]]`` and ``["created_at", op, "<RFC 3339 time>"]`` with op one of
``>= <= > < =`` are applied; every other filter (``object_uuid``, ``is_a``, ``event_type =``,
an unparseable time...) is ignored, so its events are delivered anyway and clients filter
them themselves. A filter is any JSON array (Go decodes it into ``[3]interface{}``: missing
elements are null, extra ones dropped); a non-array filter is a bad message (400). Replay
(``last_log_id``) covers only logs created in the last 10 minutes, as the Go server's query.
"""
from __future__ import annotations

import asyncio
import collections
import datetime
import json
import logging
import re
import time
from typing import Any, Callable, Iterable, Optional

from aiohttp import WSCloseCode, WSMsgType, web

from .uuids import kind_of_table, table_of

logger = logging.getLogger(__name__)

#: Keys of properties.old_attributes / new_attributes that the Go server forwards to clients.
SEND_OBJECT_ATTRIBUTES: tuple[str, ...] = (
    "is_trashed",
    "name",
    "owner_uuid",
    "portable_data_hash",
    "requesting_container_uuid",
    "state",
)

STATUS_OK = json.dumps({"status": 200}, separators=(",", ":"))
KEEPALIVE = "{}"
MAX_FRAME = 2 << 20  # the Go server's read buffer; larger frames end the session

# authenticate(token) returns an opaque principal (a user UUID, or e.g. an auth.Caller) or None;
# the bus hands that same principal back to can_read(principal, log_record).
Authenticate = Callable[[str], Any]
CanRead = Callable[[Any, dict], bool]


#: How far back a replay reaches (session_v0.go's sendOldEvents: created_at > now - 10 minutes).
REPLAY_WINDOW_NS = 10 * 60 * 10**9
_RFC3339 = re.compile(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})$")


def parse_rfc3339_ns(text: Any) -> int | None:
    """Go's ``time.Parse(time.RFC3339Nano, s)`` as nanoseconds since the epoch; None if it fails."""
    m = _RFC3339.match(text) if isinstance(text, str) else None
    if not m:
        return None
    y, mo, d, h, mi, sec, frac, zone = m.groups()
    try:
        dt = datetime.datetime(int(y), int(mo), int(d), int(h), int(mi), int(sec), tzinfo=datetime.timezone.utc)
    except ValueError:
        return None
    offset = 0
    if zone != "Z":
        offset = (int(zone[1:3]) * 60 + int(zone[4:6])) * 60 * (1 if zone[0] == "+" else -1)
    seconds = int(dt.timestamp()) - offset
    return seconds * 10**9 + int((frac or "").ljust(9, "0") or 0)


_TIME_OPS: dict[str, Callable[[int, int], bool]] = {
    ">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b,
    "<": lambda a, b: a < b, "=": lambda a, b: a == b,
}


def prepare_filters(filters: list) -> list[Callable[[dict], bool]]:
    """The tests ``session_v0.go`` derives from a subscription's filters; all others ignored."""
    funcs: list[Callable[[dict], bool]] = []
    for f in filters:
        attr, op, operand = f
        if attr == "event_type" and op == "in" and isinstance(operand, list):
            wanted = {v for v in operand if isinstance(v, str)}
            funcs.append(lambda log, wanted=wanted: log.get("event_type") in wanted)
        elif attr == "created_at" and isinstance(op, str) and op in _TIME_OPS:
            t = parse_rfc3339_ns(operand)
            if t is not None:
                funcs.append(lambda log, t=t, cmp=_TIME_OPS[op]: _created_cmp(log, t, cmp))
    return funcs


def _created_cmp(log: dict, t: int, cmp: Callable[[int, int], bool]) -> bool:
    created = parse_rfc3339_ns(log.get("created_at"))
    return created is not None and cmp(created, t)


def object_kind(object_uuid: Optional[str]) -> str:
    """Kind of the logged object, or ``""`` like the Go server when the UUID is not ours."""
    table = table_of(object_uuid or "")
    return kind_of_table(table) if table else ""


def event_message(log: dict, msg_id: int,
                  send_attributes: Optional[Iterable[str]] = SEND_OBJECT_ATTRIBUTES) -> dict:
    """The JSON object the Go ``/websocket`` v0 session sends for one log record.

    ``send_attributes=None`` forwards old/new attributes untrimmed.
    """
    msg: dict[str, Any] = {
        "msgID": msg_id,
        "id": log.get("id"),
        "uuid": log.get("uuid"),
        "object_uuid": log.get("object_uuid"),
        "object_owner_uuid": log.get("object_owner_uuid"),
        "object_kind": object_kind(log.get("object_uuid")),
        "event_type": log.get("event_type"),
        "event_at": log.get("event_at"),
    }
    props = log.get("properties")
    if isinstance(props, dict) and props.get("text") is not None:
        msg["properties"] = props
    else:
        props = props if isinstance(props, dict) else {}
        out: dict[str, dict] = {}
        for key in ("old_attributes", "new_attributes"):
            attrs = props.get(key)
            if not isinstance(attrs, dict):
                continue  # e.g. old_attributes of a create: the Go server omits the key
            if send_attributes is None:
                out[key] = dict(attrs)
            else:
                out[key] = {k: attrs[k] for k in send_attributes if k in attrs}
        msg["properties"] = out
    return msg


class _BadRequest(Exception):
    """A client message we answer with ``{"status":400}``."""


class _Subscription:
    """One ``subscribe`` request: its filters exactly as sent (unsubscribe compares them) and
    the tests the Go server would apply."""

    __slots__ = ("filters", "funcs")

    def __init__(self, filters: list) -> None:
        self.filters = filters
        self.funcs = prepare_filters(filters)

    def match(self, rec: dict) -> bool:
        return all(f(rec) for f in self.funcs)


class _Connection:
    """State of one websocket client: subscriptions, outgoing queue, writer task."""

    def __init__(self, bus: "EventBus", ws: web.WebSocketResponse, request: web.Request,
                 principal: Any) -> None:
        self.bus = bus
        self.ws = ws
        self.request = request
        self.principal = principal
        self.subscriptions: list[_Subscription] = []
        # Items are ("raw", str) | ("live", log) | ("replay", log). Only live items count toward
        # the bound: a replay backlog is finite, and counting it would make the first live event
        # after a big replay kill the connection (the Go server throttles replay for that reason).
        self.outq: collections.deque[tuple[str, Any]] = collections.deque()
        self.live_pending = 0
        self.wakeup = asyncio.Event()
        self.msg_id = 0
        self.sent_ids: set[int] = set()
        self.sent_order: collections.deque[int] = collections.deque()
        self.closing = False
        self.writer: Optional[asyncio.Task] = None

    # -- queueing (all on the event loop thread, never awaits) ---------------------------------

    def _push(self, kind: str, item: Any) -> None:
        self.outq.append((kind, item))
        self.wakeup.set()

    def send_raw(self, text: str) -> None:
        self._push("raw", text)

    def offer_live(self, log: dict) -> None:
        """Queue a freshly written log if any subscription matches; drop us if we are too slow."""
        if self.closing or not any(s.match(log) for s in self.subscriptions):
            return
        if log.get("id") in self.sent_ids or not self._readable(log):
            return  # already sent by a replay racing with a write from another thread
        if self.live_pending >= self.bus.queue_size:
            logger.warning("websocket client %s: client queue full, closing connection",
                           self.request.remote)
            self.abort(WSCloseCode.TRY_AGAIN_LATER, "client queue full")
            return
        self.live_pending += 1
        self._remember(log.get("id"))
        self._push("live", log)

    def _readable(self, log: dict) -> bool:
        """Permission check, on the owner for deletes (the deleted object cannot be looked up).

        The Go server checks a delete against ``object_owner_uuid``; we express that by asking
        ``can_read`` about a copy of the log whose ``object_uuid`` is the owner, so a can_read
        that resolves ``object_uuid`` in the store works unchanged.
        """
        if log.get("event_type") == "delete" and log.get("object_owner_uuid"):
            log = {**log, "object_uuid": log["object_owner_uuid"]}
        try:
            return bool(self.bus.can_read(self.principal, log))
        except Exception:
            logger.exception("can_read failed for log %s", log.get("id"))
            return False

    def _remember(self, log_id: Any) -> None:
        """Track sent ids (bounded) so a later replay does not resend them."""
        if not isinstance(log_id, int) or log_id in self.sent_ids:
            return
        self.sent_ids.add(log_id)
        self.sent_order.append(log_id)
        while len(self.sent_order) > self.bus.dedupe_window:
            self.sent_ids.discard(self.sent_order.popleft())

    # -- client messages -------------------------------------------------------------------------

    def receive(self, text: str) -> None:
        """Handle one client frame; synchronous so subscribe+replay is atomic w.r.t. live events."""
        try:
            try:
                msg = json.loads(text)
            except ValueError as e:
                raise _BadRequest(f"invalid JSON: {e}") from None
            if not isinstance(msg, dict):
                raise _BadRequest("message must be a JSON object")
            method = msg.get("method")
            filters = _validate_filters(msg.get("filters"))
            if method == "subscribe":
                self._subscribe(filters, msg.get("last_log_id"))
            elif method == "unsubscribe":
                self._unsubscribe(filters)
            else:
                raise _BadRequest(f"unknown method {method!r}")
        except _BadRequest as e:
            logger.info("websocket client %s: bad message %.200r: %s", self.request.remote, text, e)
            self.send_raw(json.dumps({"status": 400, "message": str(e)}, separators=(",", ":")))

    def _subscribe(self, filters: list, last_log_id: Any) -> None:
        if last_log_id is not None and (isinstance(last_log_id, bool)
                                        or not isinstance(last_log_id, int)):
            raise _BadRequest("last_log_id must be an integer")
        sub = _Subscription(filters)
        self.send_raw(STATUS_OK)
        if last_log_id:  # the Go server replays only for a non-zero last_log_id
            oldest = time.time_ns() - self.bus.replay_window_ns
            for log in self.bus.store.logs_after(last_log_id):
                if log.get("id") in self.sent_ids:
                    continue
                created = parse_rfc3339_ns(log.get("created_at"))
                if created is not None and created <= oldest:
                    continue
                if sub.match(log) and self._readable(log):
                    self._push("replay", log)
                    self._remember(log.get("id"))
        self.subscriptions.append(sub)

    def _unsubscribe(self, filters: list) -> None:
        for i, sub in enumerate(self.subscriptions):
            if sub.filters == filters:
                del self.subscriptions[i]
                self.send_raw(STATUS_OK)
                return
        raise _BadRequest("filter not subscribed")

    # -- writing ---------------------------------------------------------------------------------

    async def write_loop(self) -> None:
        """Drain the queue to the socket; sends ``{}`` when idle so dead peers get noticed."""
        ws = self.ws
        while not ws.closed:
            if not self.outq:
                self.wakeup.clear()
                try:
                    await asyncio.wait_for(self.wakeup.wait(), self.bus.ping_interval)
                except asyncio.TimeoutError:
                    if not self.outq:
                        self.outq.append(("raw", KEEPALIVE))
                continue
            kind, item = self.outq.popleft()
            if kind == "raw":
                text = item
            else:
                if kind == "live":
                    self.live_pending -= 1
                self.msg_id += 1
                text = json.dumps(event_message(item, self.msg_id, self.bus.send_attributes),
                                  separators=(",", ":"), default=str)
            try:
                await asyncio.wait_for(ws.send_str(text), self.bus.send_timeout)
            except (ConnectionError, RuntimeError, asyncio.TimeoutError) as e:
                logger.info("websocket client %s: write failed: %r", self.request.remote, e)
                self.abort(WSCloseCode.GOING_AWAY, "write failed")
                return

    def abort(self, code: int, reason: str) -> None:
        """Close the connection without blocking the caller (which may be the store listener)."""
        if self.closing:
            return
        self.closing = True
        self.outq.clear()
        self.live_pending = 0
        if self.writer is not None and self.writer is not asyncio.current_task():
            self.writer.cancel()
        asyncio.get_running_loop().create_task(self._close(code, reason))

    async def _close(self, code: int, reason: str) -> None:
        try:
            await asyncio.wait_for(self.ws.close(code=code, message=reason.encode()), 2)
        except Exception:
            transport = self.request.transport
            if transport is not None:
                transport.abort()


def _validate_filters(filters: Any) -> list:
    """What Go's json.Unmarshal into ``[]v0filter`` accepts: null, or a list whose items are
    arrays (or null). Anything else makes the whole message a 400."""
    if filters is None:
        return []
    if not isinstance(filters, list):
        raise _BadRequest("filters must be a list")
    for f in filters:
        if not (f is None or isinstance(f, list)):
            raise _BadRequest(f"invalid filter {f!r}: expected [attribute, operator, operand]")
    return [(list(f or []) + [None, None, None])[:3] for f in filters]


class EventBus:
    """Fan log records out to websocket subscribers, Arvados ``/websocket`` v0 style.

    ``store`` must provide ``add_listener(fn)`` and ``logs_after(last_id)``. ``authenticate``
    maps an API token to a principal (user UUID, ``auth.Caller``...) or None/falsy;
    ``can_read(principal, log_record)`` decides whether that principal may see an event. For
    ``delete`` events ``can_read`` gets a copy of the log with ``object_uuid`` replaced by
    ``object_owner_uuid`` (see ``_Connection._readable``).
    """

    def __init__(self, store: Any, authenticate: Authenticate, can_read: CanRead, *,
                 queue_size: int = 64, ping_interval: float = 60.0, send_timeout: float = 60.0,
                 dedupe_window: int = 10000, replay_window_ns: int = REPLAY_WINDOW_NS,
                 send_attributes: Optional[Iterable[str]] = SEND_OBJECT_ATTRIBUTES) -> None:
        """Defaults follow Arvados config: WebsocketClientEventQueue=64, SendTimeout=60s."""
        self.store = store
        self.authenticate = authenticate
        self.can_read = can_read
        self.queue_size = queue_size
        self.ping_interval = ping_interval
        self.send_timeout = send_timeout
        self.dedupe_window = dedupe_window
        self.replay_window_ns = replay_window_ns
        self.send_attributes = tuple(send_attributes) if send_attributes is not None else None
        self.connections: set[_Connection] = set()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        store.add_listener(self.publish)

    # -- wiring ----------------------------------------------------------------------------------

    def route(self, app: web.Application, path: str = "/websocket") -> None:
        """Mount the websocket endpoint and close sockets on shutdown (else aiohttp waits)."""
        app.router.add_get(path, self.handle)
        app.on_shutdown.append(self._on_shutdown)

    async def _on_shutdown(self, _app: web.Application) -> None:
        await self.close_all()

    async def close_all(self) -> None:
        """Close every client connection (server shutdown)."""
        for conn in list(self.connections):
            conn.abort(WSCloseCode.GOING_AWAY, "server shutdown")
        await asyncio.sleep(0)

    # -- events ----------------------------------------------------------------------------------

    def publish(self, log: dict) -> None:
        """Store listener: queue ``log`` for every interested connection, without blocking.

        Meant to run on the event loop thread; a call from another thread is handed over to the
        loop so connection state is only ever touched by one thread.
        """
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is not loop:
                loop.call_soon_threadsafe(self.publish, log)
                return
        if not self.connections:
            return
        for conn in list(self.connections):
            conn.offer_live(log)

    # -- HTTP handler ----------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """``GET /websocket?api_token=...``: authenticate, upgrade, then run the v0 session."""
        self._loop = asyncio.get_running_loop()
        token = request.query.get("api_token", "")
        principal = None
        if token:
            try:
                principal = self.authenticate(token)
            except Exception:
                logger.exception("websocket token check failed")
        if not principal:
            logger.info("websocket from %s refused: invalid or missing api_token", request.remote)
            refusal = web.json_response({"errors": ["Valid API token required"], "status": 401}, status=401)
            # Close the connection after the refusal: the SDK's websockets client, once its handshake
            # failed, waits for the server to close before it raises (a kept-alive connection hangs it).
            refusal.force_close()
            return refusal

        ws = web.WebSocketResponse(max_msg_size=MAX_FRAME, autoping=True)
        await ws.prepare(request)
        conn = _Connection(self, ws, request, principal)
        conn.writer = asyncio.get_running_loop().create_task(conn.write_loop())
        self.connections.add(conn)
        logger.debug("websocket client %s connected as %s", request.remote,
                     getattr(principal, "uuid", principal))
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    conn.receive(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    conn.receive(msg.data.decode("utf-8", "replace"))
                elif msg.type == WSMsgType.ERROR:
                    logger.info("websocket client %s: read error %r", request.remote,
                                ws.exception())
                    break
        finally:
            self.connections.discard(conn)
            conn.closing = True
            if conn.writer is not None:
                conn.writer.cancel()
            if not ws.closed:
                await ws.close()
            logger.debug("websocket client %s disconnected", request.remote)
        return ws
