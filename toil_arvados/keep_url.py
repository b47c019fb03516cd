"""``keep:`` URLs for Toil: read inputs from Arvados collections, export outputs into collections.

Toil finds this class through its ``url_access`` plugin type (the top-level module
``toil_url_access_keep`` registers it for the scheme ``keep``), so ``toil-cwl-runner`` and any Toil
workflow can use ``keep:`` locations wherever they use ``s3:`` or ``http:`` ones.

URL forms (path components are percent-encoded, as CWL writes locations; a trailing ``/`` is
allowed on directories)::

    keep:<portable data hash>[/<path>]     fixed content (read only), e.g. keep:1f4b...+45/reads.txt
    keep:<collection uuid>[/<path>]        the current version of a collection; writing updates it
    keep:<project uuid>/<name>[/<path>]    the collection called <name> in a project (a group
                                           ``xxxxx-j7d0g-...`` or a user's home ``xxxxx-tpzed-...``);
                                           writing creates that collection if it does not exist yet
                                           and otherwise adds/replaces the file in it
    keep:<project uuid>[/]                 the project itself: a directory of its collections

Everything goes through the Arvados Python SDK (``arvados.api`` with ``num_retries``,
``CollectionReader``/``Collection`` and a ``KeepClient``); credentials come from where the SDK
looks (``ARVADOS_API_HOST``, ``ARVADOS_API_TOKEN``, ``ARVADOS_API_HOST_INSECURE`` in the
environment, or ``~/.config/arvados/settings.conf``). The token is never logged or put in a message.

Reads stream block by block through a Keep client with a small block cache, so a file larger than
memory can be imported. A write uploads the bytes first, then merges the one file into the target
collection through the SDK (which reloads the record and merges concurrent changes before saving);
Keep keeps no permission bits, so exported files lose their executable flag.
:func:`save_outputs_collection` gathers workflow outputs into one new collection and references
blocks already in Keep instead of copying their bytes. The URL syntax itself (pure, no I/O) lives in
:mod:`toil_arvados.keep_locations`.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import IO, Any, Callable, Iterator, Mapping
from urllib.parse import ParseResult, quote, unquote, urlparse

from toil.lib.url import URLAccess

from .keep_locations import (SCHEME, KeepAPIError, KeepCredentialsError, KeepLocation, KeepNotFoundError,
                             KeepURLError, RefKind, collection_target_path, listing_entry, locate,
                             normalize_path, parse_keep_url, ref_kind)

logger = logging.getLogger(__name__)

#: Retries for every API and Keep call (the SDK backs off between them; 4xx answers are not retried).
NUM_RETRIES = 8
#: Streaming read size: bounded memory regardless of file size.
READ_CHUNK = 1 << 20
#: Keep block cache for reads: one 64 MiB block (the SDK's minimum; its default is 256 MiB). With one
#: prefetch thread a sequential read holds about two blocks whatever the file size, and reads no slower.
BLOCK_CACHE_BYTES = 1 << 26
#: PDH-named collections are immutable, so their parsed manifests can be reused across calls...
_READER_CACHE_SIZE = 32
#: ...but only while the Keep permission signatures in them are fresh (Arvados signs for weeks).
_READER_CACHE_SECONDS = 3600.0

_CREDENTIALS_HELP = ("keep: URLs need Arvados credentials: set ARVADOS_API_HOST and ARVADOS_API_TOKEN "
                     "(and SSL_CERT_FILE for a cluster with its own CA) in the environment, "
                     "or put them in ~/.config/arvados/settings.conf")

__all__ = [  # the parsing helpers are re-exported so callers need one import
    "KeepURLAccess", "save_outputs_collection", "write_to_keep", "lookup", "session", "KeepSession",
    "SCHEME", "KeepAPIError", "KeepCredentialsError", "KeepLocation", "KeepNotFoundError", "KeepURLError",
    "RefKind", "collection_target_path", "listing_entry", "locate", "normalize_path", "parse_keep_url",
    "ref_kind", "url_of",
]


def url_of(parsed: ParseResult | str) -> str:
    """The URL string Toil parsed (our URLs have no netloc, query or fragment worth keeping apart)."""
    return parsed if isinstance(parsed, str) else parsed.geturl()


# Sessions: one API client + Keep client per credentials ------------------------------------------

@dataclass
class KeepSession:
    """The SDK clients for one set of credentials."""

    api: Any
    keep: Any
    host: str
    #: Identifies the credentials (host + token digest); None for a caller's client, which is not
    #: cached against. Cached readers are keyed by it so one token never reuses another's reads.
    identity: tuple[str, str, bool] | None = None


_sessions: dict[tuple[str, str, bool], KeepSession] = {}
_sessions_lock = threading.Lock()
_readers: OrderedDict[tuple[tuple[str, str, bool], str], tuple[float, Any]] = OrderedDict()
_readers_lock = threading.Lock()


def _settings() -> dict[str, str]:
    """The SDK's settings (settings.conf overlaid by the environment), with today's environment.

    The SDK reads both once and caches them; overlaying the current ``ARVADOS_*`` variables honours
    a changed environment (another cluster, a fresh token) without resetting the SDK's global state
    under other threads.
    """
    import arvados.config

    settings = dict(arvados.config.settings())
    settings.update({k: v for k, v in os.environ.items() if k.startswith("ARVADOS_")})
    return settings


def session() -> KeepSession:
    """SDK clients for the configured cluster, built once per (host, token)."""
    import arvados

    settings = _settings()
    host = settings.get("ARVADOS_API_HOST", "")
    token = settings.get("ARVADOS_API_TOKEN", "")
    if not host or not token:
        raise KeepCredentialsError(_CREDENTIALS_HELP)
    insecure = arvados.config.flag_is_true("ARVADOS_API_HOST_INSECURE", settings)
    key = (host, hashlib.sha256(token.encode()).hexdigest(), insecure)
    with _sessions_lock:
        sess = _sessions.get(key)
        if sess is None:
            from . import arvados_client  # the one gateway: same client, retries and outage policy

            api = arvados_client.connect()
            keep = arvados_client.patient_keep(arvados.KeepClient(
                api_client=api, num_retries=NUM_RETRIES, num_prefetch_threads=1,
                block_cache=arvados.KeepBlockCache(cache_max=BLOCK_CACHE_BYTES)))
            sess = _sessions[key] = KeepSession(api=api, keep=keep, host=host, identity=key)
        return sess


def _status(e: Exception) -> int | None:
    from .arvados_client import status_of

    return status_of(e)


def _reason(e: Exception) -> str:
    """The API's error text (its ``errors`` list), never request headers (which carry the token)."""
    content = getattr(e, "content", b"") or b""
    try:
        errors = json.loads(content.decode("utf-8", "replace")).get("errors") or []
        if errors:
            return "; ".join(str(x) for x in errors).splitlines()[0]
    except (ValueError, AttributeError):
        pass
    return type(e).__name__


