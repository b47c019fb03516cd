"""Native CWL steps: a CommandLineTool runs as its own Arvados container request.

Toil's ``CWLJob`` normally runs cwltool inside a worker, and cwltool runs the tool's command
there. For ``--batchSystem arvados`` the leader runs that ``CWLJob`` itself
(:mod:`toil_arvados.step_engine`), with its tool an :class:`ArvadosCommandLineTool`:

* its jobs are :class:`ArvadosStepJob`: cwltool still builds the command line, environment,
  InitialWorkDir and output bindings exactly as for a Docker run (container paths
  ``/var/spool/cwl``, ``/tmp``, ``/var/lib/cwl``), but "running" means submitting that command
  as a container request in the tool's image; the first pass of the job ends there
  (:class:`~toil_arvados.step_runner.StepSubmitted`), and the second, once Arvados has finished
  the request (or reused a finished identical container), binds its outputs;
* its path mapper leaves ``toilfile:``/``toildir:``/``keep:`` locations as they are instead of
  downloading them, so inputs reach the container as Keep collection mounts
  (:mod:`cwl_staging`), by reference.

The output collection is then read back so cwltool's own output binding (globs, secondaryFiles,
``cwl.output.json``, loadContents) runs unchanged, and Toil stores the results as usual.
"""
from __future__ import annotations

import contextvars
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Mapping

from cwltool.job import JobBase
from toil.cwl.cwltoil import ToilCommandLineTool, ToilPathMapper
from cwltool.pathmapper import MapperEnt
from cwl_utils.errors import WorkflowException

from . import arvados_client, cwl_hints
from .arvados_client import ArvadosSetupError, describe
from .cwl_secrets import SecretExposed, refuse_visible_secrets, split_secret_entries
from .container_request import unfit
from .images.keep import repo_tag as normalize_image
from .cwl_staging import Entry, KeepSources, StagingCollection, plan_mounts, stdin_mount
from .intermediates import INTERMEDIATE_OUTPUT_REQ, staging_properties, step_output_ttl
from .cwl_step_request import (OUTDIR, PROPERTY_MEMORY_ATTEMPT, PROPERTY_RESUBMITTED, PROPERTY_STEP_JOB_STORE_ID, STAGEDIR, TMPDIR, StepInvocation, StepSettings, process_status,
                               step_request_body)
from .request_tracker import OUTPUT_MANIFEST
from .step_runner import StepSubmitted

logger = logging.getLogger(__name__)

_STDERR_TAIL = 40

FinishedRequest = tuple[dict, "dict | None"]  # a Final request and its container


@dataclass
class StepContext:
    """What the step engine gives the steps of one run: the Arvados client, where and how to
    submit, and the requests that have finished (by the Toil job store id of their step)."""

    api: Any
    settings: StepSettings
    default_image: str
    cluster: dict
    finished: dict[str, FinishedRequest] = field(default_factory=dict)


@dataclass(frozen=True)
class StepPass:
    """The pass the calling thread is running: for which job, in which run."""

    context: StepContext
    job_store_id: str


_current: contextvars.ContextVar[StepPass | None] = contextvars.ContextVar("toil_arvados_step", default=None)


@contextmanager
def step_pass(context: StepContext, job_store_id: str) -> Iterator[None]:
    """Run a pass of the step job ``job_store_id`` (see :mod:`step_runner`) in this thread."""
    token = _current.set(StepPass(context, job_store_id))
    try:
        yield
    finally:
        _current.reset(token)


def current_pass() -> StepPass:
    p = _current.get()
    if p is None:
        raise ArvadosSetupError("a native CWL step ran outside the step engine (--batchSystem arvados only)")
    return p


def image_name(docker_requirement: Mapping[str, Any] | None, default_image: str) -> str:
    """The image a step runs in: the tool's DockerRequirement, else the default (pure).

    As Arvados' own runner does: ``dockerImageId`` wins over ``dockerPull``, and a name without
    a tag means ``:latest`` (how ``arv-keepdocker`` registers it).
    """
    if not docker_requirement:
        return default_image
    for key in ("dockerLoad", "dockerFile", "dockerImport"):
        if docker_requirement.get(key) and not (docker_requirement.get("dockerImageId")
                                               or docker_requirement.get("dockerPull")):
            raise WorkflowException(
                f"DockerRequirement {key} is not supported on Arvados: build the image, upload it with "
                "`arv-keepdocker IMAGE TAG`, and name it with dockerPull")
    name = str(docker_requirement.get("dockerImageId") or docker_requirement.get("dockerPull") or default_image)
    return normalize_image(name)


