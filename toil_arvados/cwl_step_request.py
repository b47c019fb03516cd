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


def step_request_body(inv: StepInvocation, settings: StepSettings, *, step: str, tool: str) -> dict[str, Any]:
    """The ``container_request`` body that runs ``inv`` as a Committed request."""
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
    rc: dict[str, Any] = {
        "vcpus": max(1, math.ceil(inv.cores)),
        "ram": max(_MIN_RAM, int(math.ceil(inv.ram_mib * MIB))),
        # Arvados has one switch for a container's network: API access. NetworkAccess asks for it.
        "API": bool(inv.network),
    }
    if inv.cuda_devices:
        rc["gpu"] = gpu_constraints(int(inv.cuda_devices), "cuda", inv.cuda_version_min,
                                    list(inv.cuda_compute_capability))
    sched = scheduling_parameters(inv.preemptible, settings.preemptible_instances)
    if inv.timelimit:
        sched["max_run_time"] = int(inv.timelimit)
    properties = {PROPERTY_STEP: step, PROPERTY_TOOL: portable_tool_id(tool), **settings.extra_properties}
    if settings.workflow_run:
        properties[PROPERTY_WORKFLOW_RUN] = settings.workflow_run
    if settings.parent_request:
        properties[PROPERTY_PARENT_REQUEST] = settings.parent_request
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
        "mounts": mounts,
        "runtime_constraints": rc,
        "scheduling_parameters": sched,
        "use_existing": bool(inv.reuse and settings.reuse),
        "output_name": request_name(f"Output of {inv.name}"),
        "properties": properties,
    }
    if inv.output_ttl > 0:  # Arvados does not compare it for reuse
        body["output_ttl"] = int(inv.output_ttl)
    if inv.secret_mounts:
        body["secret_mounts"] = {path: dict(m) for path, m in inv.secret_mounts.items()}
    if settings.max_attempts is not None:
        body["container_count_max"] = int(settings.max_attempts)
    return body


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
