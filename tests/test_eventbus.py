"""Tests for the websocket event bus, driven by the real ``arvados.events.EventClient``.

The bus runs in an aiohttp app on a loopback port behind a throwaway self-signed certificate
(the SDK refuses ``ws://`` URLs because it always passes an SSL context), fed by a fake store.
Every wait is a queue poll with a deadline, so the tests also check delivery latency.
"""
from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import queue
import ssl
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import arvados.events
import pytest
import websockets.exceptions
import websockets.sync.client as ws_client
from aiohttp import web

from toil_arvados.localcluster import eventbus
from toil_arvados.localcluster.eventbus import EventBus

USER = "zzzzz-tpzed-000000000000001"
OTHER = "zzzzz-tpzed-000000000000002"
TOKENS = {"goodtoken": USER}
COLL_A = "zzzzz-4zz18-aaaaaaaaaaaaaaa"
COLL_B = "zzzzz-4zz18-bbbbbbbbbbbbbbb"
CONTAINER = "zzzzz-dz642-ccccccccccccccc"
PROJECT = "zzzzz-j7d0g-ppppppppppppppp"
SECRET_PROJECT = "zzzzz-j7d0g-sssssssssssssss"
DEADLINE = 1.0  # seconds: every event must arrive well within this


# -- fakes ------------------------------------------------------------------------------------


class FakeStore:
    """Just the store surface the bus uses: listeners and ``logs_after``."""

    def __init__(self) -> None:
        self.logs: list[dict] = []
        self.listeners: list[Callable[[dict], None]] = []
        self.next_id = 1

    def add_listener(self, fn: Callable[[dict], None]) -> None:
        self.listeners.append(fn)

    def logs_after(self, last_id: int) -> list[dict]:
        return [log for log in self.logs if log["id"] > last_id]

    def write(self, object_uuid: str, event_type: str = "update", owner: str = PROJECT,
              new: Optional[dict] = None, old: Optional[dict] = None, **extra: Any) -> dict:
        """Append a log record and notify listeners synchronously, like the real store."""
        log_id = self.next_id
        self.next_id += 1
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        log = {
            "id": log_id,
            "uuid": f"zzzzz-57u5n-{log_id:015d}",
            "kind": "arvados#log",
            "owner_uuid": USER,
            "object_uuid": object_uuid,
            "object_owner_uuid": owner,
            "event_type": event_type,
            "event_at": now,
            "summary": f"{event_type} of {object_uuid}",
            "properties": {"old_attributes": old, "new_attributes": new},
            "created_at": now,
            "modified_at": now,
            **extra,
        }
        self.logs.append(log)
        for fn in self.listeners:
            fn(log)
        return log


def can_read(user_uuid: str, log: dict) -> bool:
    return user_uuid == USER and log.get("object_owner_uuid") != SECRET_PROJECT


