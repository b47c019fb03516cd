"""``keep:`` URL syntax: parse and classify locations without any I/O (no SDK, no Toil import).

The URL forms (see :mod:`toil_arvados.keep_url` for what reading and writing each one does)::

    keep:<portable data hash>[/<path>]
    keep:<collection uuid>[/<path>]
    keep:<project uuid>/<collection name>[/<path>]
    keep:<project uuid>[/]

Path components are percent-encoded (as CWL writes locations). Kept apart from the I/O so the
rules are unit-tested without a cluster and other Keep-aware code can share them cheaply.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote, unquote

SCHEME = "keep"
#: The portable data hash of every empty collection (its manifest is "").
EMPTY_PDH = "d41d8cd98f00b204e9800998ecf8427e+0"

RefKind = Literal["pdh", "collection", "project"]

_PDH_RE = re.compile(r"^[0-9a-f]{32}\+[0-9]+$")
_UUID_RE = re.compile(r"^[a-z0-9]{5}-([a-z0-9]{5})-[a-z0-9]{15}$")
_KIND_BY_INFIX: dict[str, RefKind] = {"4zz18": "collection", "j7d0g": "project", "tpzed": "project"}
_FORMS = "keep:<portable data hash or collection uuid>/<path> or keep:<project uuid>/<collection name>/<path>"


# Errors: one line each, naming the bad thing and what to do ---------------------------------------

class KeepURLError(ValueError):
    """A ``keep:`` URL that is malformed or cannot be used for the requested operation."""


class KeepNotFoundError(FileNotFoundError):
    """The collection, file or directory a ``keep:`` URL names does not exist (or is not readable)."""


class KeepCredentialsError(RuntimeError):
    """No Arvados API host/token configured."""


class KeepAPIError(RuntimeError):
    """The Arvados API refused a request for a reason other than "not found"."""


# Pure parsing (no I/O) -----------------------------------------------------------------------------

def ref_kind(ref: str, url: str | None = None) -> RefKind:
    """Classify the first component of a ``keep:`` URL (PDH, collection uuid or project uuid)."""
    if _PDH_RE.match(ref):
        return "pdh"
    m = _UUID_RE.match(ref)
    if m and m.group(1) in _KIND_BY_INFIX:
        return _KIND_BY_INFIX[m.group(1)]
    raise KeepURLError(f"{url or 'keep:' + ref}: {ref!r} is not a portable data hash, collection uuid "
                       f"or project uuid; expected {_FORMS}")


def normalize_path(path: str, url: str | None = None) -> str:
    """Percent-decode a path inside a collection and drop empty/``.`` parts ("" is the root).

    Keep names cannot contain ``/`` and Toil must never climb out of a collection, so ``..`` and an
    encoded ``/`` are refused rather than interpreted.
    """
    parts = []
    for raw in path.split("/"):
        part = unquote(raw)
        if part in ("", "."):
            continue
        if part == ".." or "/" in part or "\0" in part:
            raise KeepURLError(f"{url or path}: path component {part!r} is not allowed in a keep: URL")
        parts.append(part)
    return "/".join(parts)


def parse_keep_url(url: str) -> tuple[str, str]:
    """``keep:<ref>/<path>`` -> ``(ref, path)`` with ``path`` decoded and normalized ("" = root).

    ``ref`` is a portable data hash, a collection uuid or a project uuid (then the first component
    of ``path`` is a collection name: see :func:`locate`).
    """
    if not url.lower().startswith(SCHEME + ":"):
        raise KeepURLError(f"{url}: not a keep: URL; expected {_FORMS}")
    rest = url[len(SCHEME) + 1:]
    if rest.startswith("/"):
        raise KeepURLError(f"{url}: write keep: URLs without slashes after the colon; expected {_FORMS}")
    ref, _, path = rest.partition("/")
    if not ref:
        raise KeepURLError(f"{url}: missing collection; expected {_FORMS}")
    ref_kind(ref, url)
    return ref, normalize_path(path, url)


@dataclass(frozen=True)
class KeepLocation:
    """Where a ``keep:`` URL points: a collection (by PDH, uuid or project + name) and a path in it."""

    url: str
    kind: RefKind
    ref: str
    #: The collection's name for the project form (None: the URL names the project itself).
    collection_name: str | None
    #: Path inside the collection, "" for its root.
    path: str

    @property
    def is_project_root(self) -> bool:
        return self.kind == "project" and self.collection_name is None


def locate(url: str) -> KeepLocation:
    """Parse a ``keep:`` URL into a :class:`KeepLocation` (no I/O)."""
    ref, path = parse_keep_url(url)
    kind = ref_kind(ref)
    name: str | None = None
    if kind == "project" and path:
        name, _, path = path.partition("/")
    return KeepLocation(url=url, kind=kind, ref=ref, collection_name=name, path=path)


def listing_entry(name: str, is_dir: bool) -> str:
    """One entry of :meth:`KeepURLAccess._list_url`: percent-encoded, ``/``-suffixed for directories."""
    return quote(name) + ("/" if is_dir else "")




def collection_target_path(path: str) -> str:
    """Validate a path inside an output collection (``save_outputs_collection`` keys)."""
    clean = normalize_path(path.lstrip("/"))
    if not clean:
        raise KeepURLError(f"{path!r}: an output path inside the collection must name a file or directory")
    return clean
