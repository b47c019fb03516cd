"""A native step's inputs as one Keep collection, mounted where cwltool expects them.

cwltool decides where each input and InitialWorkDir entry must appear inside the container
(its path mappers). Instead of copying files onto a node, we compose one *staging collection*
per step whose tree mirrors those places, and mount it:

* everything under the staging dir (``/var/lib/cwl``) is one read-only mount of ``stage/``;
* every other entry (InitialWorkDir items in the output dir, absolute entrynames) is its own
  mount of ``mnt/<path>``, writable when cwltool says so (Arvados copies writable mounts).

Files already in Keep (``keep:`` inputs, and every file of the Keep job store) are added by
reference: the new manifest names the same blocks, so no bytes move. Only files that are not in
Keep yet (a ``file:`` job store, local paths, literals) are uploaded. Because the collection's
content and layout depend only on the inputs' content, its portable data hash is the same on
every run with the same inputs, which is what lets Arvados reuse the step's container.
"""
from __future__ import annotations

import base64
import json
import logging
import os
import posixpath
import shutil
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import arvados.collection

logger = logging.getLogger(__name__)

STAGE = "stage"
MOUNTS = "mnt"
_WRITABLE = ("WritableFile", "WritableDirectory", "CreateWritableFile")


@dataclass(frozen=True)
class Entry:
    """One path-mapper entry cwltool wants in the container (see cwltool's ``MapperEnt``)."""

    resolved: str  # where it comes from: keep:, toilfile:, toildir:, file:, a path, or literal contents
    target: str  # absolute path inside the container
    type: str  # File, Directory, CreateFile, WritableFile, WritableDirectory, CreateWritableFile


def collection_path(target: str, stagedir: str) -> str:
    """Where an entry's target lives in the staging collection (pure)."""
    norm = posixpath.normpath(target)
    if norm.startswith(stagedir.rstrip("/") + "/"):
        return posixpath.join(STAGE, norm[len(stagedir.rstrip("/")) + 1:])
    return posixpath.join(MOUNTS, norm.lstrip("/"))


def plan_mounts(entries: Iterable[Entry], stagedir: str, pdh: str) -> dict[str, dict[str, Any]]:
    """The container's mounts for a saved staging collection ``pdh`` (pure)."""
    mounts: dict[str, dict[str, Any]] = {}
    for e in entries:
        path = collection_path(e.target, stagedir)
        if path.startswith(STAGE + "/"):
            mounts[stagedir] = {"kind": "collection", "portable_data_hash": pdh, "path": STAGE}
        else:
            m: dict[str, Any] = {"kind": "collection", "portable_data_hash": pdh, "path": path}
            if e.type in _WRITABLE:
                m["writable"] = True
            mounts[posixpath.normpath(e.target)] = m
    return mounts


def stdin_mount(stdin_path: str, entries: Iterable[Entry], stagedir: str, pdh: str) -> dict[str, Any]:
    """The ``stdin`` mount for a path the tool reads standard input from (pure)."""
    for e in entries:
        if posixpath.normpath(e.target) == posixpath.normpath(stdin_path):
            return {"kind": "collection", "portable_data_hash": pdh, "path": collection_path(e.target, stagedir)}
    raise ValueError(f"standard input {stdin_path} is not one of the step's staged inputs")


class KeepSources:
    """Finds a location's bytes: by reference in Keep when they are there, else locally.

    ``keep_url_of`` turns a Toil file ID into ``keep:<pdh>/<name>`` when the job store keeps its
    files in Keep (None otherwise); ``local_path_of`` fetches a location to a local path.
    """

    def __init__(self, api: Any, keep_url_of: Callable[[str], str | None],
                 local_path_of: Callable[[str], str]) -> None:
        self.api = api
        self.keep_url_of = keep_url_of
        self.local_path_of = local_path_of
        self._readers: dict[str, arvados.collection.CollectionReader] = {}

    def reader(self, locator: str) -> arvados.collection.CollectionReader:
        if locator not in self._readers:
            self._readers[locator] = arvados.collection.CollectionReader(locator, api_client=self.api,
                                                                        keep_client=self.api.keep)
        return self._readers[locator]

    def keep_url(self, location: str) -> str | None:
        if location.startswith("keep:"):
            return location
        if location.startswith("toilfile:"):
            return self.keep_url_of(location)
        return None