# -- path mapping -----------------------------------------------------------------------------

def _passthrough(location: str) -> bool:
    return location.startswith(("toilfile:", "toildir:", "keep:"))


class StepPathMapper(ToilPathMapper):
    """Toil's path mapper, minus downloading what is already in a store: keeps job store and
    Keep locations as they are, with reproducible staging dirs."""

    def setup(self, referenced_files: Any, basedir: str) -> None:
        # cwltool names each input's staging dir after a random UUID; a container's command
        # line and mounts must not differ between runs, or Arvados cannot reuse it.
        for n, fob in enumerate(referenced_files):
            stagedir = os.path.join(self.stagedir, f"stg{n}") if self.separateDirs else self.stagedir
            self.visit(fob, stagedir, basedir, copy=bool(fob.get("writable", False)), staged=True)

    def visit(self, obj: Any, stagedir: str, basedir: str, copy: bool = False, staged: bool = False) -> None:
        location = obj.get("location", "")
        if obj.get("class") not in ("File", "Directory") or not _passthrough(location):
            super().visit(obj, stagedir, basedir, copy=copy, staged=staged)
            return
        stagedir = obj.get("dirname") or stagedir
        if location in self._pathmap:
            tgt = self._pathmap[location].target
        else:
            tgt = os.path.join(stagedir, obj["basename"])
            n = 2
            while self.reversemap(tgt) is not None:
                tgt = os.path.join(stagedir, f"{obj['basename']}_{n}")
                n += 1
        if obj["class"] == "Directory":
            if location not in self._pathmap:
                self._pathmap[location] = MapperEnt(location, tgt, "WritableDirectory" if copy else "Directory",
                                                    staged)
            # The collection holds the whole tree: its entries are not staged separately.
            self.visitlisting(obj.get("listing", []), tgt, basedir, copy=copy, staged=False)
        else:
            if location not in self._pathmap:
                self._pathmap[location] = MapperEnt(location, tgt, "WritableFile" if copy else "File", staged)
            self.visitlisting(obj.get("secondaryFiles", []), stagedir, basedir, copy=copy, staged=staged)


def _keeping_store_uris(make_fs_access: Any) -> Any:
    """``make_fs_access`` whose ``join`` treats a store URI (toilfile:, toildir:, keep:) as
    absolute, as ``os.path.join`` treats an absolute path.

    cwltool maps output paths back twice (``revmap_file`` in ``collect_output`` and again in
    ``collect_output_ports``); the second pass joins the host output dir onto every location that
    is not ``file://``. An output that is an input passed through (InitialWorkDir) has its input's
    store URI as location after the first pass, and must keep it.
    """
    def make(basedir: str) -> Any:
        fs = make_fs_access(basedir)
        join = fs.join

        def keep_uris(path: str, *paths: str) -> str:
            for i in range(len(paths) - 1, -1, -1):
                if _passthrough(str(paths[i])):
                    rest = paths[i + 1:]
                    return join(paths[i], *rest) if rest else paths[i]
            return join(path, *paths)

        fs.join = keep_uris
        return fs

    return make


# -- the job ---------------------------------------------------------------------------------

