"""The one home of changes to Toil's own behaviour, each guarded by the Toil version it was
written against.

Every patch here exists because this plugin runs Toil code somewhere Toil does not expect
(e.g. a job body in a thread of the leader). A Toil upgrade must revisit each of them, so
applying one to another Toil version fails loudly instead of silently misbehaving.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

TESTED_TOIL = ("9.6.",)


class ToilVersionError(RuntimeError):
    """The installed Toil is not one these patches were written for."""


def check_toil_version() -> None:
    from toil.version import baseVersion

    if not baseVersion.startswith(TESTED_TOIL):
        raise ToilVersionError(
            f"toil-arvados supports Toil {', '.join(v + 'x' for v in TESTED_TOIL)}, but Toil {baseVersion} is "
            "installed: install toil[cwl]==9.6.0 (pip install 'toil[cwl]==9.6.0')")


class PerThreadSet:
    """A set-like object holding one set per thread.

    Toil keeps the promise files a job has read in one class-wide set, ``Promise.filesToDelete``,
    which its job executor deletes and clears when a job succeeds: right for a worker process
    running one job at a time, wrong for a leader running several step jobs in threads (one
    job's success would delete the promise files another has just read). Toil only adds to it,
    iterates it and clears it, always from the thread running the job.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def _set(self) -> set[str]:
        s = getattr(self._local, "s", None)
        if s is None:
            s = self._local.s = set()
        return s

    def add(self, item: str) -> None:
        self._set().add(item)

    def discard(self, item: str) -> None:
        self._set().discard(item)

    def clear(self) -> None:
        self._set().clear()

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._set()))

    def __len__(self) -> int:
        return len(self._set())

    def __contains__(self, item: Any) -> bool:
        return item in self._set()


_applied: set[str] = set()
_lock = threading.Lock()


def promise_files_per_thread() -> None:
    """Make ``Promise.filesToDelete`` per thread (see :class:`PerThreadSet`). Idempotent."""
    with _lock:
        if "promise_files" in _applied:
            return
        check_toil_version()
        from toil.job import Promise

        if not isinstance(Promise.filesToDelete, set) or Promise.filesToDelete:
            raise ToilVersionError("Toil's Promise.filesToDelete is not the empty set this patch replaces")
        Promise.filesToDelete = PerThreadSet()  # type: ignore[assignment]
        _applied.add("promise_files")


# -- Toil internals used as they are ---------------------------------------------------------------

def read_job_body(job_store: Any, desc: Any) -> bytes:
    """The pickled body of the job ``desc`` describes: the reading half of ``Job.loadJob``.

    Split from the unpickling so the leader can run a step job twice (submit, then collect)
    while reading its body from the job store once."""
    check_toil_version()
    file_store_id, _module = desc.get_body()
    if file_store_id == "firstJob":
        stream = job_store.read_shared_file_stream(file_store_id)
    else:
        stream = job_store.read_file_stream(file_store_id)
    with stream as f:
        return bytes(f.read())


def job_from_body(desc: Any, body: bytes) -> Any:
    """The :class:`toil.job.Job` in ``body``, attached to ``desc``: the unpickling half of
    ``Job.loadJob`` (same steps, same order)."""
    import io

    from toil.job import Job

    _file_store_id, module_descriptor = desc.get_body()
    user_module = Job._loadUserModule(module_descriptor)
    job = Job._unpickle(user_module, io.BytesIO(body), requireInstanceOf=Job)
    job._description = desc
    job._registry = {job.jobStoreID: job}
    return job
