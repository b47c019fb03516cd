"""``--batchSystem arvados``: every Toil job is an Arvados container request.

Toil stays the workflow engine and Arvados the scheduler: this class only routes each job to the
part that runs it, and reports back when Arvados says it ended:

* Toil worker jobs become container requests running Toil's worker in the worker image
  (:mod:`container_request` describes them);
* CWL CommandLineTool jobs (unless ``--noArvadosNativeSteps``) are run by the leader itself
  (:mod:`step_engine`): each submits the tool's own command line as a container request, so
  Arvados can reuse the step across runs and Workbench shows it under one request per run;
* jobs Toil marks ``local`` (CWL's small bookkeeping jobs) run on the leader, as with Toil's
  other cluster batch systems.

Every request of the run is followed by one :class:`~toil_arvados.request_tracker.RequestTracker`
(event bus, backed by batched polling every ``--arvadosPollInterval`` seconds).
"""
from __future__ import annotations

import logging
import queue
import shlex
import sys
import threading
import time
from argparse import ArgumentParser, _ArgumentGroup
from typing import Any

from toil.batchSystems.abstractBatchSystem import (
    EXIT_STATUS_UNAVAILABLE_VALUE,
    BatchJobExitReason,
    InsufficientSystemResources,
    UpdatedBatchJobInfo,
)
from toil.batchSystems.cleanup_support import BatchSystemCleanupSupport
from toil.batchSystems.options import OptionSetter
from toil.bus import JobUpdatedMessage, MessageBus
from toil.common import Config
from toil.job import JobDescription, Requirer
from toil.resource import Resource

from . import arvados_client, cwl_submit, intermediates, output_collection, step_placement, toil_patches
from .images.worker import check_worker_image, default_image_name
from .arvados_client import ArvadosSetupError, describe, scrub
from .cwl_hints import OOM_EXIT_CODE
from .cwl_step_request import PROPERTY_WORKFLOW_RUN, StepSettings
from .local_jobs import LazyLocalBatch
from .request_slots import RequestSlots
from .request_tracker import RequestTracker, wall_time
from .container_request import (
    PROPERTY_JOB_STORE_ID,
    PROPERTY_WORKFLOW,
    WORK_DIR,
    JobResources,
    SubmitSettings,
    container_request_body,
    runtime_constraints,
    scheduling_parameters,
    unfit,
    unsupported_accelerator,
)

logger = logging.getLogger(__name__)

DEFAULT_WORKER_IMAGE = default_image_name()
_STDERR_TAIL = 40  # lines of a failed job's stderr copied into Toil's log
_SHUTDOWN_BUDGET = 30.0  # seconds a cancel at shutdown waits through an outage
_LOCAL_POLL_SECONDS = 0.1  # how often getUpdatedBatchJob also looks at the leader-local jobs
# Toil's CWL bookkeeping jobs (marked local): the step engine runs them in the leader's threads
# instead of a process each (a second of imports apiece). They only evaluate expressions and add
# jobs; anything else Toil marks local (e.g. a user's Python job) still gets its own process.
IN_LEADER_JOBS = frozenset({"CWLWorkflow", "CWLScatter", "CWLGather", "ResolveIndirect", "CWLJobWrapper",
                            "CWLJob", "CWLLoop", "CWLLoopAccumulate"})