class ArvadosStepJob(JobBase):
    """One CommandLineTool invocation, run as an Arvados container request."""

    use_docker_requirement: bool = True
    file_store: Any = None
    toil_job: Any = None

    def _required_env(self) -> dict[str, str]:
        return {"HOME": self.builder.outdir, "TMPDIR": self.builder.tmpdir}

    def prepare_environment(self, runtimeContext: Any, envVarReq: Mapping[str, str]) -> None:
        # As for any container: only what the tool asks for, never the leader's environment.
        # With --no-container the tool runs in the default image, with that image's own PATH.
        env: dict[str, str] = {}
        # EnvVarRequirements of the input document (cwl:requirements): Toil's CWLJob evaluates
        # them into preserve_environment (a dict; the process environment is shared by threads).
        preserved = getattr(runtimeContext, "preserve_environment", None) or {}
        if isinstance(preserved, Mapping):
            env.update({str(k): str(v) for k, v in preserved.items()})
        env.update(envVarReq)
        env.update(self._required_env())
        self.environment = env

    def run(self, runtimeContext: Any, tmpdir_lock: Any = None) -> None:
        host_out = runtimeContext.create_outdir()
        self.base_path_logs = host_out  # where Toil's stderr callback looks for a redirected stderr
        outputs: Any = {}
        try:
            status, rcode = self._run_container(runtimeContext, host_out)
            if rcode is not None:
                outputs = self.collect_outputs(host_out, rcode)
        except SecretExposed as e:  # the tool's own doing: the step fails, as a failing command would
            logger.error("%s", e)
            status = "permanentFail"
        except (ArvadosSetupError, WorkflowException, StepSubmitted):
            raise
        except Exception as e:
            logger.error("CWL step %s failed: %s", self.name, arvados_client.scrub(f"{type(e).__name__}: {e}"))
            status = "permanentFail"
        if status != "success":
            logger.warning("[job %s] completed %s", self.name, status)
        if self.output_callback:
            self.output_callback(outputs, status)

    # -- submission ----------------------------------------------------------------------------

    def _run_container(self, runtimeContext: Any, host_out: str) -> tuple[str, int | None]:
        """Submit the request (first pass) or take the finished one (second pass); then judge it."""
        current = current_pass()
        ctx = current.context
        entries = self._entries(runtimeContext)
        finished = ctx.finished.get(current.job_store_id)
        if finished is None:
            finished = self._submit(ctx, runtimeContext, entries, current.job_store_id)
        cr, container = finished
        if (container or {}).get("state") != "Complete":
            self._report_unfinished(ctx.api, cr, container, runtimeContext)
            return "permanentFail", None
        rcode = container.get("exit_code")
        status = process_status(rcode, list(self.successCodes), list(self.temporaryFailCodes),
                                list(self.permanentFailCodes))
        if status == "permanentFail" and self._retry_for_memory(ctx, runtimeContext, entries, current.job_store_id,
                                                                cr, rcode):
            return self._run_container(runtimeContext, host_out)  # Arvados had a finished one at once
        if status != "success":
            logger.error("CWL step %s: container request %s ended %s (exit code %s)", self.name, cr["uuid"],
                         status, rcode)
        # Arvados copies the output for the request only when the container succeeded; crunch-run's
        # own output collection is trashed at once, so a failed step has no output to read.
        output = container[OUTPUT_MANIFEST] if OUTPUT_MANIFEST in container else cr.get("output_uuid") or (
            container.get("output") if status == "success" else None)
        if output is not None:
            arvados_client.retrying(lambda: _download(ctx.api, output, host_out), f"read the output of {self.name}")
        if self.inplace_update and status == "success":
            self._apply_inplace_updates(entries, host_out)
        if status != "success":
            self._copy_stderr(ctx.api, cr, container, runtimeContext)
        return status, int(rcode if rcode is not None else 1)

    def _submit(self, ctx: StepContext, runtimeContext: Any, entries: list[Entry], job_store_id: str,
                memory_attempt: int = 0, ram_factor: float = 1.0) -> FinishedRequest:
        """Submit this step's request; raise :class:`StepSubmitted` unless it is Final at once
        (Arvados reused a finished container), in which case it is returned with its container."""
        body, image = self._request_body(ctx, runtimeContext, entries, memory_attempt, ram_factor)
        body["properties"][PROPERTY_STEP_JOB_STORE_ID] = job_store_id
        _check_fit(ctx.cluster, body, image)
        cr = _submit(ctx.api, body, image)
        logger.info("CWL step %s: container request %s (image %s)", self.name, cr["uuid"], image)
        if cr.get("state") != "Final":
            raise StepSubmitted(cr)
        return cr, _container(ctx.api, cr.get("container_uuid"))

    def _retry_for_memory(self, ctx: StepContext, runtimeContext: Any, entries: list[Entry], job_store_id: str,
                          cr: dict, exit_code: int | None) -> bool:
        """If the failed container ran out of memory and the step may be retried for that
        (arv:OutOfMemoryRetry, Toil's --doubleMem), submit it again with more RAM: a new request
        from this (collect) pass, whose end the step engine then waits for as for the first.
        The failed request is marked with the new one's uuid, as Arvados' runner marks it.
        Raises StepSubmitted; True if the new request was Final at once (reused), False if the
        step is not retried."""
        policy = cwl_hints.memory_retry(self._hint, ctx.settings.double_mem, ctx.settings.retry_count, self.name)
        if policy is None or not cr.get("log_uuid") and exit_code != cwl_hints.OOM_EXIT_CODE:
            return False
        # Which retry this was is in the request's properties, which the tracker does not fetch.
        properties = _properties(ctx.api, cr)
        attempt = int(properties.get(PROPERTY_MEMORY_ATTEMPT) or 0)
        if attempt >= policy.retries:
            return False
        log = lambda: arvados_client.log_text(ctx.api, cr["log_uuid"], ("stderr.txt", "stdout.txt", "crunch-run.txt"), 1000)
        if not cwl_hints.out_of_memory(exit_code, log, policy.error_regex):
            return False
        factor = policy.multiplier ** (attempt + 1)
        logger.warning("CWL step %s: container request %s ran out of memory; retrying with %gx the RAM (memory retry "
                       "%d of %d)", self.name, cr["uuid"], factor, attempt + 1, policy.retries)
        ctx.finished.pop(job_store_id, None)
        try:
            new_cr, _ = finished = self._submit(ctx, runtimeContext, entries, job_store_id, attempt + 1, factor)
        except StepSubmitted as submitted:
            _mark_resubmitted(ctx.api, cr["uuid"], properties, submitted.cr["uuid"])
            raise
        _mark_resubmitted(ctx.api, cr["uuid"], properties, new_cr["uuid"])
        ctx.finished[job_store_id] = finished
        return True

    def _hint(self, cls: str) -> dict | None:
        """The tool's requirement or hint of class ``cls`` (an Arvados extension), or None."""
        req, _ = self.get_requirement(cls)
        return req

    def _request_body(self, ctx: StepContext, runtimeContext: Any, entries: list[Entry], memory_attempt: int = 0,
                      ram_factor: float = 1.0) -> tuple[dict, str]:
        docker_req, _ = self.get_requirement("DockerRequirement")
        image = image_name(docker_req if self.use_docker_requirement else None, ctx.default_image)
        secrets = getattr(runtimeContext, "secret_store", None)
        entries, secret_mounts = split_secret_entries(entries, secrets, self.name)
        mounts: dict[str, Any] = {}
        stdin = None
        if entries:
            # Staging only reads inputs and saves a collection of them: safe to redo after an outage.
            pdh = arvados_client.retrying(lambda: self._stage(ctx, runtimeContext, entries),
                                          f"stage the inputs of {self.name}")
            mounts = plan_mounts(entries, STAGEDIR, pdh)
            if self.stdin:
                stdin = stdin_mount(self.stdin, entries, STAGEDIR, pdh)
        elif self.stdin:
            raise WorkflowException(f"standard input {self.stdin} of {self.name} is not a staged input")
        res = self.builder.resources
        inv = StepInvocation(
            name=self.name, command=[str(a) for a in self.command_line], image=image,
            environment=self.environment, mounts=mounts,
            cores=float(res.get("cores") or 1), ram_mib=float(res.get("ram") or 256),
            outdir_mib=float(res.get("outdirSize") or 1024), tmpdir_mib=float(res.get("tmpdirSize") or 1024),
            cuda_devices=int(res.get("cudaDeviceCount") or 0), **self._cuda(),
            stdin=stdin, stdout=self.stdout, stderr=self.stderr, network=bool(self.networkaccess),
            timelimit=self.timelimit or None, preemptible=self._preemptible(), reuse=self._reuse(),
            outdir=self.builder.outdir, tmpdir=self.builder.tmpdir, secret_mounts=secret_mounts,
            output_ttl=self._output_ttl(ctx), memory_attempt=memory_attempt, ram_factor=ram_factor,
            **self._arvados_hints())
        step = str(getattr(runtimeContext, "name", None) or self.name)
        tool = str(getattr(self, "tool_id", "") or "")
        body = step_request_body(inv, ctx.settings, step=step, tool=tool)
        refuse_visible_secrets(secrets, self.name, body)
        return body, image

    def _apply_inplace_updates(self, entries: list[Entry], host_out: str) -> None:
        """InplaceUpdateRequirement: write what the tool changed back to the input file itself.

        The container changed a writable copy (Arvados copies writable mounts); the copy's final
        content is in the output collection. Replacing the content of the input's own job store
        file makes the change visible to every later step that reads that file, as an in-place
        update must. Only files of the Keep job store, whose records are mutable and which
        the leader updates through its own job store, are updated; Toil directories carry their listing in their location,
        so files added to a directory in place cannot be shown to other steps.
        """
        from toil.fileStores import FileID

        from .jobstore.keep_jobstore import KeepJobStore

        job_store = getattr(self.file_store, "jobStore", None)
        outdir = self.builder.outdir.rstrip("/") + "/"
        for e in entries:
            if e.type != "WritableFile" or not e.target.startswith(outdir):
                continue
            changed = os.path.join(host_out, e.target[len(outdir):])
            if not e.resolved.startswith("toilfile:") or not isinstance(job_store, KeepJobStore):
                logger.warning("CWL step %s: in-place update of %s is not written back (not a Keep job store file)",
                               self.name, e.target)
                continue
            if os.path.isfile(changed):
                job_store.update_file(FileID.unpack(e.resolved[len("toilfile:"):]), changed)
                logger.info("CWL step %s: in-place update of %s written back to the job store", self.name, e.target)

    def _stage(self, ctx: StepContext, runtimeContext: Any, entries: list[Entry]) -> str:
        """One staging collection holding ``entries``; its portable data hash."""
        staging = StagingCollection(ctx.api, self._sources(ctx.api, runtimeContext), STAGEDIR)
        try:
            for e in entries:
                staging.add(e)
            props = staging_properties(ctx.settings.workflow_run) if ctx.settings.workflow_run else None
            return staging.save(ctx.settings.project_uuid, f"Inputs of {self.name}"[:255], props)
        finally:
            staging.close()

    def _cuda(self) -> dict[str, Any]:
        """CUDARequirement's minimum driver version and compute capabilities, for ``gpu``."""
        req, _ = self.get_requirement("http://commonwl.org/cwltool#CUDARequirement")
        if not req:
            return {}
        caps = req.get("cudaComputeCapability") or ()
        caps = [caps] if isinstance(caps, str) else list(caps)
        return {"cuda_version_min": str(req.get("cudaVersionMin") or ""),
                "cuda_compute_capability": tuple(str(c) for c in caps)}

    def _entries(self, runtimeContext: Any) -> list[Entry]:
        entries: list[Entry] = []
        mappers = [self.pathmapper]
        if self.generatefiles.get("listing"):
            rc = runtimeContext.copy()
            self.generatemapper = self.make_path_mapper(self.generatefiles["listing"], self.builder.outdir, rc, False)
            mappers.append(self.generatemapper)
        seen: set[str] = set()
        for mapper in mappers:
            for _key, ent in mapper.items_exclude_children():
                if not ent.staged or ent.target in seen or ent.type not in (
                        "File", "Directory", "CreateFile", "WritableFile", "WritableDirectory", "CreateWritableFile"):
                    continue
                if ent.type in ("Directory", "WritableDirectory") and not ent.resolved:
                    continue
                seen.add(ent.target)
                entries.append(Entry(str(ent.resolved), ent.target, ent.type))
        return entries

    def _sources(self, api: Any, runtimeContext: Any) -> KeepSources:
        from toil.fileStores import FileID

        store = self.file_store
        job_store = getattr(store, "jobStore", None)
        get_file = getattr(runtimeContext, "toil_get_file", None)

        def keep_url_of(location: str) -> str | None:
            from .jobstore.keep_jobstore import KeepJobStore

            if not isinstance(job_store, KeepJobStore):
                return None
            return str(job_store.get_public_url(FileID.unpack(location[len("toilfile:"):])))

        def local_path_of(location: str) -> str:
            if get_file is None:
                raise WorkflowException(f"cannot fetch {location}: no Toil file store in this process")
            return str(get_file(location))

        return KeepSources(api, keep_url_of, local_path_of)

    def _arvados_hints(self) -> dict[str, Any]:
        """StepInvocation fields from the tool's Arvados extensions (see cwl_hints)."""
        try:
            keep_cache_mib, keep_cache_in_ram = cwl_hints.keep_cache(self._hint, self.name)
            return {"partitions": cwl_hints.partitions(self._hint, self.name),
                    "output_storage_classes": cwl_hints.intermediate_storage_classes(self._hint, self.name),
                    "keep_cache_mib": keep_cache_mib, "keep_cache_in_ram": keep_cache_in_ram,
                    "api": cwl_hints.api_access(self._hint),
                    "properties": cwl_hints.properties(self._hint, self.builder.do_eval, self.name)}
        except cwl_hints.HintError as e:
            raise WorkflowException(str(e)) from None

    def _reuse(self) -> bool:
        req, _ = self.get_requirement("WorkReuse")
        if not req:
            arv = cwl_hints.reuse(self._hint)  # CWL v1.0 tools say it with arv:ReuseRequirement
            return True if arv is None else arv
        value = req.get("enableReuse", True)
        if isinstance(value, str):
            value = self.builder.do_eval(value)
        return bool(value)

    def _output_ttl(self, ctx: StepContext) -> int:
        req, _ = self.get_requirement(INTERMEDIATE_OUTPUT_REQ)
        try:
            return step_output_ttl(req, ctx.settings.output_ttl)
        except ValueError as e:
            raise WorkflowException(f"{self.name}: {e}") from None

    def _preemptible(self) -> bool | None:
        req, _ = self.get_requirement("http://arvados.org/cwl#UsePreemptible")
        return bool(req["usePreemptible"]) if req and "usePreemptible" in req else None

    # -- failures ------------------------------------------------------------------------------

    def _report_unfinished(self, api: Any, cr: dict, container: dict | None, runtimeContext: Any) -> None:
        status = (container or {}).get("runtime_status") or {}
        why = status.get("error") or ("cancelled" if (container or {}).get("state") == "Cancelled"
                                      else "no container ran")
        logger.error("CWL step %s: container request %s ended without finishing: %s", self.name, cr["uuid"],
                     arvados_client.scrub(str(why)))
        self._copy_stderr(api, cr, container, runtimeContext)

    def _copy_stderr(self, api: Any, cr: dict, container: dict | None, runtimeContext: Any) -> None:
        """The container's stderr (and crunch log) into Toil's "Failed command standard error"."""
        sink = getattr(runtimeContext, "default_stderr", None)
        if sink is None or not cr.get("log_uuid"):
            return
        try:
            tail = arvados_client.log_tail(api, cr["log_uuid"], _STDERR_TAIL)
        except Exception as e:  # the failure itself is already reported
            logger.debug("could not read the log of %s: %s", cr["uuid"], arvados_client.scrub(str(e)))
            return
        if tail:
            text = "\n".join(tail[1]) + "\n"
            sink.write(text.encode("utf-8", "replace") if "b" in getattr(sink, "mode", "b") else text)
            sink.flush()


