"""Run one Toil job's body in this (the leader's) process, as Toil's worker would.

Native CWL steps need no worker container and no worker process: their job only prepares a
container request and, once Arvados has finished it, binds its outputs. So the leader runs the
job itself, in a pool thread, in two passes (:mod:`toil_arvados.step_engine`):

1. the *submit* pass runs the job until its tool's request is submitted; the tool then raises
   :class:`StepSubmitted` and nothing is committed (the job store is untouched);
2. the *collect* pass, once the request is Final, runs the job again from its description;
   the tool finds its finished request instead of submitting, binds the outputs, and the job
   completes and is committed exactly as Toil's worker commits it.

A request Arvados satisfies at once (reuse of a finished container) completes in the first
pass. Re-running the job's preparation costs milliseconds; holding a thread or a process per
waiting step (as Toil's worker model would) costs far more at thousands of steps.

Differences from Toil's worker, and why: no ``chdir`` (threads share the working directory),
no job state file (it lets a later worker clean up after a crashed one; a crashed leader takes
its threads with it), no disk usage scan (the tool's disk is in its container), and promise
files are tracked per thread (:func:`toil_patches.promise_files_per_thread`).
"""
from __future__ import annotations

import logging
import os
import pickle
import shutil
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

from toil.fileStores import FileID
from toil.fileStores.nonCachingFileStore import NonCachingFileStore
from toil.job import Job, Promise
from toil.lib.io import make_public_dir

from . import toil_patches
from .arvados_client import ArvadosSetupError, scrub

logger = logging.getLogger(__name__)


READ_CACHE_BYTES = 256 << 20


class StepSubmitted(BaseException):
    """Raised by a step's tool once its request is submitted and not yet Final.

    A ``BaseException`` so that neither cwltool's executor nor the job's own code mistakes it
    for a failure of the tool: it unwinds the whole job without a commit."""

    def __init__(self, cr: dict) -> None:
        super().__init__(cr["uuid"])
        self.cr = cr


@dataclass(frozen=True)
class PassResult:
    """How a pass ended: ``submitted`` (a request to wait for), or an exit code as a worker's."""

    exit_code: int
    submitted: dict | None = None


class StepFileStore(NonCachingFileStore):
    """Toil's non-caching file store, minus what only a worker process may do (see the module
    docstring)."""

    def __init__(self, job_store: Any, desc: Any, file_store_dir: str, dirs: tuple[str, str]) -> None:
        """``AbstractFileStore.__init__`` and ``NonCachingFileStore.__init__`` (Toil 9.6), minus
        their look-ups of the workflow's local and coordination dirs: the latter runs a process
        to check the filesystem can be locked, once per job in Toil, once per run here (``dirs``).
        A test checks these are the attributes Toil's own file store has."""
        self.jobStore = job_store
        self.jobDesc = desc
        self.localTempDir = os.path.abspath(file_store_dir)
        self.workflow_dir, self.coordination_dir = dirs
        self.jobName = str(desc)
        self.waitForPreviousCommit = _committed
        self.logging_messages: list[dict[str, int | str]] = []
        self.logging_user_streams: list[dict[str, str]] = []
        self.filesToDelete: set[str] = set()
        self._accessLog: list[tuple[str, ...]] = []
        self._job_disk_used: int | None = None
        self.jobStateFile = None
        self.localFileMap: defaultdict[str, list[str]] = defaultdict(list)

    def startCommit(self, jobState: bool = False) -> None:
        """Toil's commit, or, for a job that leaves nothing to run, the job store's
        ``finish_job`` (no write: the leader deletes the job next; see KeepJobStore.finish_job)."""
        finish = getattr(self.jobStore, "finish_job", None)
        if jobState and finish is not None and _leaves_nothing(self.jobDesc):
            finish(self.jobDesc, sorted(self.filesToDelete))
            return
        super().startCommit(jobState)

    @contextmanager
    def open(self, job: Job) -> Iterator[None]:
        self.localTempDir = make_public_dir(self.localTempDir, suggested_name="job")
        try:
            yield
        finally:
            shutil.rmtree(self.localTempDir, ignore_errors=True)


_tmpdir_lock = threading.Lock()


@contextmanager
def _keeping_tmpdir() -> Iterator[None]:
    """Toil's CWL job points ``TMPDIR`` of the whole process at its temp dir, which goes away
    with the job: the leader's own setting comes back afterwards."""
    original = os.environ.get("TMPDIR")
    try:
        yield
    finally:
        with _tmpdir_lock:
            if original is None:
                os.environ.pop("TMPDIR", None)
            else:
                os.environ["TMPDIR"] = original


