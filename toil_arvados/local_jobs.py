"""Toil's local-job batch system, started only when a job needs it.

Toil's ``BatchSystemLocalSupport`` runs jobs marked local (CWL bookkeeping, a user's local
Python jobs) in a :class:`~toil.batchSystems.singleMachine.SingleMachineBatchSystem` made when
the batch system is. Its thread wakes every 10 ms whether or not it has anything to run: with the
step engine running CWL's bookkeeping in the leader's own threads, a CWL run usually never
gives it a job, yet it cost about a sixth of the leader's CPU. :class:`LazyLocalBatch` stands in
for it until the first local job, with the same surface ``BatchSystemLocalSupport`` uses.

Thread safety: any method may be called from any thread. Job IDs (Toil's ``getNextJobID`` reads
and bumps ``jobIndex`` under ``jobIndexLock``) continue unbroken when the real one starts.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class LazyLocalBatch:
    """A ``SingleMachineBatchSystem`` made by ``factory`` on the first issued job."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self._factory = factory
        self._real: Any = None
        self._start_lock = threading.Lock()
        self.jobIndexLock = threading.Lock()  # taken by Toil's getNextJobID around jobIndex
        self._index = 0

    @property
    def jobIndex(self) -> int:
        return self._real.jobIndex if self._real is not None else self._index

    @jobIndex.setter
    def jobIndex(self, value: int) -> None:
        if self._real is not None:
            self._real.jobIndex = value
        else:
            self._index = value

    @property
    def started(self) -> bool:
        return self._real is not None

    def _start(self) -> Any:
        with self._start_lock:
            if self._real is None:
                real = self._factory()
                with self.jobIndexLock:
                    real.jobIndex = self._index
                    real.jobIndexLock = self.jobIndexLock
                    self._real = real
        return self._real

    def issueBatchJob(self, *args: Any, **kwargs: Any) -> int:
        return int(self._start().issueBatchJob(*args, **kwargs))

    def killBatchJobs(self, job_ids: list[int]) -> None:
        if self._real is not None:
            self._real.killBatchJobs(job_ids)

    def getIssuedBatchJobIDs(self) -> list[int]:
        return list(self._real.getIssuedBatchJobIDs()) if self._real is not None else []

    def getRunningBatchJobIDs(self) -> dict[int, float]:
        return dict(self._real.getRunningBatchJobIDs()) if self._real is not None else {}

    def getUpdatedBatchJob(self, maxWait: int) -> Any:
        return self._real.getUpdatedBatchJob(maxWait) if self._real is not None else None

    def shutdown(self) -> None:
        if self._real is not None:
            self._real.shutdown()
