"""Keepstore-compatible HTTP server for the SDK's ``KeepClient``.

Speaks the subset of the keepstore protocol the Python SDK uses:
``PUT /<md5>`` answers with a signed locator, ``GET``/``HEAD /<locator>``
require a permission signature made for the requesting token.  Block bodies
are buffered once (PUT, answered only once the block is on disk) or read and
checked against their md5 (GET/HEAD) before sending, and hashing/disk work
runs in the default thread pool so concurrent transfers overlap.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Callable

from aiohttp import web

from .blockstore import BLOCK_SIZE, BlockCorrupt, BlockHashMismatch, BlockStore
from .signing import sign_locator, verify_locator

logger = logging.getLogger(__name__)

_LOCATOR_RE = re.compile(r"^([0-9a-f]{32})(?:\+([0-9]+))?((?:\+[A-Z][-A-Za-z0-9@_]*)*)$")
_CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, HEAD, PUT, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Length, Content-Type, "
    "X-Keep-Desired-Replicas, X-Keep-Signature, X-Keep-Storage-Classes",
    "Access-Control-Expose-Headers": "X-Keep-Locator, X-Keep-Replicas-Stored, "
    "X-Keep-Storage-Classes-Confirmed",
}


def _error(status: int, message: str) -> web.Response:
    # keepstore answers errors as a plain-text line.
    return web.Response(status=status, text=message + "\n", headers=_CORS)


def request_token(request: web.Request) -> str | None:
    """Token from ``Authorization: Bearer|OAuth2 <token>`` (SDK sends Bearer)."""
    auth = request.headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme in ("Bearer", "OAuth2") and token.strip():
        return token.strip()
    return None


def make_keep_app(blockstore: BlockStore, *, authenticate: Callable[[str], str | None],
                  signing_key: str, ttl_seconds: int,
                  claim_desired_replicas: bool = True) -> web.Application:
    """Build the keepstore app.

    ``authenticate(token)`` must be cheap (it runs on the event loop) and
    returns a user uuid or None.  With ``claim_desired_replicas`` a PUT
    reports as many replicas as the client asked for: there is only one
    store on this machine, and the SDK otherwise fails writes whose
    ``copies`` (default 2) exceed the replicas it can find.
    """

    def sign(locator: str, token: str) -> str:
        return sign_locator(locator, token, signing_key, ttl_seconds)

    async def handle_put(request: web.Request) -> web.Response:
        m = _LOCATOR_RE.match(request.match_info["locator"])
        if not m:
            return _error(400, "Bad Request")
        md5 = m.group(1)
        token = request_token(request)
        if token is None or authenticate(token) is None:
            return _error(401, "Unauthorized")
        length = request.content_length
        if length is None:
            return _error(411, "Missing Content-Length")
        if length > BLOCK_SIZE:
            return _error(413, "Block is too large")
        body = bytearray(length)
        view = memoryview(body)
        got = 0
        while True:
            chunk = await request.content.readany()
            if not chunk:
                break
            if got + len(chunk) > length:
                return _error(400, "Body longer than Content-Length")
            view[got:got + len(chunk)] = chunk
            got += len(chunk)
        if got != length:
            return _error(400, "Body shorter than Content-Length")
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, blockstore.put, view, md5)
        except BlockHashMismatch:
            return _error(422, "Hash mismatch in request")
        except OSError:
            logger.exception("storing block %s failed", md5)
            return _error(500, "Fail")
        replicas = 1
        if claim_desired_replicas:
            try:
                replicas = max(1, int(request.headers.get("X-Keep-Desired-Replicas", "1")))
            except ValueError:
                pass
        classes = [c.strip() for c in request.headers.get("X-Keep-Storage-Classes", "").split(",")
                   if c.strip()] or ["default"]
        headers = {
            **_CORS,
            "X-Keep-Replicas-Stored": str(replicas),
            "X-Keep-Storage-Classes-Confirmed": ", ".join(f"{c}={replicas}" for c in classes),
        }
        return web.Response(text=sign(f"{md5}+{length}", token) + "\n", headers=headers)

    async def handle_read(request: web.Request) -> web.StreamResponse:
        locator = request.match_info["locator"]
        m = _LOCATOR_RE.match(locator)
        if not m:
            return _error(400, "Bad Request")
        md5, size_hint = m.group(1), m.group(2)
        token = request_token(request)
        if token is None or authenticate(token) is None:
            return _error(403, "Forbidden")
        if not verify_locator(locator, token, signing_key, ttl_seconds):
            return _error(403, "Forbidden")
        if not blockstore.exists(md5):
            return _error(404, "Not Found")
        size = blockstore.size(md5)
        if size_hint is not None and int(size_hint) != size:
            return _error(404, "Not Found")
        headers = {**_CORS, "Content-Type": "application/octet-stream", "Vary": "X-Keep-Signature"}
        if request.headers.get("X-Keep-Signature", "").split(",")[0].strip() == "local":
            headers["X-Keep-Locator"] = sign(f"{md5}+{size}", token)
        # As keepstore, the bytes are checked against the md5 before they count as the block
        # (for HEAD too): a damaged file answers 502, never wrong data.
        try:
            data = await asyncio.get_running_loop().run_in_executor(None, blockstore.get, md5)
        except BlockCorrupt as e:
            return _error(502, str(e))
        except FileNotFoundError:
            return _error(404, "Not Found")
        if request.method == "HEAD":
            headers["Content-Length"] = str(size)
            return web.Response(status=200, headers=headers)
        return web.Response(body=data, headers=headers)

    async def handle_options(request: web.Request) -> web.Response:
        return web.Response(status=200, headers=_CORS)

    app = web.Application()
    route = r"/{locator:[0-9a-f]{32}[^/]*}"
    app.router.add_route("PUT", route, handle_put)
    app.router.add_get(route, handle_read)  # also serves HEAD
    app.router.add_route("OPTIONS", "/{tail:.*}", handle_options)
    return app