class ArvadosBatchSystem(BatchSystemCleanupSupport):
    """Runs Toil jobs as Arvados container requests."""

    @classmethod
    def supportsAutoDeployment(cls) -> bool:
        """True: the user's script reaches the workers through the job store (Toil's resources),
        as on Toil's Kubernetes batch system; the worker image holds only Toil and this plugin."""
        return True

    def setUserScript(self, userScript: Resource) -> None:
        self.user_script = userScript

    def __init__(self, config: Config, maxCores: float, maxMemory: float, maxDisk: int) -> None:
        super().__init__(config, maxCores, maxMemory, maxDisk)
        self._lazy_local_jobs(config, maxCores, maxMemory, maxDisk)
        # Toil's set_log_level() silences every non-Toil logger already created (ours included,
        # as the plugin is imported first), which would hide failed jobs' stderr: inherit again.
        logging.getLogger("toil_arvados").setLevel(logging.NOTSET)
        cwl_submit.refuse_unhandled(sys.argv[1:])
        arvados_client.mark_starting()
        self.api = arvados_client.connect()
        project, image = self._check_cluster(config)
        self.user_script: Resource | None = None
        self.file_job_store = _is_file_job_store(config.jobStore)
        self.settings = _submit_settings(config, project, image, self.cluster)
        self.poll_interval = float(getattr(config, "arvados_poll_interval", None) or 10.0)
        self.native_steps = bool(getattr(config, "arvados_native_steps", True))
        self.step_image = getattr(config, "arvados_default_image", None) or image
        if self.native_steps and self.step_image != image:
            arvados_client.check_image(self.api, self.step_image)
        self.step_settings = _step_settings(config, self.settings, self.cluster)
        # Start-up checks passed: from here on, every process of this run rides out API outages.
        arvados_client.mark_started()
        self._start_tracking(config)
        toil_patches.progress_bar_shows_batch_system_summary()
        logger.info("Arvados batch system: submitting to project %s with image %s", project, image)

    def _check_cluster(self, config: Config) -> tuple[str, str]:
        """Fail in one line before anything is submitted: credentials, project, worker image
        (its versions too); keep the cluster's config. The project's uuid and the image."""
        user = arvados_client.check_connection(self.api)
        project = arvados_client.resolve_project(self.api, getattr(config, "arvados_project", None), user)
        image = getattr(config, "arvados_worker_image", None) or DEFAULT_WORKER_IMAGE
        self.image_pdh = arvados_client.check_image(self.api, image)
        check_worker_image(self.api, image)
        self.cluster = arvados_client.cluster_config(self.api)
        return project, image

    def _start_tracking(self, config: Config) -> None:
        self._parent_request: str | None = None
        self._steps: Any = None  # step_engine.NativeSteps, made when the first step comes
        self._lock = threading.RLock()
        self._jobs: dict[int, str | None] = {}  # batch id of a worker job -> its request (None: waiting for --maxJobs)
        self._updates: queue.Queue[UpdatedBatchJobInfo] = queue.Queue()
        self._leader_work = threading.Event()  # see set_message_bus
        self._reattach: dict[str, dict] = {}  # job store id -> running request (after --restart)
        if getattr(config, "restart", False):
            self._load_reattachable()
        self.tracker = RequestTracker(self.api, self.poll_interval)
        self.slots = RequestSlots(getattr(config, "max_jobs", None))  # Toil's --maxJobs

    def _lazy_local_jobs(self, config: Config, maxCores: float, maxMemory: float, maxDisk: int) -> None:
        """Toil made its local-job batch system already (BatchSystemLocalSupport): stop it, and
        make it again only if a local job comes that does not run in the leader (local_jobs)."""
        from toil.batchSystems.singleMachine import SingleMachineBatchSystem
        from toil.lib.threading import cpu_count

        self.localBatch.shutdown()
        max_local = config.max_local_jobs if config.max_local_jobs is not None else cpu_count()
        self.localBatch = LazyLocalBatch(lambda: SingleMachineBatchSystem(  # type: ignore[assignment]
            config, maxCores, maxMemory, maxDisk, max_jobs=max_local))

    # -- options -------------------------------------------------------------------------------

    @classmethod
    def add_options(cls, parser: ArgumentParser | _ArgumentGroup) -> None:
        parser.add_argument("--arvadosProject", dest="arvados_project", default=None,
                            env_var="TOIL_ARVADOS_PROJECT",
                            help="UUID of the Arvados project that owns the container requests "
                                 "(default: your home project)")
        parser.add_argument("--arvadosWorkerImage", dest="arvados_worker_image", default=None,
                            env_var="TOIL_ARVADOS_WORKER_IMAGE",
                            help="Docker image (in Keep) with toil-arvados installed, to run Toil workers "
                                 f"(default: {DEFAULT_WORKER_IMAGE})")
        parser.add_argument("--arvadosWorkerPython", dest="arvados_worker_python", default=None,
                            env_var="TOIL_ARVADOS_WORKER_PYTHON",
                            help="Python interpreter inside the worker image (default: python3, which the "
                                 "worker image puts first on its PATH)")
        parser.add_argument("--arvadosPriority", dest="arvados_priority", default=500, type=int,
                            env_var="TOIL_ARVADOS_PRIORITY",
                            help="Priority of submitted container requests, 1-1000 (default: %(default)s)")
        parser.add_argument("--arvadosReuse", dest="arvados_reuse", default=False, action="store_true",
                            help="Let Arvados reuse identical finished containers for Toil worker jobs "
                                 "(off by default: a worker's effect is on the job store, not its output)")
        parser.add_argument("--noArvadosReuse", dest="arvados_reuse", action="store_false",
                            help="Never reuse containers (the default)")
        parser.add_argument("--arvadosPollInterval", dest="arvados_poll_interval", default=10.0, type=float,
                            env_var="TOIL_ARVADOS_POLL_INTERVAL",
                            help="Seconds between batched state reconciliations backing up the event "
                                 "bus (default: %(default)s)")
        parser.add_argument("--arvadosNativeSteps", dest="arvados_native_steps", default=True, action="store_true",
                            help="Run each CWL CommandLineTool as its own container request in the tool's "
                                 "image, reusable across runs (the default)")
        parser.add_argument("--noArvadosNativeSteps", dest="arvados_native_steps", action="store_false",
                            help="Run CWL CommandLineTools inside Toil worker containers instead")
        parser.add_argument("--arvadosDefaultImage", dest="arvados_default_image", default=None,
                            env_var="TOIL_ARVADOS_DEFAULT_IMAGE",
                            help="Image for CWL tools without a DockerRequirement (and for all tools with "
                                 "--no-container) (default: the worker image)")
        parser.add_argument("--noArvadosStepReuse", dest="arvados_step_reuse", default=True, action="store_false",
                            help="Never let Arvados reuse finished containers for CWL steps (by default it "
                                 "does, unless a tool says WorkReuse: false)")
        parser.add_argument("--arvadosMaxAttempts", dest="arvados_max_attempts", default=None, type=int,
                            help="container_count_max for each request: how often Arvados itself retries a "
                                 "container lost to infrastructure (default: the cluster's setting)")
        step_placement.add_options(parser)
        cwl_submit.add_options(parser)
        output_collection.add_options(parser)
        intermediates.add_options(parser)

    @classmethod
    def setOptions(cls, setOption: OptionSetter) -> None:
        for name in ("arvados_project", "arvados_worker_image", "arvados_worker_python", "arvados_priority",
                     "arvados_reuse", "arvados_poll_interval", "arvados_max_attempts", "arvados_native_steps",
                     "arvados_default_image", "arvados_step_reuse", "arvados_output_name",
                     "arvados_output_properties", "arvados_intermediate_output_ttl", "arvados_trash_intermediate"):
            setOption(name)
        step_placement.set_options(setOption)

    # -- resources -----------------------------------------------------------------------------

    def check_resource_request(self, requirer: Requirer) -> None:
        """Refuse at once what no instance type can run, judged as dispatch-cloud judges the request
        (RAM with keep cache and reserve, scratch with the image), instead of queueing it forever."""
        super().check_resource_request(requirer)
        res = JobResources(cores=_requirement(requirer, "cores", 1), memory=_requirement(requirer, "memory", 0),
                           disk=_requirement(requirer, "disk", 0),
                           accelerators=tuple(_requirement(requirer, "accelerators", ())),
                           preemptible=bool(_requirement(requirer, "preemptible", False)))
        why = unfit(runtime_constraints(res), {WORK_DIR: {"kind": "tmp", "capacity": int(res.disk)}},
                    scheduling_parameters(res.preemptible or None, self.settings.preemptible_instances),
                    self.image_pdh, self.cluster)
        if why is not None:
            raise InsufficientSystemResources(requirer, why.resource, why.available,
                                              details=[f"Arvados: {why.detail}."])

    def _check_accelerator_request(self, requirer: Requirer) -> None:
        for acc in requirer.accelerators:
            problem = unsupported_accelerator(acc)
            if problem:
                raise InsufficientSystemResources(requirer, "accelerators", [], details=[problem])

    # -- issuing -------------------------------------------------------------------------------

    def issueBatchJob(self, command: str, job_desc: JobDescription,
                      job_environment: dict[str, str] | None = None) -> int:
        leader_side = job_desc.local and not self.config.run_local_jobs_on_workers
        if self.native_steps and (job_desc.jobName in IN_LEADER_JOBS if leader_side else job_desc.jobName == "CWLJob"):
            return self._issue_step(job_desc, check=not leader_side)
        if self.native_steps and leader_side:
            # Other leader-side jobs start through our entrypoint too: they then die with the leader.
            command = _leader_side_command(command, "--cwl-local")
        local_id = self.handleLocalJob(command, job_desc)
        if local_id is not None:
            return local_id
        self.check_resource_request(job_desc)
        self._check_job_store_reachable(command)
        # From the counter the local (leader-side) jobs use too: Toil's leader keys every issued job
        # by this ID, and a container job sharing a local job's ID corrupts its bookkeeping
        # ("An unexpected job is still running", "Jobs waiting on successors at shutdown").
        batch_id = self.getNextJobID()
        env = dict(self.environment)
        env.update(job_environment or {})
        if self.user_script is not None:  # what Resource.register() would set in the worker
            env[self.user_script.resourceEnvNamePrefix + self.user_script.pathHash] = self.user_script.pickle()
        env[arvados_client.STARTED_ENV] = "1"  # the worker, too, rides out outages
        existing = self._reattach.pop(str(job_desc.jobStoreID), None)
        if existing is not None:
            if (existing.get("command") or [None])[-1] != command:
                # Same job, but e.g. another --workDir or leader host changed the worker's --context:
                # the running worker does the same work on the same job store entry.
                logger.debug("Re-attaching %s although its worker command changed", job_desc)
            logger.info("Re-attached job %s to running container request %s", job_desc, existing["uuid"])
            self.slots.take(batch_id)
            self._track_worker(batch_id, existing, reattached=True)
            return batch_id
        body = container_request_body(
            worker_command=command, display_name=job_desc.displayName, job_name=job_desc.jobName,
            job_store_id=str(job_desc.jobStoreID), workflow_id=str(self.config.workflowID),
            batch_job_id=batch_id,
            resources=JobResources(cores=job_desc.cores, memory=job_desc.memory, disk=job_desc.disk,
                                   accelerators=tuple(job_desc.accelerators),
                                   preemptible=bool(job_desc.preemptible)),
            settings=self.settings, environment=env)
        with self._lock:
            self._jobs[batch_id] = None  # issued; submitted when --maxJobs allows
        what = str(job_desc)
        if not self.slots.acquire(batch_id, lambda deferred: self._submit_worker(batch_id, body, what, deferred)):
            logger.debug("%s waits for one of the %d requests in flight to end (--maxJobs)", what, self.slots.limit)
        return batch_id

    def _submit_worker(self, batch_id: int, body: dict, what: str, deferred: bool) -> None:
        """Create a worker job's request now that it has a slot. Submitted at issue, a failure is
        the leader's error (as before); submitted later, from another request's end, it is this
        job's failure."""
        with self._lock:
            killed = batch_id not in self._jobs
        if killed:
            self.slots.release(batch_id)
            return
        try:
            cr = arvados_client.create_request(self.api, body, f"submit {what}")
        except Exception as e:
            self.slots.release(batch_id)
            with self._lock:
                self._jobs.pop(batch_id, None)
            error = ArvadosSetupError(describe(e, f"cannot submit {what} as a container request"))
            if not deferred:
                raise error from None
            logger.error("%s", error)
            self._updates.put(UpdatedBatchJobInfo(jobID=batch_id, exitStatus=1, exitReason=BatchJobExitReason.FAILED,
                                                  wallTime=None, backing_id=None))
            return
        self._track_worker(batch_id, cr)

    def _track_worker(self, batch_id: int, cr: dict, reattached: bool = False) -> None:
        with self._lock:
            killed = batch_id not in self._jobs and not reattached
            self._jobs[batch_id] = cr["uuid"]
        if killed:  # killed while its request was being created
            self.killBatchJobs([batch_id])
            return
        self.tracker.track(cr, lambda final, c: self._worker_final(batch_id, final, c),
                           running=cr.get("_container_state") == "Running")
        logger.debug("Issued batch job %d as %s", batch_id, cr["uuid"])

    def _check_job_store_reachable(self, command: str) -> None:
        """A Toil worker in a container cannot open a job store on the leader's disk."""
        words = shlex.split(command)
        if self.file_job_store and words and words[0].endswith("_toil_worker"):
            raise ArvadosSetupError(
                f"job store {self.config.jobStore} is on this machine's disk, which Toil workers "
                "running in Arvados containers cannot see: use --jobStore arvados:<name> (a Keep "
                "job store in your home project) or arvados:<project-uuid>/<name>")

    def _issue_step(self, job_desc: JobDescription, check: bool) -> int:
        """Hand a CWL job to the leader's step engine: a tool's job submits the tool itself;
        CWL's bookkeeping jobs (``check`` False) just run there, without a process of their own."""
        if check:
            self.check_resource_request(job_desc)  # the container will need what the tool asks for
        batch_id = self.getNextJobID()
        self._native_steps().issue(batch_id, str(job_desc.jobStoreID), str(job_desc), request=check)
        logger.debug("Issued CWL step %s to run as its own container request (batch id %d)", job_desc, batch_id)
        return batch_id

    def _native_steps(self) -> Any:
        """The step engine, made at the first step (with the run's parent request)."""
        with self._lock:
            if self._steps is None:
                from .cwl_step import StepContext
                from .step_engine import NativeSteps

                settings = self.step_settings
                parent = self._workflow_request()
                if parent:
                    settings = StepSettings(**{**settings.__dict__, "parent_request": parent})
                context = StepContext(api=self.api, settings=settings, default_image=self.step_image,
                                      cluster=self.cluster)
                self._steps = NativeSteps(self.config.jobStore, getattr(self.config, "workDir", None),
                                          self.tracker, context, self._updates.put, self.slots)
            return self._steps

    def _workflow_request(self) -> str | None:
        """The run's parent request, which every step request names in its properties.

        A leader running inside an Arvados container needs none: Arvados itself records that
        container as ``requesting_container_uuid`` of each step request submitted with its token.
        Otherwise one Uncommitted request per run stands for the workflow in Workbench, carrying
        the leader's command line and the run id.
        """
        with self._lock:
            if self._parent_request is not None:
                return self._parent_request or None
            try:
                self.api.containers().current().execute()
                self._parent_request = ""
                return None
            except Exception:
                pass
            name = f"Toil workflow run {self.config.workflowID}"
            body = {
                "name": name, "owner_uuid": self.settings.project_uuid, "state": "Uncommitted", "priority": 0,
                "command": _portable_argv(sys.argv), "container_image": self.step_image,
                "output_path": "/var/spool/cwl", "cwd": "/var/spool/cwl",
                "mounts": {"/var/spool/cwl": {"kind": "tmp", "capacity": 1 << 20}},
                "runtime_constraints": {"vcpus": 1, "ram": 1 << 28},
                "description": "The steps of this Toil workflow run are the container requests whose "
                               f"properties name this request ({PROPERTY_WORKFLOW_RUN} "
                               f"{self.config.workflowID}).",
                "properties": {PROPERTY_WORKFLOW_RUN: str(self.config.workflowID), "type": "workflow"},
            }
            try:
                cr = arvados_client.create_request(self.api, body, "record the workflow run",
                                                   ensure_unique_name=True)
            except Exception as e:
                logger.warning("%s", describe(e, "could not record the workflow run as a container request"))
                self._parent_request = ""
                return None
            self._parent_request = cr["uuid"]
            logger.info("Workflow run recorded as container request %s; each CWL step is its own request",
                        cr["uuid"])
            return self._parent_request

    def _load_reattachable(self) -> None:
        """After ``--restart``: the requests of this workflow still running, by job store id.

        Keyed by the job's id in the job store only, not by the worker command: the command's
        ``--context`` embeds leader-side paths (coordination/work dir) that may differ after a
        restart, while the job store id names exactly the work the running worker is doing.
        """
        filters = [[f"properties.{PROPERTY_WORKFLOW}", "=", str(self.config.workflowID)],
                   ["state", "=", "Committed"], ["priority", ">", 0]]
        try:
            for cr in arvados_client.list_all(self.api.container_requests().list, filters,
                                              ["uuid", "state", "container_uuid", "command", "properties"]):
                job_store_id = (cr.get("properties") or {}).get(PROPERTY_JOB_STORE_ID)
                if job_store_id:
                    self._reattach[str(job_store_id)] = cr
            c_uuids = [cr["container_uuid"] for cr in self._reattach.values() if cr.get("container_uuid")]
            if c_uuids:  # one batched call, so re-attached jobs that are running count as running
                states = {c["uuid"]: c["state"] for c in arvados_client.list_all(
                    self.api.containers().list, [["uuid", "in", c_uuids]], ["uuid", "state"])}
                for cr in self._reattach.values():
                    cr["_container_state"] = states.get(cr.get("container_uuid") or "")
        except Exception as e:
            logger.warning("%s", describe(e, "could not look for running requests to re-attach"))
        if self._reattach:
            logger.info("Found %d running container requests of this workflow to re-attach", len(self._reattach))

    # -- state ---------------------------------------------------------------------------------

    def _worker_final(self, batch_id: int, cr: dict, c: dict | None) -> None:
        """The tracker's callback for a worker job's request."""
        self.slots.release(batch_id)
        info = _update_info(batch_id, c, cr["uuid"])
        if info.exitStatus != 0:
            self._log_failure(batch_id, cr, c, info)
        with self._lock:
            if self._jobs.pop(batch_id, None) is None:
                return  # killed meanwhile: Toil must not hear of it
        self._updates.put(info)

    def _log_failure(self, batch_id: int, cr: dict, c: dict | None, info: UpdatedBatchJobInfo) -> None:
        """Put the failed worker's stderr (from its log collection) into Toil's log."""
        reason = BatchJobExitReason.to_string(info.exitReason or 0)
        status = (c or {}).get("runtime_status") or {}
        lines = [f"Arvados job {cr['uuid']} (batch id {batch_id}) ended {reason} "
                 f"with exit status {info.exitStatus}"]
        if status.get("error"):
            lines.append(f"  Arvados: {status['error']}{': ' + status['errorDetail'] if status.get('errorDetail') else ''}")
        try:
            # The request's own log collection: the container's belongs to the dispatcher.
            log_uuid = cr.get("log_uuid") or arvados_client.call(
                lambda: self.api.container_requests().get(uuid=cr["uuid"], select=["uuid", "log_uuid"]),
                f"look up {cr['uuid']}", budget=60.0).get("log_uuid")
            tail = arvados_client.log_tail(self.api, log_uuid, _STDERR_TAIL) if log_uuid else None
            if tail:
                lines.append(f"  ---- {tail[0]} ({log_uuid}) ----")
                lines.extend("  " + line for line in tail[1])
        except Exception as e:
            lines.append(f"  (could not read the log collection: {scrub(str(e)).splitlines()[0]})")
        logger.error("%s", scrub("\n".join(lines)))

    # -- Toil's queries ------------------------------------------------------------------------

    def getIssuedBatchJobIDs(self) -> list[int]:
        with self._lock:
            remote = list(self._jobs)
        steps = self._steps.issued() if self._steps is not None else []
        return remote + self.getIssuedLocalJobIDs() + steps

    def getRunningBatchJobIDs(self) -> dict[int, float]:
        started = self.tracker.started()
        now = time.time()
        with self._lock:
            running = {b: now - started[cr] for b, cr in self._jobs.items() if cr is not None and cr in started}
        running.update(self.getRunningLocalJobIDs())
        if self._steps is not None:
            running.update(self._steps.running())
        return running

    def _updated_leader_side(self) -> UpdatedBatchJobInfo | None:
        """A finished local job, if any (never waits)."""
        return self.getUpdatedLocalJob(0)

    def set_message_bus(self, message_bus: MessageBus) -> None:
        """Also hear of the leader's own job updates. Toil's main loop asks the batch system for
        an ended job (waiting up to 2 s) before it processes updates it made itself, so every
        step of tidying up a finished subgraph (a gather, then its scatter, then the workflow)
        would otherwise cost up to 2 s of waiting here."""
        super().set_message_bus(message_bus)
        self._bus_listener = message_bus.subscribe(JobUpdatedMessage, lambda _message: self._leader_work.set())

    def getUpdatedBatchJob(self, maxWait: int) -> UpdatedBatchJobInfo | None:
        local = self._updated_leader_side()
        if local is not None:
            return local
        if self._leader_work.is_set():  # the leader has work of its own: don't keep it waiting
            self._leader_work.clear()
            maxWait = 0
        elif not self.getIssuedBatchJobIDs():  # nothing can end (the leader's last round)
            maxWait = 0
        deadline = time.monotonic() + maxWait
        while True:
            try:
                # Short waits: local jobs finish in another queue, and CWL chains them.
                return self._updates.get(timeout=min(_LOCAL_POLL_SECONDS, max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                local = self._updated_leader_side()
                if local is not None:
                    return local
                if time.monotonic() >= deadline:
                    return None

    def progress_summary(self) -> str:
        """The run's requests by Arvados state, for Toil's progress bar
        (:func:`toil_patches.progress_bar_shows_batch_system_summary`)."""
        return self.tracker.counts().summary()

    def getSchedulingStatusMessage(self) -> str | None:
        waiting = self.tracker.queued()
        held = self.slots.waiting()
        parts = ([f"{waiting} container requests are queued on Arvados"] if waiting else []) + \
            ([f"{held} jobs wait for one of the {self.slots.limit} requests --maxJobs allows in flight"] if held else [])
        return "; ".join(parts) or None

    # -- stopping ------------------------------------------------------------------------------

    def killBatchJobs(self, jobIDs: list[int]) -> None:
        self.killLocalJobs(jobIDs)
        if self._steps is not None:
            self._steps.kill(jobIDs)
        with self._lock:
            doomed = [(b, self._jobs.pop(b)) for b in jobIDs if b in self._jobs]
        for batch_id, cr_uuid in doomed:
            self.slots.release(batch_id)
            if cr_uuid is None:  # still waiting for a slot: never submitted
                continue
            self.tracker.forget(cr_uuid)
            self._cancel(cr_uuid)

    def _cancel(self, cr_uuid: str, budget: float = arvados_client.OUTAGE_BUDGET) -> None:
        arvados_client.cancel_request(self.api, cr_uuid, budget, quietly=True)

    def shutdown(self) -> None:
        self.slots.clear()  # jobs waiting for a slot are never submitted
        if self._steps is not None:
            self._steps.shutdown()  # no pass starts or submits after this
        # Shutting down: a short wait per request through an outage, not the full budget each.
        for cr_uuid in self.tracker.stop():
            self._cancel(cr_uuid, _SHUTDOWN_BUDGET)
        with self._lock:
            self._jobs.clear()
        for cr in self._reattach.values():  # leftovers Toil did not ask for again
            self._cancel(cr["uuid"], _SHUTDOWN_BUDGET)
        if self._steps is not None:
            # Step requests the tracker did not know of yet (a pass submitting as we stopped).
            self._cancel_committed([f"properties.{PROPERTY_WORKFLOW_RUN}", "=", str(self.config.workflowID)],
                                   "step requests left running")
        self.shutdownLocal()

    def _cancel_committed(self, selector: list, what: str) -> None:
        """Cancel every Committed request with priority > 0 that ``selector`` picks."""
        filters = [selector, ["state", "=", "Committed"], ["priority", ">", 0]]
        try:
            for cr in arvados_client.list_all(self.api.container_requests().list, filters, ["uuid"]):
                self._cancel(cr["uuid"])
        except Exception as e:
            logger.warning("%s", describe(e, f"could not cancel {what}"))


def _preemptible_instances(cluster: dict) -> bool:
    return any((t or {}).get("Preemptible") for t in (cluster.get("InstanceTypes") or {}).values())


def _submit_settings(config: Config, project: str, image: str, cluster: dict) -> SubmitSettings:
    """How worker jobs are submitted (``--arvados*`` options)."""
    return SubmitSettings(
        project_uuid=project, image=image,
        priority=int(getattr(config, "arvados_priority", None) or 500),
        reuse=bool(getattr(config, "arvados_reuse", False)),
        # The image's interpreter: a container never sees the leader's files.
        worker_python=getattr(config, "arvados_worker_python", None) or "python3",
        max_attempts=getattr(config, "arvados_max_attempts", None),
        preemptible_instances=_preemptible_instances(cluster),
    )


def _step_settings(config: Config, submit: SubmitSettings, cluster: dict) -> StepSettings:
    """How native CWL steps are submitted: the run's settings, placement and intermediates options."""
    return StepSettings(
        project_uuid=submit.project_uuid, priority=submit.priority,
        reuse=bool(getattr(config, "arvados_step_reuse", True)),
        max_attempts=submit.max_attempts, workflow_run=str(config.workflowID),
        preemptible_instances=submit.preemptible_instances,
        output_ttl=int(getattr(config, "arvados_intermediate_output_ttl", 0) or 0),
        **step_placement.step_settings(config, cluster))


def _leader_side_command(command: str, mode: str) -> str:
    """A job command run on the leader through our worker entrypoint (``exec``: the process is
    then the leader's own child and dies with it, see worker.py)."""
    return f"exec {shlex.quote(sys.executable)} -m toil_arvados.worker {mode} {shlex.quote(command)}"


def _portable_argv(argv: list[str]) -> list[str]:
    """The leader's command line for the run's record, without the leader's paths (its venv,
    checkout or home are nobody's business on the cluster) or its token: absolute paths are cut
    to their last component, ``toil-cwl-runner --batchSystem arvados workflow.cwl inputs.yml``."""
    out = []
    for arg in argv:
        key, eq, value = arg.partition("=") if arg.startswith("--") else ("", "", arg)
        if value.startswith("/") or value.startswith("file:/"):
            value = value.rstrip("/").rsplit("/", 1)[-1] or value
        out.append(scrub(f"{key}{eq}{value}"))
    return out


def _is_file_job_store(locator: str | None) -> bool:
    """Whether a Toil job store locator names a directory (``file:`` or a bare path)."""
    from toil.common import Toil

    return bool(locator) and Toil.parseLocator(str(locator))[0] == "file"


def _requirement(requirer: Requirer, name: str, default: Any) -> Any:
    """A requirement of ``requirer``, or ``default`` where neither it nor Toil's config sets one."""
    try:
        value = getattr(requirer, name)
    except AttributeError:
        return default
    return default if value is None else value


def _update_info(batch_id: int, c: dict | None, cr_uuid: str) -> UpdatedBatchJobInfo:
    if c is None:
        return UpdatedBatchJobInfo(jobID=batch_id, exitStatus=EXIT_STATUS_UNAVAILABLE_VALUE,
                                   exitReason=BatchJobExitReason.LOST, wallTime=None, backing_id=cr_uuid)
    wall = wall_time(c)
    if c["state"] == "Complete":
        code = c.get("exit_code")
        code = EXIT_STATUS_UNAVAILABLE_VALUE if code is None else int(code)
        if code == 0:
            reason = BatchJobExitReason.FINISHED
        elif code == OOM_EXIT_CODE:
            # Killed by SIGKILL in a Complete container: on Arvados that is the kernel's OOM kill
            # (crunch-run reports nothing else; Arvados' CWL runner judges it so). Toil's
            # --doubleMem then retries the job with twice the memory.
            reason = BatchJobExitReason.MEMLIMIT
        else:
            reason = BatchJobExitReason.FAILED
        return UpdatedBatchJobInfo(jobID=batch_id, exitStatus=code, exitReason=reason, wallTime=wall,
                                   backing_id=cr_uuid)
    return UpdatedBatchJobInfo(jobID=batch_id, exitStatus=EXIT_STATUS_UNAVAILABLE_VALUE,
                               exitReason=BatchJobExitReason.LOST, wallTime=wall, backing_id=cr_uuid)
