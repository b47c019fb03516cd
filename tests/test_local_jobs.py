"""The local-job batch system starts only with the first local job (no 10 ms polling thread in a
CWL run that never needs it), and job IDs run on unbroken across the start."""
from __future__ import annotations

import threading

from toil.batchSystems.local_support import BatchSystemLocalSupport

from toil_arvados.local_jobs import LazyLocalBatch


class _FakeSingleMachine:
    def __init__(self) -> None:
        self.jobIndex = 0
        self.jobIndexLock = threading.Lock()
        self.issued: list[int] = []
        self.stopped = False

    def issueBatchJob(self, command: str, job_desc: object, job_environment: object = None) -> int:
        with self.jobIndexLock:
            job_id = self.jobIndex
            self.jobIndex += 1
        self.issued.append(job_id)
        return job_id

    def getIssuedBatchJobIDs(self) -> list[int]:
        return list(self.issued)

    def getRunningBatchJobIDs(self) -> dict[int, float]:
        return {i: 1.0 for i in self.issued}

    def getUpdatedBatchJob(self, maxWait: int) -> str:
        return "update"

    def killBatchJobs(self, ids: list[int]) -> None:
        self.issued = [i for i in self.issued if i not in ids]

    def shutdown(self) -> None:
        self.stopped = True


class _Support:
    """Toil's own getNextJobID over the stand-in, as the batch system uses it."""

    getNextJobID = BatchSystemLocalSupport.getNextJobID

    def __init__(self, local: LazyLocalBatch) -> None:
        self.localBatch = local


def test_nothing_starts_until_a_local_job_comes_and_ids_continue():
    made: list[_FakeSingleMachine] = []
    lazy = LazyLocalBatch(lambda: made.append(_FakeSingleMachine()) or made[-1])
    support = _Support(lazy)
    assert [support.getNextJobID() for _ in range(3)] == [0, 1, 2]
    assert lazy.getIssuedBatchJobIDs() == [] and lazy.getRunningBatchJobIDs() == {}
    assert lazy.getUpdatedBatchJob(0) is None
    lazy.killBatchJobs([1])
    lazy.shutdown()
    assert not made and not lazy.started
    assert lazy.issueBatchJob("cmd", object()) == 3  # the real one takes up the numbering
    assert support.getNextJobID() == 4 and lazy.issueBatchJob("cmd", object()) == 5
    assert len(made) == 1 and made[0].jobIndexLock is lazy.jobIndexLock
    assert lazy.getIssuedBatchJobIDs() == [3, 5] and lazy.getUpdatedBatchJob(0) == "update"
    lazy.shutdown()
    assert made[0].stopped


def test_ids_stay_unique_while_it_starts_under_concurrent_use():
    lazy = LazyLocalBatch(_FakeSingleMachine)
    support = _Support(lazy)
    got: list[int] = []
    lock = threading.Lock()

    def take(issue: bool) -> None:
        for _ in range(200):
            job_id = lazy.issueBatchJob("cmd", object()) if issue else support.getNextJobID()
            with lock:
                got.append(job_id)

    threads = [threading.Thread(target=take, args=(i % 2 == 0,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 800 and len(set(got)) == 800
