"""CWL CommandLineTool invocation -> Arvados container request body: a pure mapping.

A native step runs the tool's own command line in the tool's own image, the way
``arvados-cwl-runner`` does, instead of a Toil worker that runs cwltool. That is what makes the
step reusable by Arvados across workflow runs: everything in the request that Arvados compares
for reuse (command, cwd, environment, image, mounts, output path, runtime constraints) is derived
from the tool and its inputs' *content* only, never from a job store, a temp dir or a run id.
Run-specific facts (workflow run, step name, parent request) go into ``name`` and ``properties``,
which Arvados does not compare.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from .container_request import PROPERTY_WORKFLOW, gpu_constraints, request_name, scheduling_parameters

MIB = 2**20
OUTDIR = "/var/spool/cwl"
TMPDIR = "/tmp"
STAGEDIR = "/var/lib/cwl"
_MIN_RAM = 64 * MIB

# Same key as worker jobs' requests, so one filter finds all of a run's requests.
PROPERTY_WORKFLOW_RUN = PROPERTY_WORKFLOW
PROPERTY_STEP = "toil_step"
PROPERTY_TOOL = "toil_tool"
PROPERTY_PARENT_REQUEST = "toil_parent_request"
PROPERTY_STEP_JOB_STORE_ID = "toil_step_job_store_id"


@dataclass(frozen=True)
class StepInvocation:
    """What cwltool decided about one tool invocation (all paths as the container sees them)."""

    name: str
    command: list[str]
    image: str
    environment: Mapping[str, str]
    mounts: Mapping[str, Mapping[str, Any]]  # inputs / InitialWorkDir, by container path
    cores: float = 1.0
    ram_mib: float = 256
    outdir_mib: float = 1024
    tmpdir_mib: float = 1024
    cuda_devices: int = 0
    cuda_version_min: str = ""  # CUDARequirement cudaVersionMin -> gpu.driver_version
    cuda_compute_capability: tuple[str, ...] = ()  # cudaComputeCapability -> gpu.hardware_target
    stdin: Mapping[str, Any] | None = None  # a collection mount
    stdout: str | None = None  # file name relative to the output directory
    stderr: str | None = None
    network: bool = False
    timelimit: int | None = None  # seconds; None or 0 = unlimited
    preemptible: bool | None = None
    reuse: bool = True
    outdir: str = OUTDIR
    tmpdir: str = TMPDIR
    # Files holding cwltool:Secrets values, by container path (see cwl_secrets): sent only as the
    # request's secret_mounts, which Arvados never returns and compares for reuse by md5 only.
    secret_mounts: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    output_ttl: int = 0  # the request's output_ttl (arv:IntermediateOutput, else the run's)
    # Arvados extensions (cwl_hints): None where the tool says nothing.
    partitions: tuple[str, ...] | None = None  # arv:PartitionRequirement
    output_storage_classes: tuple[str, ...] | None = None  # arv:OutputStorageClass intermediateStorageClass
    keep_cache_mib: int | None = None  # arv:RuntimeConstraints keep_cache
    keep_cache_in_ram: bool | None = None  # arv:KeepCacheTypeRequirement (None: the cluster's default)
    api: bool = False  # arv:APIRequirement
    properties: Mapping[str, Any] = field(default_factory=dict)  # arv:ProcessProperties, evaluated
    ram_factor: float = 1.0  # memory retries (arv:OutOfMemoryRetry, --doubleMem): RAM x this
    memory_attempt: int = 0  # which memory retry this request is (0: the first submission)


@dataclass(frozen=True)
class StepSettings:
    """Per-run settings from the leader (``--arvados*`` options, parent request)."""

    project_uuid: str
    priority: int = 500
    reuse: bool = True
    max_attempts: int | None = None
    workflow_run: str = ""
    parent_request: str | None = None
    extra_properties: Mapping[str, str] = field(default_factory=dict)
    preemptible_instances: bool = False  # the cluster has preemptible instance types
    output_ttl: int = 0  # --arvadosIntermediateOutputTTL: seconds before Arvados trashes a step's output
    partitions: tuple[str, ...] = ()  # --arvadosPartition
    intermediate_storage_classes: tuple[str, ...] = ()  # --arvadosIntermediateStorageClasses
    default_preemptible: bool = False  # Toil's --defaultPreemptible
    default_walltime: int = 0  # Toil's --defaultWalltime, seconds (0: none)
    keep_cache_in_ram: bool = False  # the cluster's Containers.DefaultKeepCacheRAM is not 0
    double_mem: bool = False  # Toil's --doubleMem: a step out of memory is retried with twice the RAM
    retry_count: int = 0  # Toil's --retryCount: how often (with --doubleMem)


PROPERTY_MEMORY_ATTEMPT = "toil_memory_retry"  # on a request re-submitted with more RAM
PROPERTY_RESUBMITTED = "arv:failed_container_resubmitted"  # Arvados' own name, on the failed request


def step_request_body(inv: StepInvocation, settings: StepSettings, *, step: str, tool: str) -> dict[str, Any]:
    """The ``container_request`` body that runs ``inv`` as a Committed request."""
    body: dict[str, Any] = {
        "name": request_name(inv.name),
        "owner_uuid": settings.project_uuid,
        "state": "Committed",
        "priority": settings.priority,
        "command": list(inv.command),
        "cwd": inv.outdir,
        "output_path": inv.outdir,
        "container_image": inv.image,
        "environment": dict(inv.environment),
        "mounts": _mounts(inv),
        "runtime_constraints": _runtime_constraints(inv, settings),
        "scheduling_parameters": _scheduling(inv, settings),
        "use_existing": bool(inv.reuse and settings.reuse),
        "output_name": request_name(f"Output of {inv.name}"),
        "properties": _properties(inv, settings, step, tool),
    }
    if inv.output_ttl > 0:  # Arvados does not compare it for reuse
        body["output_ttl"] = int(inv.output_ttl)
    storage_classes = inv.output_storage_classes or settings.intermediate_storage_classes
    if storage_classes:
        body["output_storage_classes"] = list(storage_classes)
    if inv.secret_mounts:
        body["secret_mounts"] = {path: dict(m) for path, m in inv.secret_mounts.items()}
    if settings.max_attempts is not None:
        body["container_count_max"] = int(settings.max_attempts)
    return body


def _mounts(inv: StepInvocation) -> dict[str, Any]:
    """The output and temp dirs as ``tmp`` mounts, the inputs, and stdin/stdout/stderr."""
    mounts: dict[str, Any] = {
        inv.outdir: {"kind": "tmp", "capacity": _bytes(inv.outdir_mib)},
        inv.tmpdir: {"kind": "tmp", "capacity": _bytes(inv.tmpdir_mib)},
    }
    mounts.update({path: dict(m) for path, m in inv.mounts.items()})
    if inv.stdin is not None:
        mounts["stdin"] = dict(inv.stdin)
    for stream, name in (("stdout", inv.stdout), ("stderr", inv.stderr)):
        if name:
            mounts[stream] = {"kind": "file", "path": f"{inv.outdir.rstrip('/')}/{name}"}
    return mounts


def _properties(inv: StepInvocation, settings: StepSettings, step: str, tool: str) -> dict[str, Any]:
    """The tool's own (arv:ProcessProperties), then what ties the request to its run and step:
    Arvados does not compare properties for reuse."""
    properties = {**{str(k): v for k, v in inv.properties.items()},
                  PROPERTY_STEP: step, PROPERTY_TOOL: portable_tool_id(tool), **settings.extra_properties}
    if inv.memory_attempt:
        properties[PROPERTY_MEMORY_ATTEMPT] = inv.memory_attempt
    if settings.workflow_run:
        properties[PROPERTY_WORKFLOW_RUN] = settings.workflow_run
    if settings.parent_request:
        properties[PROPERTY_PARENT_REQUEST] = settings.parent_request
    return properties


def _runtime_constraints(inv: StepInvocation, settings: StepSettings) -> dict[str, Any]:
    rc: dict[str, Any] = {
        "vcpus": max(1, math.ceil(inv.cores)),
        "ram": max(_MIN_RAM, int(math.ceil(inv.ram_mib * MIB * inv.ram_factor))),
        # Arvados has one switch for a container's network: API access. NetworkAccess and
        # arv:APIRequirement ask for it.
        "API": bool(inv.network or inv.api),
    }
    if inv.keep_cache_mib:
        # As Arvados' runner does: the cache the cluster uses by default (a RAM cache where
        # DefaultKeepCacheRAM is set, else a disk cache) unless the tool chooses one.
        in_ram = settings.keep_cache_in_ram if inv.keep_cache_in_ram is None else inv.keep_cache_in_ram
        rc["keep_cache_ram" if in_ram else "keep_cache_disk"] = int(inv.keep_cache_mib) * MIB
    if inv.cuda_devices:
        rc["gpu"] = gpu_constraints(int(inv.cuda_devices), "cuda", inv.cuda_version_min,
                                    list(inv.cuda_compute_capability))
    return rc


def _scheduling(inv: StepInvocation, settings: StepSettings) -> dict[str, Any]:
    """A tool's own choices first, then Toil's defaults (--defaultPreemptible, --defaultWalltime)
    and --arvadosPartition, as Toil applies its defaults to jobs that say nothing."""
    preemptible = inv.preemptible if inv.preemptible is not None else (settings.default_preemptible or None)
    sched = scheduling_parameters(preemptible, settings.preemptible_instances)
    timelimit = inv.timelimit or settings.default_walltime
    if timelimit:
        sched["max_run_time"] = int(timelimit)
    partitions = inv.partitions if inv.partitions is not None else settings.partitions
    if partitions:
        sched["partitions"] = list(partitions)
    return sched


def process_status(exit_code: int | None, success: list[int], temporary: list[int],
                   permanent: list[int]) -> str:
    """cwltool's rule for an exit code: ``success``, ``temporaryFail`` or ``permanentFail``."""
    if exit_code is None:
        return "permanentFail"
    if exit_code in success:
        return "success"
    if exit_code in temporary:
        return "temporaryFail"
    if exit_code in permanent:
        return "permanentFail"
    return "success" if exit_code == 0 else "permanentFail"


def _bytes(mib: float) -> int:
    return max(MIB, int(math.ceil(mib * MIB)))


def portable_tool_id(tool_id: str) -> str:
    """A tool's id without the leader's directories (``file:///home/u/wf/tool.cwl#main`` ->
    ``tool.cwl#main``): enough to tell tools apart in Workbench, nothing of the leader's disk.
    Remote ids (``https://``, ``keep:``) are kept whole."""
    if not tool_id.startswith(("file:", "/")):
        return tool_id
    path, hash_, fragment = tool_id.partition("#")
    return path.rstrip("/").rsplit("/", 1)[-1] + hash_ + fragment