# -- Arvados calls ----------------------------------------------------------------------------

def _check_fit(cluster: dict, body: dict, image: str) -> None:
    """Refuse at once, in one line, a step no instance type of the cluster can run (Arvados would
    otherwise cancel its container as unsatisfiable only after queueing it)."""
    pdh = image if "+" in image else None
    why = unfit(body["runtime_constraints"], body["mounts"], body["scheduling_parameters"], pdh, cluster)
    if why is not None:
        raise WorkflowException(f"CWL step {body['name']} cannot run on this Arvados cluster: {why.detail}")


def _submit(api: Any, body: dict, image: str) -> dict:
    try:
        return arvados_client.create_request(api, body, f"submit CWL step {body['name']}")
    except Exception as e:
        # A refused request whose image is not in Keep: say so (and how to fix it), not "422".
        if arvados_client.error_kind(e) == arvados_client.CONFLICT and not arvados_client.image_exists(api, image):
            raise ArvadosSetupError(
                arvados_client.missing_image_message(image, f"image of CWL step {body['name']}")) from None
        raise ArvadosSetupError(describe(e, f"cannot submit CWL step {body['name']}")) from None


def _properties(api: Any, cr: dict) -> dict:
    """A request's properties (read afresh where ``cr`` is the tracker's partial copy)."""
    if "properties" in cr:
        return dict(cr["properties"] or {})
    current = arvados_client.call(lambda: api.container_requests().get(uuid=cr["uuid"], select=["uuid", "properties"]),
                                  f"look up {cr['uuid']}")
    return dict(current.get("properties") or {})