def _api_error(url: str, e: Exception, doing: str) -> KeepAPIError:
    return KeepAPIError(f"{url}: Arvados refused to {doing} (HTTP {_status(e)}): {_reason(e)}")


# Reading ------------------------------------------------------------------------------------------

def _find_named_collection(sess: KeepSession, project: str, name: str) -> dict | None:
    """The (non-trashed) collection called ``name`` in ``project``, or None."""
    import arvados.errors

    try:
        found = sess.api.collections().list(
            filters=[["owner_uuid", "=", project], ["name", "=", name]],
            select=["uuid", "portable_data_hash", "name"], limit=1,
        ).execute(num_retries=NUM_RETRIES)
    except arvados.errors.ApiError as e:
        raise _api_error(f"keep:{project}/{quote(name)}", e, "list the project's collections") from None
    items = found.get("items") or []
    return items[0] if items else None


def _project_exists(sess: KeepSession, project: str) -> bool:
    import arvados.errors

    resource = sess.api.users() if "-tpzed-" in project else sess.api.groups()
    try:
        resource.get(uuid=project).execute(num_retries=NUM_RETRIES)
    except arvados.errors.ApiError as e:
        if _status(e) in (403, 404):
            return False
        raise _api_error(f"keep:{project}", e, "look up the project") from None
    return True


