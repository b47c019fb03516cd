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