# -- server harness ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (the client runs with insecure=True)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    d = tmp_path_factory.mktemp("tls")
    (d / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                  serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    return d / "cert.pem", d / "key.pem"


class Server:
    """An aiohttp app with the bus, running on its own event loop thread."""

    def __init__(self, tls_files: tuple[Path, Path], can_read: Callable[[Any, dict], bool] = can_read,
                 **bus_kwargs: Any) -> None:
        self.store = FakeStore()
        self.bus = EventBus(self.store, TOKENS.get, can_read, **bus_kwargs)
        self.loop = asyncio.new_event_loop()
        self.ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ssl.load_cert_chain(*map(str, tls_files))
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.runner = self.call(self._start())

    async def _start(self) -> web.AppRunner:
        app = web.Application()
        self.bus.route(app)
        runner = web.AppRunner(app, shutdown_timeout=1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=self.ssl)
        await site.start()
        self.port = runner.addresses[0][1]
        return runner

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def url(self, token: Optional[str] = "goodtoken") -> str:
        base = f"wss://127.0.0.1:{self.port}/websocket"
        return f"{base}?api_token={token}" if token is not None else base

    def push(self, *args: Any, **kwargs: Any) -> dict:
        """Write a log on the loop thread (as the real API server does) and wait for it."""
        async def write() -> dict:
            return self.store.write(*args, **kwargs)
        return self.call(write())

    def push_many(self, specs: list[dict]) -> None:
        """Write several logs in one loop callback, so no writer runs in between."""
        async def write() -> None:
            for spec in specs:
                self.store.write(**spec)
        self.call(write())

    def stop(self) -> None:
        self.call(self.runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


@pytest.fixture
def make_server(tls_files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def make(**bus_kwargs: Any) -> Server:
        servers.append(Server(tls_files, **bus_kwargs))
        return servers[-1]

    yield make
    for s in servers:
        s.stop()


@pytest.fixture
def server(make_server: Callable[..., Server]) -> Server:
    return make_server()


class Client:
    """The real SDK EventClient, collecting messages in a queue."""

    def __init__(self, url: str, filters: Optional[list], last_log_id: Optional[int] = None) -> None:
        self.q: queue.Queue[dict] = queue.Queue()
        self.ec = arvados.events.EventClient(url, filters, self.q.put, last_log_id, insecure=True)

    def next(self, timeout: float = DEADLINE) -> dict:
        try:
            return self.q.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no message within {timeout}s") from None

    def expect_ack(self) -> None:
        assert self.next() == {"status": 200}

    def close(self) -> None:
        self.ec.close(timeout=1)


@pytest.fixture
def clients() -> Iterator[Callable[..., Client]]:
    made: list[Client] = []

    def make(*args: Any, **kwargs: Any) -> Client:
        made.append(Client(*args, **kwargs))
        return made[-1]

    yield make
    for c in made:
        c.close()


def raw_connect(server: Server, token: str = "goodtoken") -> ws_client.ClientConnection:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ws_client.connect(server.url(token), ssl=ctx, open_timeout=5)


def raw_recv(conn: ws_client.ClientConnection, timeout: float = DEADLINE) -> Any:
    return json.loads(conn.recv(timeout=timeout))


# -- tests ------------------------------------------------------------------------------------


def test_live_events_in_order_with_only_event_type_in_applied(server: Server,
                                                              clients: Callable[..., Client]) -> None:
    """session_v0.go applies ``event_type in``; the ``object_uuid`` filter is ignored (delivered)."""
    filters = [["object_uuid", "in", [COLL_A, CONTAINER]], ["event_type", "in", ["update"]]]
    c = clients(server.url(), filters)
    c.expect_ack()

    server.push(COLL_A, "create", new={"name": "a", "state": None})
    u1 = server.push(COLL_A, "update", old={"name": "a"},
                     new={"name": "b", "manifest_text": ". d41d8cd98f00b204e9800998ecf8427e+0 0:0:x\n",
                          "portable_data_hash": "d41d8cd98f00b204e9800998ecf8427e+0"})
    other = server.push(COLL_B, "update", new={"name": "other"})
    u2 = server.push(CONTAINER, "update", old={"state": "Queued"}, new={"state": "Running"})

    ev1 = c.next()
    assert ev1 == {
        "msgID": 1,
        "id": u1["id"],
        "uuid": u1["uuid"],
        "object_uuid": COLL_A,
        "object_owner_uuid": PROJECT,
        "object_kind": "arvados#collection",
        "event_type": "update",
        "event_at": u1["event_at"],
        "properties": {
            "old_attributes": {"name": "a"},
            "new_attributes": {"name": "b",
                               "portable_data_hash": "d41d8cd98f00b204e9800998ecf8427e+0"},
        },
    }
    assert c.ec.last_log_id >= u1["id"]  # the SDK records ids for reconnect replay
    assert c.next()["id"] == other["id"]  # not in object_uuid's list, sent anyway
    ev2 = c.next()
    assert (ev2["msgID"], ev2["id"], ev2["object_kind"]) == (3, u2["id"], "arvados#container")
    assert ev2["properties"]["new_attributes"] == {"state": "Running"}

    # The create was the only event held back: the next message is the next update.
    server.push(COLL_B, "delete")
    u3 = server.push(COLL_A, "update", new={"state": "x"})
    assert c.next()["id"] == u3["id"]


def test_property_filter_is_ignored_and_create_shape(server: Server, clients: Callable[..., Client]) -> None:
    c = clients(server.url(), [["properties.new_attributes.state", "=", "Complete"]])
    c.expect_ack()
    running = server.push(CONTAINER, "update", new={"state": "Running"})
    done = server.push(CONTAINER, "create", new={"state": "Complete"})
    assert c.next()["id"] == running["id"]  # session_v0.go does not evaluate property filters
    ev = c.next()
    assert ev["id"] == done["id"]
    # old_attributes is null on create; like the Go server we then omit the key
    assert ev["properties"] == {"new_attributes": {"state": "Complete"}}


def test_no_filters_gets_everything_readable(server: Server, clients: Callable[..., Client]) -> None:
    c = clients(server.url(), None)
    c.expect_ack()
    server.push(COLL_A, "update", owner=SECRET_PROJECT)  # can_read says no
    visible = server.push(COLL_B, "delete", old={"name": "gone"})
    ev = c.next()
    assert (ev["id"], ev["event_type"]) == (visible["id"], "delete")
    assert ev["properties"] == {"old_attributes": {"name": "gone"}}


def test_text_properties_are_sent_verbatim(server: Server, clients: Callable[..., Client]) -> None:
    c = clients(server.url(), [["event_type", "in", ["stderr"]]])
    c.expect_ack()
    log = server.call(_write_text(server.store))
    ev = c.next()
    assert ev["id"] == log["id"] and ev["properties"] == {"text": "hello\n"}
    assert ev["event_at"] is None


async def _write_text(store: FakeStore) -> dict:
    log_id = store.next_id
    store.next_id += 1
    log = {"id": log_id, "uuid": f"zzzzz-57u5n-{log_id:015d}", "object_uuid": CONTAINER,
           "object_owner_uuid": PROJECT, "event_type": "stderr", "event_at": None,
           "properties": {"text": "hello\n"}}
    store.logs.append(log)
    for fn in store.listeners:
        fn(log)
    return log


def test_replay_from_last_log_id_then_live(server: Server, clients: Callable[..., Client]) -> None:
    old = [server.push(COLL_A if i % 2 else COLL_B, "update", new={"name": str(i)}) for i in range(6)]
    filters = [["object_uuid", "=", COLL_A]]
    c = clients(server.url(), filters, last_log_id=old[1]["id"])
    c.expect_ack()
    want = [log["id"] for log in old[2:]]  # the object_uuid filter is not applied server-side
    got = [c.next()["id"] for _ in want]
    assert got == want
    live = server.push(COLL_A, "update")
    ev = c.next()
    assert ev["id"] == live["id"] and ev["msgID"] == len(want) + 1

    # Without last_log_id there is no replay: the first event is the next live one.
    c2 = clients(server.url(), filters)
    c2.expect_ack()
    live2 = server.push(COLL_A, "update")
    assert c2.next()["id"] == live2["id"]


def test_second_subscription_replay_does_not_resend(server: Server, clients: Callable[..., Client]) -> None:
    server.push(CONTAINER, "update")  # so that first["id"] - 1 is not 0 ("no replay")
    c = clients(server.url(), [["event_type", "in", ["create"]]])
    c.expect_ack()
    first = server.push(COLL_A, "create")
    assert c.next()["id"] == first["id"]
    other = server.push(COLL_B, "update")
    c.ec.subscribe([["event_type", "in", ["update", "create"]]], last_log_id=first["id"] - 1)
    c.expect_ack()
    # replay of the new subscription skips `first` (already sent) and yields `other`
    assert c.next()["id"] == other["id"]
    both = server.push(COLL_A, "create")  # matches both subscriptions: sent once
    after = server.push(COLL_B, "update")
    assert [c.next()["id"], c.next()["id"]] == [both["id"], after["id"]]


def test_bad_or_missing_token_is_refused(server: Server) -> None:
    for token in ("wrongtoken", "", None):
        with pytest.raises(websockets.exceptions.InvalidStatus) as exc:
            arvados.events.EventClient(server.url(token), [], lambda ev: None, insecure=True)
        assert exc.value.response.status_code == 401


def test_unsubscribe_stops_delivery(server: Server, clients: Callable[..., Client]) -> None:
    f_a = [["event_type", "in", ["create"]]]
    f_b = [["event_type", "in", ["update"]]]
    c = clients(server.url(), f_a)
    c.expect_ack()
    c.ec.subscribe(f_b)
    c.expect_ack()
    ea = server.push(COLL_A, "create")
    eb = server.push(COLL_B, "update")
    assert [c.next()["id"], c.next()["id"]] == [ea["id"], eb["id"]]

    c.ec.unsubscribe(f_a)
    c.expect_ack()
    server.push(COLL_A, "create")
    eb2 = server.push(COLL_B, "update")
    assert c.next()["id"] == eb2["id"]


def test_bad_messages_get_400(server: Server) -> None:
    with raw_connect(server) as conn:
        for msg in ("not json", '["a list"]', '{"method":"frobnicate","filters":[]}',
                    '{"method":"subscribe","filters":"event_type"}',
                    '{"method":"subscribe","filters":["not an array"]}',
                    '{"method":"subscribe","filters":[],"last_log_id":"7"}',
                    '{"method":"unsubscribe","filters":[["event_type","in",["update"]]]}'):
            conn.send(msg)
            reply = raw_recv(conn)
            assert reply["status"] == 400, msg
            assert reply["message"]
        conn.send('{"method":"subscribe","filters":[["event_type","in",["update"]]]}')
        assert raw_recv(conn) == {"status": 200}
        conn.send('{"method":"unsubscribe","filters":[["event_type","in",["update"]]]}')
        assert raw_recv(conn) == {"status": 200}
        # Go decodes each filter into [3]interface{}: short ones are padded, unknown operators
        # are not an error (the filter is just not applied).
        for msg in ('{"method":"subscribe","filters":[["only","two"]]}',
                    '{"method":"subscribe","filters":[["x","~~",1]]}'):
            conn.send(msg)
            assert raw_recv(conn) == {"status": 200}, msg
        conn.send('{"method":"unsubscribe","filters":[["only","two",null]]}')
        assert raw_recv(conn) == {"status": 200}


def test_keepalive_when_idle(make_server: Callable[..., Server]) -> None:
    server = make_server(ping_interval=0.2)
    with raw_connect(server) as conn:
        assert raw_recv(conn) == {}


def test_overflowing_client_is_disconnected(make_server: Callable[..., Server]) -> None:
    server = make_server(queue_size=3)
    with raw_connect(server) as conn:
        conn.send('{"method":"subscribe","filters":[]}')
        assert raw_recv(conn) == {"status": 200}
        # Ten events in one loop turn: the writer cannot drain in between, so the queue overflows.
        server.push_many([{"object_uuid": COLL_A} for _ in range(10)])
        with pytest.raises(websockets.exceptions.ConnectionClosed) as exc:
            while True:
                conn.recv(timeout=DEADLINE)
        assert exc.value.rcvd is not None and exc.value.rcvd.code == 1013
    assert not server.bus.connections
    # Other clients are unaffected: a fresh connection still works.
    with raw_connect(server) as conn:
        conn.send('{"method":"subscribe","filters":[]}')
        assert raw_recv(conn) == {"status": 200}
        ev = server.push(COLL_B)
        assert raw_recv(conn)["id"] == ev["id"]


def test_replay_backlog_larger_than_queue_is_not_an_overflow(make_server: Callable[..., Server],
                                                            clients: Callable[..., Client]) -> None:
    server = make_server(queue_size=2)
    old = [server.push(COLL_A) for _ in range(20)]
    c = clients(server.url(), [], last_log_id=old[0]["id"])
    c.expect_ack()
    live = server.push(COLL_A)
    ids = [c.next()["id"] for _ in range(20)]
    assert ids == [log["id"] for log in old[1:]] + [live["id"]]


def test_publish_from_another_thread(server: Server, clients: Callable[..., Client]) -> None:
    c = clients(server.url(), [])
    c.expect_ack()
    # The listener contract says loop thread, but a stray call from elsewhere must be safe.
    log = server.store.write(COLL_A)
    assert c.next()["id"] == log["id"]


def test_only_event_type_in_and_created_at_are_applied(server: Server, clients: Callable[..., Client]) -> None:
    """Everything session_v0.go's prepare() skips is delivered: other attributes, other
    operators (``event_type =``, ``is_a``), non-string list items, unparseable times."""
    ignored = [["object_uuid", "in", [COLL_A]], ["object_kind", "=", "arvados#collection"],
               ["event_type", "=", "delete"], ["object_uuid", "is_a", "arvados#container"],
               ["created_at", ">", "yesterday"], ["created_at", "~", "2000-01-01T00:00:00Z"]]
    c = clients(server.url(), ignored)
    c.expect_ack()
    sent = [server.push(COLL_B, "update"), server.push(CONTAINER, "create")]
    assert [c.next()["id"], c.next()["id"]] == [log["id"] for log in sent]
    c.close()

    future = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ")
    for op, delivered in ((">", False), (">=", False), ("=", False), ("<", True), ("<=", True)):
        c = clients(server.url(), [["created_at", op, future], ["event_type", "in", ["update", 7]]])
        c.expect_ack()
        server.push(COLL_A, "create")  # never: event_type not in the list
        log = server.push(COLL_A, "update")
        if delivered:
            assert c.next()["id"] == log["id"], op
        else:
            with pytest.raises(AssertionError):
                c.next(timeout=0.3)
        c.close()


def test_prepare_filters_pure() -> None:
    funcs = eventbus.prepare_filters([["event_type", "in", ["update"]], ["uuid", "=", "x"],
                                      ["created_at", "<", "2026-01-01T00:00:00+01:00"]])
    assert len(funcs) == 2
    log = {"event_type": "update", "created_at": "2025-12-31T22:59:59.999999999Z"}
    assert all(f(log) for f in funcs)
    assert not all(f({**log, "created_at": "2025-12-31T23:00:00Z"}) for f in funcs)
    assert eventbus.parse_rfc3339_ns("2026-01-01T00:00:00.5Z") == 1767225600 * 10**9 + 500_000_000
    assert eventbus.parse_rfc3339_ns("2026-01-01 00:00:00") is None


def test_replay_reaches_back_ten_minutes_only(server: Server, clients: Callable[..., Client]) -> None:
    old_time = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=11)).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ")
    server.push(CONTAINER)
    stale = server.push(COLL_A, created_at=old_time)
    fresh = server.push(COLL_B)
    c = clients(server.url(), [], last_log_id=stale["id"] - 1)
    c.expect_ack()
    assert c.next()["id"] == fresh["id"]


def test_sdk_reconnects_after_overflow_and_catches_up(make_server: Callable[..., Server],
                                                      clients: Callable[..., Client]) -> None:
    """Dropping a slow client loses nothing: the SDK reconnects with its last seen id."""
    server = make_server(queue_size=3)
    server.push(CONTAINER)  # ids must not start at 1: last_log_id 0 means "no replay"
    c = clients(server.url(), [["object_uuid", "=", COLL_A]])
    c.expect_ack()
    # The SDK can only catch up from an id it has seen (last_log_id None means "no replay").
    seen = server.push(COLL_A)
    assert c.next()["id"] == seen["id"]
    server.push_many([{"object_uuid": COLL_A} for _ in range(10)])
    want = [log["id"] for log in server.store.logs if log["object_uuid"] == COLL_A][1:]
    got: list[int] = []
    while len(got) < len(want):
        msg = c.next(timeout=3 * DEADLINE)  # includes the SDK's reconnect backoff
        if "id" in msg:
            got.append(msg["id"])
        else:
            assert msg == {"status": 200}  # re-subscribe ack after reconnecting
    assert got == want


def test_delete_permission_is_checked_on_the_owner(make_server: Callable[..., Server],
                                                   clients: Callable[..., Client]) -> None:
    """Like the Go server: a deleted object cannot be looked up, so its owner is checked."""
    readable = {COLL_A, PROJECT}
    asked: list[tuple[Any, str]] = []

    def object_can_read(principal: Any, log: dict) -> bool:
        asked.append((principal, log["object_uuid"]))
        return log["object_uuid"] in readable

    server = make_server(can_read=object_can_read)
    c = clients(server.url(), [])
    c.expect_ack()
    server.push(COLL_B, "update", owner=PROJECT)  # COLL_B itself is not readable
    deleted = server.push(COLL_B, "delete", owner=PROJECT, old={"name": "b"})
    ev = c.next()
    assert ev["id"] == deleted["id"] and ev["object_uuid"] == COLL_B  # message is unchanged
    assert asked == [(USER, COLL_B), (USER, PROJECT)]