class StepRunner:
    """Runs job bodies from ``job_store`` in the calling thread. Thread-safe: each call has
    its own job, file store and temp dir."""

    def __init__(self, job_store: Any, work_dir: str, adopt: Callable[[Job], None]) -> None:
        """``adopt`` is applied to each job as it is loaded (e.g. to make a CWL job's tool a
        native step)."""
        toil_patches.promise_files_per_thread()
        toil_patches.promises_fulfilled_blindly()
        toil_patches.promises_registered_lazily()
        toil_patches.read_promises_through(job_store)
        toil_patches.cwl_schemas_by_reference()
        self.job_store = job_store
        self.adopt = adopt
        # What a submit pass read, for its collect pass: the job store is not read twice. The
        # leader leaves an issued job's description alone, and a body never changes.
        self._read: dict[str, tuple[bytes, bytes]] = {}  # job store id -> (description, body) pickles
        self._read_bytes = 0
        self._dirs: tuple[str, str] | None = None
        self._read_lock = threading.Lock()
        self.work_dir = work_dir
        os.makedirs(work_dir, exist_ok=True)

    def run_pass(self, job_store_id: str, name: str) -> PassResult:
        """One pass over the job (see the module docstring); never raises for a failing job."""
        Promise.filesToDelete.clear()  # what an earlier, abandoned pass of this thread read
        read = self._take_read(job_store_id)
        try:
            with self._running_here(job_store_id):
                return self._pass(job_store_id, name, read)
        finally:
            Promise.filesToDelete.clear()

    def _workflow_dirs(self) -> tuple[str, str]:
        """The workflow's local dir and coordination dir on this machine, looked up once."""
        with self._read_lock:
            if self._dirs is None:
                from toil.common import Toil

                config = self.job_store.config
                self._dirs = (Toil.getLocalWorkflowDir(config.workflowID, config.workDir),
                              Toil.get_local_workflow_coordination_dir(config.workflowID, config.workDir,
                                                                       config.coordination_dir))
            return self._dirs

    def _running_here(self, job_store_id: str) -> Any:
        """Tell a job store that can use it (the Keep job store) that this process runs the job:
        its reads of the job are then served from what this process wrote."""
        running_here = getattr(self.job_store, "running_here", None)
        return running_here(job_store_id) if running_here is not None else nullcontext()

    def _pass(self, job_store_id: str, name: str, read: tuple[bytes, bytes] | None) -> PassResult:
        try:
            if read is None:
                read = self._load(job_store_id)
                if read is None:  # already done (e.g. by a leader before --restart)
                    return PassResult(0)
            with _keeping_tmpdir():
                self._run(read)
            return PassResult(0)
        except StepSubmitted as s:
            self._keep_read(job_store_id, read)
            return PassResult(0, submitted=s.cr)
        except ArvadosSetupError as e:
            logger.error("%s: %s", name, e)
            return PassResult(1)
        except Exception as e:
            return PassResult(self._failure(e, name))

    def forget(self, job_store_id: str) -> None:
        """Drop what a submit pass kept for a job that will not be collected (killed)."""
        self._take_read(job_store_id)

    def _keep_read(self, job_store_id: str, read: tuple[bytes, bytes]) -> None:
        """Keep a job's pickles for its collect pass, within :data:`READ_CACHE_BYTES` (a CWL
        job's body is some 200 KB: at thousands of steps in flight the collect pass reads it
        from the job store again rather than hold it)."""
        size = len(read[0]) + len(read[1])
        with self._read_lock:
            if self._read_bytes + size <= READ_CACHE_BYTES:
                self._read[job_store_id] = read
                self._read_bytes += size

    def _take_read(self, job_store_id: str) -> tuple[bytes, bytes] | None:
        with self._read_lock:
            read = self._read.pop(job_store_id, None)
            if read is not None:
                self._read_bytes -= len(read[0]) + len(read[1])
            return read

    def _load(self, job_store_id: str) -> tuple[bytes, bytes] | None:
        """The job's description and body, pickled; None if it has no body left to run."""
        desc = self.job_store.load_job(job_store_id)
        if not desc.has_body():
            return None
        return pickle.dumps(desc, protocol=pickle.HIGHEST_PROTOCOL), toil_patches.read_job_body(self.job_store, desc)

    def _run(self, read: tuple[bytes, bytes]) -> None:
        desc = pickle.loads(read[0])
        job = toil_patches.job_from_body(desc, read[1])
        self.adopt(job)
        file_store = StepFileStore(self.job_store, desc, self.work_dir, self._workflow_dirs())
        with file_store.open(job):
            job._runner(jobGraph=None, jobStore=self.job_store, fileStore=file_store, defer=_no_defer)
            self._commit(job, file_store)
        for message in file_store.logging_messages:
            logger.log(int(message.get("level", logging.INFO)), "%s", message.get("text"))

    @staticmethod
    def _commit(job: Job, file_store: StepFileStore) -> None:
        """What Toil's job executor does after a successful body: drop the promise files the
        job read, then commit its description (the body link cut, return values saved)."""
        for file_id in Promise.filesToDelete:
            file_store.deleteGlobalFile(FileID(file_id, 0))
        Promise.filesToDelete.clear()
        file_store.startCommit(jobState=True)

    @staticmethod
    def _failure(e: Exception, name: str) -> int:
        """The exit code Toil's worker would report for ``e``, after logging it in one place."""
        from toil.cwl.utils import CWL_UNSUPPORTED_REQUIREMENT_EXCEPTION, CWL_UNSUPPORTED_REQUIREMENT_EXIT_CODE

        if isinstance(e, CWL_UNSUPPORTED_REQUIREMENT_EXCEPTION):
            logger.error("%s: %s", name, scrub(str(e)))
            return CWL_UNSUPPORTED_REQUIREMENT_EXIT_CODE
        from cwl_utils.errors import WorkflowException

        if isinstance(e, WorkflowException):
            logger.error("%s failed: %s", name, scrub(str(e)))
        else:
            logger.error("%s failed: %s", name, scrub(f"{type(e).__name__}: {e}"), exc_info=logger.isEnabledFor(logging.DEBUG))
        return 1


def _leaves_nothing(desc: Any) -> bool:
    """Whether Toil's leader deletes this committed job as soon as it sees it (leader.py: no
    body, no successors, no services; checkpoints are handled otherwise)."""
    return (not desc.has_body() and desc.nextSuccessors() is None and not desc.services
            and not desc.filesToDelete and not getattr(desc, "checkpoint", None))


def _committed() -> bool:
    """No earlier job of this file store's to wait for (each pass has its own)."""
    return True


def _no_defer(function: Any, *args: Any, **kwargs: Any) -> None:
    """Deferred functions (cleanup a job registers to run even if its worker dies) run at once
    after the job; CWL steps register none."""
    raise ArvadosSetupError("a native CWL step registered a deferred function, which the leader cannot run")