def _mark_resubmitted(api: Any, uuid: str, properties: dict, new_uuid: str) -> None:
    """Name the request that replaced a failed one in the failed one's properties."""
    body = {"properties": {**properties, PROPERTY_RESUBMITTED: new_uuid}}
    try:
        arvados_client.call(lambda: api.container_requests().update(uuid=uuid, body=body),
                            f"mark {uuid} as resubmitted")
    except Exception as e:  # a record only: the retry itself is submitted
        logger.warning("%s", describe(e, f"could not mark {uuid} as resubmitted"))


def _container(api: Any, uuid: str | None) -> dict | None:
    if not uuid:
        return None
    return arvados_client.call(lambda: api.containers().get(uuid=uuid), f"look up {uuid}")


def _download(api: Any, locator: str, dest: str) -> None:
    """Write a collection's files (``locator``: its uuid, hash or manifest text) under ``dest``
    (cwltool binds outputs from local files); the job store then stores them by reference to
    their blocks (:mod:`toil_arvados.keep_copies`)."""
    import arvados.collection

    from .keep_copies import copy_collection

    copy_collection(arvados.collection.CollectionReader(locator, api_client=api, keep_client=api.keep), dest)


# -- the tool ----------------------------------------------------------------------------------

class ArvadosCommandLineTool(ToilCommandLineTool):
    """Toil's CommandLineTool whose jobs are Arvados container requests (see the module docstring)."""

    def make_job_runner(self, runtimeContext: Any) -> type:
        return ArvadosStepJob

    def make_path_mapper(self, reffiles: Any, stagedir: str, runtimeContext: Any, separateDirs: bool) -> Any:
        mapper = StepPathMapper(reffiles, runtimeContext.basedir, stagedir, separateDirs,
                                get_file=getattr(runtimeContext, "toil_get_file", None), streaming_allowed=False)
        self._path_mappers.append(mapper)
        return mapper

    def job(self, job_order: Any, output_callbacks: Any, runtimeContext: Any) -> Any:
        ctx = current_pass().context
        rc = runtimeContext.copy()
        honour_docker = bool(rc.use_container)  # --no-container: a DockerRequirement's image is not used
        rc.use_container = True  # ... but the command always sees container paths
        rc.default_container = ctx.default_image
        rc.find_default_container = None
        rc.docker_outdir, rc.docker_tmpdir, rc.docker_stagedir = OUTDIR, TMPDIR, STAGEDIR
        if rc.make_fs_access is not None:
            rc.make_fs_access = _keeping_store_uris(rc.make_fs_access)
        for j in super().job(job_order, output_callbacks, rc):
            if isinstance(j, ArvadosStepJob):
                j.use_docker_requirement = honour_docker
                j.file_store = self._toil_file_store
                j.toil_job = self._toil_job
                j.tool_id = self.tool.get("id", "")
            yield j


def adopt(job: Any) -> None:
    """Make a loaded Toil ``CWLJob`` run its CommandLineTool as a native step.

    Nothing the leader runs may run a command on the leader: an ExpressionTool's job only
    evaluates expressions, CWL's other bookkeeping jobs only add jobs; a CWLJob of any other
    kind of tool is refused."""
    from toil.cwl.cwltoil import CWLJob, ToilExpressionTool

    if not isinstance(job, CWLJob):
        return
    tool = job.cwltool
    if type(tool) is ToilCommandLineTool:
        tool.__class__ = ArvadosCommandLineTool
    elif not isinstance(tool, (ArvadosCommandLineTool, ToilExpressionTool)):
        raise ArvadosSetupError(f"{job}: a {type(tool).__name__} cannot run as a native Arvados step")