def _open_reader(sess: KeepSession, loc: KeepLocation) -> Any:
    """A ``CollectionReader`` for the collection ``loc`` names (cached for PDHs).

    Raises :class:`KeepNotFoundError` with the one-line message for a collection that does not
    exist or that these credentials cannot read (Arvados answers 404 for both).
    """
    import arvados.collection
    import arvados.errors

    ref = loc.ref
    if loc.kind == "project":
        if loc.collection_name is None:
            raise KeepURLError(f"{loc.url}: names a project, not a collection; add /<collection name>/<path>")
        rec = _find_named_collection(sess, loc.ref, loc.collection_name)
        if rec is None:
            raise KeepNotFoundError(f"{loc.url}: no collection named {loc.collection_name!r} in project "
                                    f"{loc.ref} on {sess.host}; check the project uuid and the name")
        ref = rec["uuid"]
    cacheable = loc.kind == "pdh" and sess.identity is not None
    cache_key = (sess.identity or ("", "", False), ref)
    if cacheable:
        with _readers_lock:
            cached = _readers.get(cache_key)
            if cached is not None and time.monotonic() - cached[0] < _READER_CACHE_SECONDS:
                _readers.move_to_end(cache_key)
                return cached[1]
    try:
        reader = arvados.collection.CollectionReader(ref, api_client=sess.api, keep_client=sess.keep,
                                                     num_retries=NUM_RETRIES)
    except arvados.errors.ApiError as e:
        if _status(e) in (403, 404):
            raise KeepNotFoundError(f"{loc.url}: no such collection on {sess.host}; check the hash/uuid") from None
        raise _api_error(loc.url, e, "read the collection") from None
    if cacheable:
        with _readers_lock:
            _readers[cache_key] = (time.monotonic(), reader)
            while len(_readers) > _READER_CACHE_SIZE:
                _readers.popitem(last=False)
    return reader


def _find_item(reader: Any, path: str) -> Any:
    """The file or subcollection at ``path`` ("" = the collection itself), or None."""
    if not path:
        return reader
    try:
        return reader.find(path)
    except (NotADirectoryError, OSError):
        return None  # a path that goes "through" a file


def _is_dir(item: Any) -> bool:
    import arvados.collection

    return isinstance(item, arvados.collection.RichCollectionBase)


def lookup(url: str) -> tuple[KeepSession, KeepLocation, Any]:
    """Resolve a URL to its SDK object (an ``ArvadosFile`` or a ``Subcollection``/collection).

    Raises :class:`KeepNotFoundError` if any part of it is missing. Public so that other Keep-aware
    code (e.g. a Keep job store importing by reference) resolves URLs exactly as Toil's lookup does.
    """
    loc = locate(url)
    sess = session()
    reader = _open_reader(sess, loc)
    item = _find_item(reader, loc.path)
    if item is None:
        raise KeepNotFoundError(f"{url}: no file or directory {loc.path!r} in collection "
                                f"{loc.collection_name or loc.ref}; check the path (keep: URLs are case-sensitive)")
    return sess, loc, item


def _open_file(url: str) -> tuple[KeepLocation, Any]:
    """The location and an ``ArvadosFileReader`` for a file URL."""
    _sess, loc, item = lookup(url)
    if _is_dir(item):
        raise IsADirectoryError(f"{url}: is a directory, not a file")
    return loc, item.parent.open(item.name, "rb")


class _KeepRawStream(io.RawIOBase):
    """A raw, seekable byte stream over an ``ArvadosFileReader`` so callers get a standard ``IO``."""

    def __init__(self, reader: Any) -> None:
        super().__init__()
        self._reader = reader

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._reader.read(len(buffer), return_memoryview=True)
        n = len(data) if data else 0
        if n:
            memoryview(buffer).cast("B")[:n] = data
        return n

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        return self._reader.seek(pos, whence)

    def tell(self) -> int:
        return self._reader.tell()

    def close(self) -> None:
        if not self.closed:
            self._reader.close()
        super().close()


def _project_listing(sess: KeepSession, loc: KeepLocation) -> list[str]:
    import arvados.util

    if not _project_exists(sess, loc.ref):
        raise KeepNotFoundError(f"{loc.url}: no such project on {sess.host}; check the uuid")
    names = {rec["name"] for rec in arvados.util.keyset_list_all(
        sess.api.collections().list, filters=[["owner_uuid", "=", loc.ref]], select=["uuid", "name", "created_at"])}
    return sorted(listing_entry(n, True) for n in names if n)


# Writing ------------------------------------------------------------------------------------------

