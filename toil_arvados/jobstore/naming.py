"""How Toil's job-store objects map onto Arvados collections: names, properties and IDs.

Pure functions (no I/O), so the mapping is unit-testable without a cluster.

Every record is one collection owned by the job store's project:

============  ==============================  ====================================================
kind          collection name                 ID Toil sees
============  ==============================  ====================================================
job           ``job:<job ID>``                ``j-<16 random hex digits>``, chosen locally
file          ``file:<basename>:<random>``    ``<collection UUID>/<quoted basename>``
streamed file ``file:<key>``                  ``n-<key>/<quoted basename>`` (``<key>``: 16 random
                                              hex digits, chosen before the collection exists)
job body      file ``body-<key>`` of the job's   ``b-<key>/<job ID>/<quoted basename>``: a body
              record ``job:<job ID>``           written before its job's record, saved with it
hinted file   ``hint:<slot path>``            the slot path ``<hints>/files/[N/]<basename>``
tombstone     ``hint:<hints>/deleted/...``    (never handed out)
shared file   ``shared:<name>``               the shared name
log           ``log:<random>``                (none)
============  ==============================  ====================================================

Names are unique per owner in Arvados, so ``shared:`` and ``hint:`` names make "create if absent"
atomic on the server: of two racing creators exactly one succeeds, the other gets a 422. Arvados
(by default) refuses ``/`` in collection names, hence ``:`` as the separator and ``|`` in place
of ``/`` inside hint slot paths. The kind, owning job and cleanup flag live in ``properties``, which
list filters can select on (``["properties.toil_kind", "=", "job"]``).
"""
from __future__ import annotations

import hashlib
import re
import uuid
from urllib.parse import quote, unquote

# Property keys and values.
KIND = "toil_kind"
JOB = "toil_job"  # the job a file was written for (informational)
JOB_NAME = "toil_job_name"  # a job record's Toil job name (informational)
CLEANUP_JOB = "toil_cleanup_job"  # set only when the file goes away with that job
PATH = "toil_path"  # a hinted file's slot path, checked on lookup (names may be shortened)
LOG_STATE = "toil_log_state"
STORE_MARK = "toil_job_store"

KIND_JOB = "job"
KIND_FILE = "file"
KIND_TOMBSTONE = "tombstone"
KIND_SHARED = "shared"
KIND_LOG = "log"
LOG_NEW = "new"
LOG_READ = "read"

# Name of the single file inside a job collection.
JOB_FILE = "job"
# Name of the single file inside a log collection.
LOG_FILE = "log"
# Default basename for streams written without one.
STREAM_BASENAME = "stream"

# Arvados stores names in a varchar(255).
MAX_NAME = 250

COLLECTION_UUID_RE = re.compile(r"^[a-z0-9]{5}-4zz18-[a-z0-9]{15}$")
PROJECT_UUID_RE = re.compile(r"^[a-z0-9]{5}-(j7d0g|tpzed)-[a-z0-9]{15}$")
_UNHINTED_ID_RE = re.compile(r"^([a-z0-9]{5}-4zz18-[a-z0-9]{15})/([^/]+)$")
_JOB_ID_RE = re.compile(r"^j-[0-9a-f]{16}$")
# Two segments: never a hinted ID, which always has a ``/files/`` segment in between.
# ``n-``: the record exists once the ID is handed out; ``p-``: a promise's, made by its first write.
_NAMED_ID_RE = re.compile(r"^([np])-([0-9a-f]{16})/([^/]+)$")
# Three segments, the middle one a job ID: never a hinted ID (its middle segment is ``files``).
_BODY_ID_RE = re.compile(r"^b-([0-9a-f]{16})/(j-[0-9a-f]{16})/([^/]+)$")


def _fit(name: str) -> str:
    """Shorten an over-long name, keeping it unique by a hash of the whole."""
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.md5(name.encode("utf-8")).hexdigest()
    return f"{name[: MAX_NAME - 34]}#{digest}"


def _suffix() -> str:
    return uuid.uuid4().hex[:16]


def _clean(text: str, limit: int = 80) -> str:
    return "".join(c for c in text if c.isprintable() and c != "/")[:limit] or "_"


def new_job_id() -> str:
    """A job ID, chosen without asking the server: its record is created with the first save."""
    return f"j-{_suffix()}"


def job_record_name(job_id: str) -> str:
    return f"job:{job_id}"


def job_label(toil_job_name: str) -> str:
    return _clean(toil_job_name)


def file_name(basename: str) -> str:
    return _fit(f"file:{_clean(basename)}:{_suffix()}")


def log_name() -> str:
    return f"log:{_suffix()}"


def shared_name(shared_file_name: str) -> str:
    return _fit(f"shared:{shared_file_name}")


def hint_name(slot_path: str) -> str:
    return _fit("hint:" + slot_path.replace("/", "|"))


def is_tombstone_path(slot_path: str) -> bool:
    """Tombstones sit under ``<hints>/deleted/``; hints can never be ``files`` or ``deleted``."""
    files = slot_path.find("/files/")
    deleted = slot_path.find("/deleted/")
    return deleted != -1 and (files == -1 or deleted < files)


def unhinted_file_id(collection_uuid: str, basename: str) -> str:
    return f"{collection_uuid}/{quote(basename, safe='')}"


def new_file_key() -> str:
    return _suffix()


def named_file_id(key: str, basename: str) -> str:
    """The ID of a file whose record will be named :func:`named_file_name` (``key``)."""
    return f"n-{key}/{quote(basename, safe='')}"


def named_file_name(key: str) -> str:
    return f"file:{key}"


def promise_file_id(key: str, basename: str) -> str:
    """The ID of a promise file whose record, named :func:`named_file_name` (``key``), is made by
    the promise's first write (``KeepJobStore.register_promise``)."""
    return f"p-{key}/{quote(basename, safe='')}"


def parse_named_file_id(file_id: str) -> tuple[str, str] | None:
    """``(key, basename)`` of an ``n-<key>/<basename>`` or ``p-<key>/<basename>`` ID, else None."""
    m = _NAMED_ID_RE.match(file_id)
    return (m.group(2), unquote(m.group(3))) if m else None


def is_promise_file_id(file_id: str) -> bool:
    return file_id.startswith("p-") and _NAMED_ID_RE.match(file_id) is not None


def body_file_id(key: str, job_id: str, basename: str) -> str:
    """The ID of a job body kept as the file :func:`body_member` (``key``) of the job's record."""
    return f"b-{key}/{job_id}/{quote(basename, safe='')}"


def body_member(key: str) -> str:
    return f"body-{key}"


def parse_body_file_id(file_id: str) -> tuple[str, str, str] | None:
    """``(key, job ID, basename)`` of a ``b-<key>/<job ID>/<basename>`` ID, else None."""
    m = _BODY_ID_RE.match(file_id)
    return (m.group(1), m.group(2), unquote(m.group(3))) if m else None


def parse_file_id(file_id: str) -> tuple[str | None, str]:
    """``(collection UUID, basename)`` for an unhinted ID, ``(None, slot path)`` for a hinted one."""
    m = _UNHINTED_ID_RE.match(file_id)
    if m:
        return m.group(1), unquote(m.group(2))
    return None, file_id


def slot_basename(slot_path: str) -> str:
    return slot_path.rsplit("/", 1)[-1]


def basename_of(path_or_name: str | None) -> str:
    base = (path_or_name or "").rstrip("/").rsplit("/", 1)[-1]
    return base or STREAM_BASENAME


def is_job_id(job_id: str) -> bool:
    return bool(_JOB_ID_RE.match(job_id or ""))