class StagingCollection:
    """Builds the staging collection for one step."""

    def __init__(self, api: Any, sources: KeepSources, stagedir: str) -> None:
        self.api = api
        self.sources = sources
        self.stagedir = stagedir
        self.collection = arvados.collection.Collection(api_client=api, keep_client=api.keep)
        self.entries: list[Entry] = []
        self.referenced_bytes = 0
        self.uploaded_bytes = 0

    def add(self, entry: Entry) -> None:
        dest = collection_path(entry.target, self.stagedir)
        if entry.type in ("CreateFile", "CreateWritableFile"):
            data = entry.resolved.encode("utf-8") if isinstance(entry.resolved, str) else bytes(entry.resolved)
            self._write(dest, data)
        elif entry.type in ("Directory", "WritableDirectory") and entry.resolved.startswith("_:"):
            self._mkdirs(dest)
        else:
            self._add_location(entry.resolved, dest)
        self.entries.append(entry)

    def save(self, owner_uuid: str, name: str, properties: dict[str, Any] | None = None) -> str:
        """Save as a new collection; returns its portable data hash. ``properties`` name the run
        that made it (so it can be trashed with the run's intermediates); they are not part of
        the portable data hash, which alone the request mounts."""
        if not self.entries:
            raise ValueError("nothing to stage")
        self.collection.save_new(name=name, owner_uuid=owner_uuid, ensure_unique_name=True,
                                 properties=dict(properties or {}))
        pdh = self.collection.portable_data_hash()
        logger.debug("Staged %d inputs as %s (%d bytes by reference, %d uploaded)", len(self.entries), pdh,
                     self.referenced_bytes, self.uploaded_bytes)
        return pdh

    def close(self) -> None:
        self.collection.stop_threads()

    # -- sources --------------------------------------------------------------------------

    def _add_location(self, location: str, dest: str) -> None:
        if location.startswith("toildir:"):
            self._add_toildir(location, dest)
            return
        url = self.sources.keep_url(location)
        if url is not None:
            self._copy_from_keep(url, dest)
            return
        path = location[len("file://"):] if location.startswith("file://") else location
        if not os.path.isabs(path):
            path = self.sources.local_path_of(location)
            path = path[len("file://"):] if path.startswith("file://") else path
        self._upload_local(path, dest)

    def _add_toildir(self, location: str, dest: str) -> None:
        """A Toil directory: a JSON tree of names -> ``toilfile:`` URIs (see Toil's upload_directory)."""
        parts = location[len("toildir:"):].split("/")
        contents: Any = json.loads(base64.urlsafe_b64decode(parts[0].encode("utf-8")).decode("utf-8"))
        for component in parts[1:]:
            if component not in ("", "."):
                contents = contents[component]
        self._add_tree(contents, dest)

    def _add_tree(self, contents: Any, dest: str) -> None:
        if isinstance(contents, str):
            self._add_location(contents, dest)
            return
        self._mkdirs(dest)
        for name, sub in contents.items():
            self._add_tree(sub, posixpath.join(dest, name))

    def _copy_from_keep(self, url: str, dest: str) -> None:
        from urllib.parse import unquote

        locator, _, path = unquote(url[len("keep:"):]).lstrip("/").partition("/")
        reader = self.sources.reader(locator)
        src = path.rstrip("/") or "."
        item = reader.find(src) if src != "." else reader
        if item is None:
            raise FileNotFoundError(f"{url} is not in Keep")
        parent = posixpath.dirname(dest)
        if parent:
            self._mkdirs(parent)
        if src == ".":
            for name in list(reader.keys()):
                self.collection.copy(name, posixpath.join(dest, name), source_collection=reader, overwrite=True)
        else:
            self.collection.copy(src, dest, source_collection=reader, overwrite=True)
        self.referenced_bytes += _size(item)

    def _upload_local(self, path: str, dest: str) -> None:
        if os.path.isdir(path):
            self._mkdirs(dest)
            for name in sorted(os.listdir(path)):
                self._upload_local(os.path.join(path, name), posixpath.join(dest, name))
            return
        parent = posixpath.dirname(dest)
        if parent:
            self._mkdirs(parent)
        with open(path, "rb") as src, self.collection.open(dest, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        self.uploaded_bytes += os.path.getsize(path)

    def _mkdirs(self, path: str) -> None:
        """Make ``path`` and its parents; an existing directory is fine (the SDK's mkdirs is not)."""
        try:
            self.collection.mkdirs(path)
        except FileExistsError:
            if not isinstance(self.collection.find(path), arvados.collection.Subcollection):
                raise

    def _write(self, dest: str, data: bytes) -> None:
        parent = posixpath.dirname(dest)
        if parent:
            self._mkdirs(parent)
        with self.collection.open(dest, "wb") as out:
            out.write(data)
        self.uploaded_bytes += len(data)


def _size(item: Any) -> int:
    if hasattr(item, "size") and not hasattr(item, "keys"):
        return int(item.size())
    return sum(_size(sub) for sub in item.values()) if hasattr(item, "values") else 0
