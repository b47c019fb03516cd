"""Keepstore server exercised with the real SDK KeepClient (pinned via proxy=)."""

import asyncio
import hashlib
import http.client
import os
import socket
import threading
import time

import arvados
import arvados.errors
import pytest
from aiohttp import web

from toil_arvados.localcluster.blockstore import BlockStore
from toil_arvados.localcluster.keepstore import make_keep_app
from toil_arvados.localcluster.signing import sign_locator, verify_locator

KEY = "test-signing-key"
TTL = 3600
TOKENS = {"v2/zzzzz-gj3su-000000000000001/goodsecret": "zzzzz-tpzed-000000000000001",
          "othersecret": "zzzzz-tpzed-000000000000002"}
GOOD = "v2/zzzzz-gj3su-000000000000001/goodsecret"


def authenticate(token):
    if token in TOKENS:
        return TOKENS[token]
    for t, user in TOKENS.items():  # accept bare secret of a v2 token too
        if t.startswith("v2/") and t.split("/")[2] == token:
            return user
    return None


class Server:
    def __init__(self, store):
        self.store = store
        self.ready = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        asyncio.set_event_loop(self.loop)
        app = make_keep_app(self.store, authenticate=authenticate, signing_key=KEY, ttl_seconds=TTL)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.site = web.SockSite(self.runner, sock)
        self.loop.run_until_complete(self.site.start())
        self.ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.runner.cleanup())

    def start(self):
        self.thread.start()
        assert self.ready.wait(10)
        return self

    def stop(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def server(tmp_path):
    srv = Server(BlockStore(tmp_path / "keep")).start()
    yield srv
    srv.stop()


def client(server, token=GOOD):
    return arvados.KeepClient(api_token=token, proxy=f"http://127.0.0.1:{server.port}/",
                              local_store="", num_retries=0)


def raw(server, method, path, token=GOOD, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    hdrs = dict(headers or {})
    if token:
        hdrs["Authorization"] = f"Bearer {token}"
    conn.request(method, path, body=body, headers=hdrs)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp, data


def test_sdk_put_get_head(server):
    kc = client(server)
    data = os.urandom(100_000)
    loc = kc.put(data)  # default copies=2 must still succeed
    md5 = hashlib.md5(data).hexdigest()
    assert loc.startswith(f"{md5}+{len(data)}+A")
    assert verify_locator(loc, GOOD, KEY, TTL)
    assert server.store.get(md5) == data
    assert kc.get(loc) == data
    assert kc.head(loc) is True
    # same token presented as its bare secret: signature still valid
    assert client(server, "goodsecret").get(loc) == data


def test_sdk_storage_classes_confirmed(server):
    kc = client(server)
    loc = kc.put(b"classy", copies=1, classes=["archive", "default"])
    assert loc.startswith(hashlib.md5(b"classy").hexdigest())


def test_put_response_headers(server):
    data = b"foo"
    md5 = hashlib.md5(data).hexdigest()
    resp, body = raw(server, "PUT", f"/{md5}", body=data,
                     headers={"X-Keep-Desired-Replicas": "2"})
    assert resp.status == 200
    assert resp.getheader("X-Keep-Replicas-Stored") == "2"
    assert resp.getheader("X-Keep-Storage-Classes-Confirmed") == "default=2"
    assert body.decode().endswith("\n")
    assert verify_locator(body.decode().strip(), GOOD, KEY, TTL)


def test_put_errors(server):
    data = b"foo"
    md5 = hashlib.md5(data).hexdigest()
    assert raw(server, "PUT", f"/{md5}", body=b"bar")[0].status == 422
    assert raw(server, "PUT", f"/{md5}", token=None, body=data)[0].status == 401
    assert raw(server, "PUT", f"/{md5}", token="bogus", body=data)[0].status == 401
    assert raw(server, "PUT", "/nothex", body=data)[0].status in (400, 404, 405)
    assert not server.store.exists(md5)


def test_put_too_large(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.putrequest("PUT", "/" + "0" * 32)
    conn.putheader("Authorization", f"Bearer {GOOD}")
    conn.putheader("Content-Length", str(64 * 1024 * 1024 + 1))
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 413
    conn.close()


def test_get_requires_valid_signature(server):
    kc = client(server)
    data = b"secret data"
    loc = kc.put(data, copies=1)
    bare = loc.split("+A")[0]
    md5 = bare[:32]
    assert raw(server, "GET", f"/{loc}")[0].status == 200
    assert raw(server, "GET", f"/{bare}")[0].status == 403
    assert raw(server, "GET", f"/{loc}", token=None)[0].status == 403
    assert raw(server, "GET", f"/{loc}", token="othersecret")[0].status == 403
    assert raw(server, "GET", f"/{loc}", token="bogus")[0].status == 403
    expired = sign_locator(bare, GOOD, KEY, TTL, now=time.time() - 2 * TTL)
    assert raw(server, "GET", f"/{expired}")[0].status == 403
    tampered = loc[:-12] + ("0" if loc[-12] != "0" else "1") + loc[-11:]
    assert raw(server, "GET", f"/{tampered}")[0].status == 403
    with pytest.raises(arvados.errors.NotFoundError):
        client(server, "othersecret").get(loc)
    # another user's valid signature works for that user only
    other_loc = sign_locator(bare, "othersecret", KEY, TTL)
    assert client(server, "othersecret").get(other_loc) == data
    assert md5 in server.store.path(md5).name


def test_get_unknown_block_404(server):
    md5 = hashlib.md5(b"never stored").hexdigest()
    loc = sign_locator(f"{md5}+12", GOOD, KEY, TTL)
    resp, _ = raw(server, "GET", f"/{loc}")
    assert resp.status == 404
    with pytest.raises(arvados.errors.NotFoundError):
        client(server).get(loc)


def test_head_content_length_and_local_signature(server):
    data = os.urandom(5000)
    loc = client(server).put(data, copies=1)
    resp, body = raw(server, "HEAD", f"/{loc}", headers={"X-Keep-Signature": "local, 2024"})
    assert resp.status == 200 and body == b""
    assert resp.getheader("Content-Length") == "5000"
    assert verify_locator(resp.getheader("X-Keep-Locator"), GOOD, KEY, TTL)
    resp, body = raw(server, "GET", f"/{loc}")
    assert resp.getheader("Content-Length") == "5000" and body == data


def test_empty_block(server):
    kc = client(server)
    loc = kc.put(b"", copies=1)
    assert loc.startswith("d41d8cd98f00b204e9800998ecf8427e+0+A")
    assert kc.get(loc) == b""


def test_full_blocks_round_trip(server):
    """Two full 64 MiB blocks round-trip byte-identical through the SDK (speed: bench/cluster.py)."""
    kc = client(server)
    blocks = [os.urandom(64 * 1024 * 1024) for _ in range(2)]
    locs = [kc.put(b, copies=1) for b in blocks]
    assert [kc.get(loc) for loc in locs] == blocks


def _damage(store: BlockStore, md5: str) -> None:
    """Flip one byte of a stored block file in place (a disk error, a stray write)."""
    path = store.path(md5)
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupt_block_is_an_error_never_wrong_bytes(server):
    """As keepstore: a block whose file no longer hashes to its md5 answers 502 (GET and HEAD),
    the SDK raises rather than returning the damaged data, and a new PUT of it repairs it."""
    data = os.urandom(10_000)
    kc = client(server)
    loc = kc.put(data, copies=1)
    assert kc.get(loc) == data  # read (and verified) once while intact
    md5 = loc[:32]
    _damage(server.store, md5)
    resp, body = raw(server, "GET", f"/{loc}")
    assert resp.status == 502 and b"checksum mismatch" in body
    assert raw(server, "HEAD", f"/{loc}")[0].status == 502
    with pytest.raises(arvados.errors.KeepReadError):
        client(server).get(loc)  # a fresh client: kc has the intact bytes in its cache
    with pytest.raises(OSError, match="checksum mismatch"):
        server.store.read_segment(md5, 0, 10)
    assert kc.put(data, copies=1).startswith(md5)  # rewritten, not taken as already stored
    assert client(server).get(loc) == data


def test_put_is_durable_before_it_answers(tmp_path, monkeypatch):
    """A block is fsynced (its file and its directory) before put() returns: a confirmed PUT
    survives a crash of the machine, not just of the process."""
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")),
                                                 real_fsync(fd))[1])
    store = BlockStore(tmp_path / "keep")
    md5 = store.put(b"durable")
    path = store.path(md5)
    assert any(p.startswith(str(path.parent / f".{md5}.")) for p in synced)  # the temp file
    assert str(path.parent) in synced  # the directory holding the renamed block


def test_partial_writes_are_removed_blocks_kept(tmp_path):
    """The temp file a crash left mid-PUT is removed at start; stored blocks stay."""
    store = BlockStore(tmp_path / "keep")
    md5 = store.put(b"kept block")
    partial = store.path(md5).parent / f".{hashlib.md5(b'other').hexdigest()}.abc123"
    partial.write_bytes(b"half a bl")
    assert store.remove_partial_writes() == 1
    assert not partial.exists() and store.get(md5) == b"kept block"
