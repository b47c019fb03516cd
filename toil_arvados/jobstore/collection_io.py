"""Stream bytes into and out of one-file Arvados collections through the SDK.

Writes go into an unsaved :class:`arvados.collection.Collection`: the SDK's block manager cuts
the stream into Keep blocks (up to 64 MiB) and uploads them in background threads while the
caller keeps writing, so nothing is staged on local disk. Only when the caller is done do we ask
for the (signed) manifest text, which the job store then saves with a single API call. If the
caller raises, no API record changes: a half-written file never becomes visible (orphan blocks
are garbage-collected by Keep).

Reads build a collection from manifest text already in hand (no extra API call) and read blocks
from Keep on demand.
"""
from __future__ import annotations

import io
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from typing import IO, Any, Iterator

import arvados.collection
from arvados.arvfile import ArvadosFile, WrappableFile

logger = logging.getLogger(__name__)

BUFFER = 1 << 20


def _collection(api: Any, manifest_text: str | None = None) -> arvados.collection.Collection:
    """``api`` is the gateway's client (:func:`toil_arvados.arvados_client.connect`): its ``keep``
    rides out a Keep outage with the same policy as API calls."""
    return arvados.collection.Collection(manifest_text, api_client=api, keep_client=api.keep)


def _text_or_binary(binary: io.BufferedIOBase, encoding: str | None, errors: str | None) -> IO[Any]:
    if encoding is None:
        return binary
    return io.TextIOWrapper(binary, encoding=encoding, errors=errors)


class OneFileWriter:
    """A new collection holding exactly one file, filled by writing to a stream."""

    def __init__(self, api: Any, name: str) -> None:
        self.name = name
        self._collection = _collection(api)

    @contextmanager
    def open(self, encoding: str | None = None, errors: str | None = None) -> Iterator[IO[Any]]:
        """A writable handle; closing it (or leaving the block) flushes into the block manager."""
        raw = self._collection.open(self.name, "wb")
        handle = _text_or_binary(io.BufferedWriter(WrappableFile(raw), buffer_size=BUFFER), encoding, errors)
        try:
            yield handle
        finally:
            if not handle.closed:
                handle.close()

    def copy_from(self, readable: IO[bytes]) -> int:
        with self.open() as out:
            shutil.copyfileobj(readable, out, BUFFER)
        return self.size()

    def write_bytes(self, data: bytes) -> None:
        with self.open() as out:
            out.write(data)

    def size(self) -> int:
        item = self._collection.find(self.name)
        return item.size() if item is not None else 0

    def manifest_text(self) -> str:
        """Finish uploading and return the signed manifest (ready for collections.create/update)."""
        try:
            return self._collection.manifest_text()
        finally:
            self._collection.stop_threads()

    def discard(self) -> None:
        self._collection.stop_threads()


def copy_reference(api: Any, source: arvados.collection.Collection, path: str, name: str) -> tuple[str, int]:
    """A one-file manifest naming ``path`` of ``source`` as ``name``: same blocks, no bytes moved."""
    item = source.find(path)
    if item is None:
        raise FileNotFoundError(path)
    if not isinstance(item, ArvadosFile):
        raise IsADirectoryError(f"{path} is a directory in the Keep collection; import files, not directories")
    dest = _collection(api)
    try:
        dest.copy(item, name)
        return dest.manifest_text(), item.size()
    finally:
        dest.stop_threads()


def _single_file_name(coll: arvados.collection.Collection, preferred: str) -> str:
    if preferred in coll:
        return preferred
    files = [n for n, item in coll.items() if isinstance(item, ArvadosFile)]
    if len(files) == 1:
        return files[0]
    raise FileNotFoundError(preferred)


@contextmanager
def open_reader(api: Any, manifest_text: str, name: str, encoding: str | None = None,
                errors: str | None = None) -> Iterator[IO[Any]]:
    """Read the file ``name`` (or the collection's only file) of a manifest, block by block."""
    coll = _collection(api, manifest_text)
    try:
        raw = coll.open(_single_file_name(coll, name), "rb")
        handle = _text_or_binary(io.BufferedReader(WrappableFile(raw), buffer_size=BUFFER), encoding, errors)
        try:
            yield handle
        finally:
            handle.close()
    finally:
        coll.stop_threads()


def read_all(api: Any, manifest_text: str, name: str) -> bytes:
    with open_reader(api, manifest_text, name) as f:
        return f.read()


def download(api: Any, manifest_text: str, name: str, local_path: str, executable: bool = False) -> None:
    """Copy a file out of Keep to ``local_path`` atomically (temp file in the same dir, rename).

    A destination that exists and is not a regular file (``/dev/null``, a FIFO) is written into
    instead: renaming over it would replace the device itself."""
    if os.path.exists(local_path) and not os.path.isfile(local_path) and not os.path.isdir(local_path):
        with open(local_path, "wb") as out, open_reader(api, manifest_text, name) as src:
            shutil.copyfileobj(src, out, BUFFER)
        return
    directory = os.path.dirname(os.path.abspath(local_path))
    fd, tmp = tempfile.mkstemp(prefix=".toil-keep-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out, open_reader(api, manifest_text, name) as src:
            shutil.copyfileobj(src, out, BUFFER)
        if executable:
            os.chmod(tmp, os.stat(tmp).st_mode | 0o111)
        os.replace(tmp, local_path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
