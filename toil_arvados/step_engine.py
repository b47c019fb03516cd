"""Native CWL steps, run by the leader without a process or a thread per waiting step.

Composed into the batch system as Toil's ``BatchSystemLocalSupport`` composes local jobs: the
batch system hands each CWL CommandLineTool job to :class:`NativeSteps`, which

1. runs the job's *submit* pass in a small pool of threads (:mod:`step_runner`): cwltool builds
   the command, the inputs are staged by reference, the container request is created;
2. hands the request to the run's one :class:`~toil_arvados.request_tracker.RequestTracker`,
   which follows it (with every other request of the run) from the event bus;
3. when it is Final, runs the job's *collect* pass in the pool, which binds the outputs and
   commits the job, and reports the job's end to Toil like any batch job.

Steps in flight are bounded only by Toil (``--maxJobs``) and the cluster. Thread safety: public
methods may be called from any thread; ``_lock`` guards the step table.
"""
from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass
from typing import Any, Callable

from toil.batchSystems.abstractBatchSystem import BatchJobExitReason, UpdatedBatchJobInfo

from . import arvados_client
from .arvados_client import describe
from .request_slots import RequestSlots
from .request_tracker import RequestTracker, wall_time

logger = logging.getLogger(__name__)

PASS_THREADS = 8  # passes mostly wait on the API; more threads would only contend for the GIL
SHUTDOWN_WAIT = 30.0  # seconds the leader's shutdown gives passes under way


@dataclass
class _Step:
    batch_id: int
    job_store_id: str
    name: str
    cr_uuid: str | None = None
    killed: bool = False


class NativeSteps:
    """The CWL steps of one run (see the module docstring)."""

    def __init__(self, job_store_locator: str, work_dir: str | None, tracker: RequestTracker, context: Any,
                 report: Callable[[UpdatedBatchJobInfo], None], slots: RequestSlots | None = None) -> None:
        self.locator = job_store_locator
        self.tracker = tracker
        self.context = context  # cwl_step.StepContext
        self.report = report
        self.slots = slots or RequestSlots(None)  # --maxJobs: a step holds a slot from its first pass to its end
        self.work_dir = tempfile.mkdtemp(prefix="toil-arvados-steps-", dir=work_dir)
        self._runner: Any = None
        self._lock = threading.Lock()
        self._steps: dict[int, _Step] = {}
        self._pool = ThreadPoolExecutor(max_workers=PASS_THREADS, thread_name_prefix="cwl-step")
        self._pending: set[Future] = set()

    # -- the batch system's side ---------------------------------------------------------------

    def issue(self, batch_id: int, job_store_id: str, name: str, request: bool = True) -> None:
        """Run a job here: a tool's step (``request``: it submits a container request, so it
        waits for a --maxJobs slot), or CWL's bookkeeping, which submits nothing."""
        step = _Step(batch_id, job_store_id, name)
        with self._lock:
            self._steps[batch_id] = step
        if request:
            self.slots.acquire(batch_id, lambda _deferred: self._submit(step))
        else:
            self._submit(step)

    def issued(self) -> list[int]:
        with self._lock:
            return list(self._steps)

    def running(self) -> dict[int, float]:
        """Steps whose container runs: batch id -> seconds since it started."""
        started = self.tracker.started()
        now = time.time()
        with self._lock:
            return {s.batch_id: now - started[s.cr_uuid] for s in self._steps.values()
                    if s.cr_uuid in started}

    def kill(self, batch_ids: list[int]) -> None:
        """Forget these steps and cancel their requests (a pass under way cancels its own)."""
        with self._lock:
            doomed = [self._steps.pop(b) for b in batch_ids if b in self._steps]
            for step in doomed:
                step.killed = True
        for step in doomed:
            self.slots.release(step.batch_id)
            self.context.finished.pop(step.job_store_id, None)
            if self._runner is not None:
                self._runner.forget(step.job_store_id)
            if step.cr_uuid and self.tracker.forget(step.cr_uuid):
                _cancel(self.context.api, step.cr_uuid)

    def shutdown(self) -> None:
        """Start no more passes, and give those under way a little time to end: a pass that
        submits after this cancels its own request (its step is marked killed); the requests of
        those that ended are the caller's to cancel."""
        with self._lock:
            for step in self._steps.values():
                step.killed = True
            self._steps.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            pending = list(self._pending)
        futures_wait(pending, timeout=SHUTDOWN_WAIT)

    # -- passes ----------------------------------------------------------------------------------

    def _pass(self, step: _Step) -> None:
        from .cwl_step import step_pass

        if step.killed:
            return
        try:
            with step_pass(self.context, step.job_store_id):
                result = self._step_runner().run_pass(step.job_store_id, step.name)
        except Exception as e:  # the runner reports job failures itself; this is ours
            logger.error("%s", describe(e, f"could not run CWL step {step.name}"))
            self._done(step, 1)
            return
        if result.submitted is None:
            self._done(step, result.exit_code)
        elif step.killed:
            _cancel(self.context.api, result.submitted["uuid"])
        else:
            step.cr_uuid = result.submitted["uuid"]
            self.tracker.track(result.submitted, lambda cr, c: self._request_final(step, cr, c), read_output=True)
            if step.killed and self.tracker.forget(step.cr_uuid):  # killed while it was submitted
                _cancel(self.context.api, step.cr_uuid)

    def _request_final(self, step: _Step, cr: dict, container: dict | None) -> None:
        """The tracker's callback: collect in the pool, not in the tracker's thread."""
        self.context.finished[step.job_store_id] = (cr, container)
        self._submit(step)

    def _submit(self, step: _Step) -> None:
        try:
            future = self._pool.submit(self._pass, step)
        except RuntimeError:  # shut down meanwhile
            return
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._forget_future)

    def _forget_future(self, future: Future) -> None:
        with self._lock:
            self._pending.discard(future)

    def _done(self, step: _Step, exit_code: int) -> None:
        self.slots.release(step.batch_id)
        finished = self.context.finished.pop(step.job_store_id, None)
        container = finished[1] if finished else None
        with self._lock:
            if self._steps.pop(step.batch_id, None) is None:
                return  # killed meanwhile: Toil must not hear of it
        reason = BatchJobExitReason.FINISHED if exit_code == 0 else BatchJobExitReason.FAILED
        self.report(UpdatedBatchJobInfo(jobID=step.batch_id, exitStatus=exit_code, exitReason=reason,
                                        wallTime=wall_time(container), backing_id=step.cr_uuid))

    def _step_runner(self) -> Any:
        with self._lock:
            if self._runner is None:
                from .cwl_step import adopt
                from .step_runner import StepRunner

                self._runner = StepRunner(_open_job_store(self.locator), os.path.join(self.work_dir, "jobs"), adopt)
            return self._runner


def _open_job_store(locator: str) -> Any:
    """The leader's own job store instance where it can be shared (its caches then serve the
    steps too), else a second instance of the same store."""
    from toil.common import Toil

    from .jobstore.keep_jobstore import KeepJobStore

    shared = getattr(KeepJobStore, "instance_for", None)
    store = shared(locator) if shared is not None else None
    return store if store is not None else Toil.resumeJobStore(locator)


def _cancel(api: Any, cr_uuid: str) -> None:
    arvados_client.cancel_request(api, cr_uuid, quietly=True)