def _copy_stream(readable: IO[bytes] | IO[str], out: IO[bytes]) -> int:
    total = 0
    while True:
        chunk = readable.read(READ_CHUNK)
        if not chunk:
            return total
        data = chunk.encode("utf-8") if isinstance(chunk, str) else chunk
        out.write(data)
        total += len(data)


def _iter_files(coll: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(path, ArvadosFile) for every file under ``coll``; empty directories are skipped."""
    for name, item in coll.items():
        path = f"{prefix}{name}"
        if _is_dir(item):
            yield from _iter_files(item, path + "/")
        else:
            yield path, item


def _staged(sess_api: Any, keep: Any | None, fill: Callable[[Any], None]) -> Any:
    """A new, record-less collection holding what ``fill`` writes, with every block already in Keep.

    Committing first means the result is a plain manifest of signed locators that can be merged into
    another collection (or saved) without the source's in-memory buffers.
    """
    import arvados.collection

    draft = arvados.collection.Collection(api_client=sess_api, keep_client=keep, num_retries=NUM_RETRIES)
    fill(draft)
    text = draft.save_new(create_collection_record=False)
    draft.stop_threads()
    return arvados.collection.Collection(text, api_client=sess_api, keep_client=keep, num_retries=NUM_RETRIES)


def _merge_into(target: Any, staged: Any) -> None:
    """Add/replace each staged file in ``target`` (file by file, so sibling files survive)."""
    for path, item in _iter_files(staged):
        target.copy(item, path, overwrite=True)


def _save_into_collection(sess: KeepSession, url: str, uuid: str, staged: Any) -> Any:
    import arvados.collection
    import arvados.errors

    try:
        target = arvados.collection.Collection(uuid, api_client=sess.api, keep_client=sess.keep,
                                               num_retries=NUM_RETRIES)
    except arvados.errors.ApiError as e:
        if _status(e) in (403, 404):
            raise KeepNotFoundError(f"{url}: no such collection on {sess.host}; check the hash/uuid") from None
        raise _api_error(url, e, "read the collection") from None
    _merge_into(target, staged)
    try:
        target.save()  # the SDK reloads and merges concurrent changes before writing
    except arvados.errors.ApiError as e:
        raise _api_error(url, e, "update the collection") from None
    return target


# Storage classes of the collections this process creates for exported outputs (the workflow's
# final output, --destBucket keep:...): the root workflow's arv:OutputStorageClass
# finalStorageClass, else --arvadosStorageClasses; none: the cluster's default classes.
_final_storage_classes: dict[str, tuple[str, ...]] = {}


def set_final_storage_classes(source: str, classes: tuple[str, ...]) -> None:
    """Record final-output storage classes from ``source`` ("hint" or "option"; a hint wins)."""
    _final_storage_classes[source] = tuple(classes)


def final_storage_classes() -> list[str] | None:
    chosen = _final_storage_classes.get("hint") or _final_storage_classes.get("option")
    return list(chosen) if chosen else None


def _save_named(sess: KeepSession, url: str, project: str, name: str, staged: Any) -> Any:
    """Create collection ``name`` in ``project`` from ``staged``, or merge into it if it exists."""
    import arvados.errors

    for _attempt in range(3):
        existing = _find_named_collection(sess, project, name)
        if existing is not None:
            return _save_into_collection(sess, url, existing["uuid"], staged)
        try:
            staged.save_new(name=name, owner_uuid=project, ensure_unique_name=False,
                            storage_classes=final_storage_classes())
            return staged
        except arvados.errors.ApiError as e:
            status, reason = _status(e), _reason(e)
            if status in (409, 422) and _find_named_collection(sess, project, name) is not None:
                continue  # another writer created it first: merge into theirs
            if status in (403, 404, 422):
                raise KeepAPIError(f"{url}: cannot create collection {name!r} in project {project} on "
                                   f"{sess.host} ({reason}); check that the project exists and you can write to it") from None
            raise _api_error(url, e, "create the collection") from None
    raise KeepAPIError(f"{url}: collection {name!r} in {project} kept changing while saving; try again")


def write_to_keep(readable: IO[bytes] | IO[str], url: str) -> tuple[str, str]:
    """Write a stream to a writable ``keep:`` URL; returns the collection's (uuid, pdh)."""
    loc = locate(url)
    if loc.kind == "pdh":
        raise KeepURLError(f"{url}: a portable data hash names fixed content and cannot be written; "
                           "export to keep:<project uuid>/<collection name>/<path> or keep:<collection uuid>/<path>")
    if loc.is_project_root or not loc.path:
        raise KeepURLError(f"{url}: name a file inside the collection, e.g. {url.rstrip('/')}/output.txt")
    sess = session()

    def fill(draft: Any) -> None:
        with draft.open(loc.path, "wb") as out:
            size = _copy_stream(readable, out)
        logger.debug("Wrote %d bytes for %s", size, url)

    staged = _staged(sess.api, sess.keep, fill)
    if loc.kind == "collection":
        saved = _save_into_collection(sess, url, loc.ref, staged)
    else:
        assert loc.collection_name is not None
        saved = _save_named(sess, url, loc.ref, loc.collection_name, staged)
    uuid, pdh = saved.manifest_locator(), saved.portable_data_hash()
    logger.info("Exported %s (collection %s, portable data hash %s)", url, uuid, pdh)
    return uuid, pdh


# Toil's URL access plugin -------------------------------------------------------------------------

class KeepURLAccess(URLAccess):
    """Toil ``URLAccess`` for ``keep:`` URLs (see the module docstring for the URL forms)."""

    @classmethod
    def _supports_url(cls, url: ParseResult, export: bool = False) -> bool:
        # Export to a PDH is refused in _write_to_url with a message that says what to use instead,
        # which is clearer than Toil's generic "no implementation" error.
        return url.scheme.lower() == SCHEME

    @classmethod
    def _url_exists(cls, url: ParseResult) -> bool:
        text = url_of(url)
        loc = locate(text)
        if loc.is_project_root:
            return _project_exists(session(), loc.ref)
        try:
            lookup(text)
        except KeepNotFoundError as e:
            logger.debug("%s", e)
            return False
        return True

    @classmethod
    def _get_size(cls, url: ParseResult) -> int | None:
        text = url_of(url)
        if locate(text).is_project_root:
            return None
        _sess, _loc, item = lookup(text)
        return None if _is_dir(item) else int(item.size())

    @classmethod
    def _get_is_directory(cls, url: ParseResult) -> bool:
        text = url_of(url)
        loc = locate(text)
        if loc.is_project_root:
            return _project_exists(session(), loc.ref)
        try:
            _sess, _loc, item = lookup(text)
        except KeepNotFoundError:
            return False
        return _is_dir(item)

    @classmethod
    def _list_url(cls, url: ParseResult) -> list[str]:
        text = url_of(url)
        loc = locate(text)
        if loc.is_project_root:
            return _project_listing(session(), loc)
        _sess, _loc, item = lookup(text)
        if not _is_dir(item):
            raise NotADirectoryError(f"{text}: is a file, not a directory")
        return sorted(listing_entry(name, _is_dir(child)) for name, child in item.items())

    @classmethod
    def _read_from_url(cls, url: ParseResult, writable: IO[bytes]) -> tuple[int, bool]:
        text = url_of(url)
        _loc, reader = _open_file(text)
        total = 0
        with reader:
            while True:
                chunk = reader.read(READ_CHUNK)  # bytes: some writables (buffers, pipes) want them
                if not chunk:
                    break
                writable.write(chunk)
                total += len(chunk)
        # Keep has no permission bits, so nothing read from it is executable.
        return total, False

    @classmethod
    def _open_url(cls, url: ParseResult) -> IO[bytes]:
        _loc, reader = _open_file(url_of(url))
        return io.BufferedReader(_KeepRawStream(reader), buffer_size=READ_CHUNK)

    @classmethod
    def _write_to_url(cls, readable: IO[bytes] | IO[str], url: ParseResult, executable: bool = False) -> None:
        if executable:
            logger.debug("%s: Keep stores no permission bits; the executable flag is not kept", url_of(url))
        write_to_keep(readable, url_of(url))


# Saving workflow outputs as one collection -------------------------------------------------------

def _add_local(draft: Any, target: str, source: str) -> None:
    if os.path.isdir(source):
        for dirpath, _dirs, names in os.walk(source, followlinks=True):
            rel = os.path.relpath(dirpath, source)
            for name in sorted(names):
                sub = name if rel == "." else f"{rel}/{name}"
                _add_local(draft, f"{target}/{sub}", os.path.join(dirpath, name))
        return
    with open(source, "rb") as src, draft.open(target, "wb") as out:
        _copy_stream(src, out)


def _session_for(api: Any) -> KeepSession:
    """Wrap a caller's API client (its own Keep client, its host for messages)."""
    root = getattr(api, "_rootDesc", None) or {}
    host = urlparse(root.get("rootUrl", "")).netloc or "the Arvados cluster"
    return KeepSession(api=api, keep=getattr(api, "keep", None), host=host)


def _add_keep(sess: KeepSession, draft: Any, target: str, source: str, readers: Mapping[str, Any]) -> None:
    """Reference a Keep file or directory in ``draft`` by its blocks (no bytes move)."""
    loc = locate(source)
    reader = readers.get(loc.ref) if loc.kind == "pdh" else None
    if reader is None:
        reader = _open_reader(sess, loc)
    item = _find_item(reader, loc.path)
    if item is None:
        raise KeepNotFoundError(f"{source}: no file or directory {loc.path!r} in collection "
                                f"{loc.collection_name or loc.ref}; check the path")
    if _is_dir(item):
        for path, f in _iter_files(item):
            draft.copy(f, f"{target}/{path}", overwrite=True)
    else:
        draft.copy(item, target, overwrite=True)


def _readers_by_pdh(sess: KeepSession, sources: list[str]) -> dict[str, Any]:
    """Readers of the collections that ``keep:<pdh>`` sources name, from one listing call per
    chunk of hashes (a run's outputs come from as many step collections as it has steps: one
    ``get`` each would cost a call per step). A hash the listing misses is read on its own."""
    import arvados.collection

    from . import arvados_client

    pdhs = {loc.ref for loc in map(locate, sources) if loc.kind == "pdh"}
    return {pdh: arvados.collection.CollectionReader(manifest, api_client=sess.api, keep_client=sess.keep,
                                                     num_retries=NUM_RETRIES)
            for pdh, manifest in arvados_client.manifests_by_pdh(sess.api, pdhs, what="read output collections").items()}


def save_outputs_collection(api: Any, project_uuid: str, name: str, files: Mapping[str, str], *,
                            contents: Mapping[str, bytes] | None = None,
                            properties: Mapping[str, Any] | None = None) -> tuple[str, str]:
    """Save workflow outputs as one new collection in ``project_uuid``; returns (uuid, pdh).

    ``files`` maps a path inside the new collection to its source: a local path (``file://`` URL or
    plain path; a directory is added recursively) or a ``keep:`` URL (file or directory). Keep
    sources are added by reference to their existing blocks, so no bytes are read or written for
    them. ``contents`` maps more paths to literal bytes; ``properties`` become the collection's.
    It is the workflow's final output: it gets the final storage classes (:func:`final_storage_classes`).
    The name is made unique by the API server if the project already has one like it.
    """
    import arvados.collection
    import arvados.errors

    sess = _session_for(api)
    draft = arvados.collection.Collection(api_client=api, keep_client=sess.keep, num_retries=NUM_RETRIES)
    readers = _readers_by_pdh(sess, [s for s in files.values() if s.lower().startswith(SCHEME + ":")])
    for target, source in files.items():
        path = collection_target_path(target)
        if source.lower().startswith(SCHEME + ":"):
            _add_keep(sess, draft, path, source, readers)
        else:
            local = unquote(urlparse(source).path) if source.startswith("file:") else source
            if not os.path.exists(local):
                raise FileNotFoundError(f"{source}: no such local file or directory for output {path!r}")
            _add_local(draft, path, local)
    for target, data in (contents or {}).items():
        with draft.open(collection_target_path(target), "wb") as out:
            out.write(data)
    try:
        draft.save_new(name=name, owner_uuid=project_uuid, ensure_unique_name=True,
                       properties=dict(properties or {}), storage_classes=final_storage_classes())
    except arvados.errors.ApiError as e:
        raise KeepAPIError(f"cannot save outputs collection {name!r} in project {project_uuid} "
                           f"(HTTP {_status(e)}: {_reason(e)}); check that the project exists and you can write to it") from None
    finally:
        draft.stop_threads()
    uuid, pdh = draft.manifest_locator(), draft.portable_data_hash()
    logger.info("Saved workflow outputs as collection %s (portable data hash %s) in project %s",
                uuid, pdh, project_uuid)
    return uuid, pdh
