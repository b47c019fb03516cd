"""Toil job -> Arvados container request body: a pure mapping, testable without a server.

Each Toil job becomes one container request. Its requirements become ``runtime_constraints`` so
that crunch places it on a node that fits; its identity (workflow id, job store id) goes into
``properties`` so a restarted leader can find the request again; the command runs Toil's worker
through :mod:`toil_arvados.worker`, which loads this plugin first.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

# Where the worker runs and writes scratch data inside the container. Both are ``tmp`` mounts, so
# the disk requirement becomes their capacity.
WORK_DIR = "/var/spool/cwl"
TMP_DIR = "/tmp"

PROPERTY_WORKFLOW = "toil_workflow_id"
PROPERTY_JOB_STORE_ID = "toil_job_store_id"
PROPERTY_JOB_NAME = "toil_job_name"
PROPERTY_BATCH_ID = "toil_batch_job_id"

_MIN_RAM = 64 << 20  # below this the worker's Python cannot start; Arvados also floors tiny requests


@dataclass(frozen=True)
class JobResources:
    """The parts of a Toil job's requirements Arvados can act on."""

    cores: float
    memory: int
    disk: int
    accelerators: tuple[Mapping[str, Any], ...] = ()
    preemptible: bool = False


@dataclass(frozen=True)
class SubmitSettings:
    """Per-workflow settings from the ``--arvados*`` options."""

    project_uuid: str
    image: str
    priority: int = 500
    reuse: bool = False
    worker_python: str = "python3"
    max_attempts: int | None = None
    extra_properties: Mapping[str, str] = field(default_factory=dict)


def runtime_constraints(res: JobResources) -> dict[str, Any]:
    """Cores, memory and GPUs in Arvados' form (``vcpus`` is an integer; ``ram`` in bytes)."""
    rc: dict[str, Any] = {
        "vcpus": max(1, math.ceil(res.cores)),
        "ram": max(_MIN_RAM, int(res.memory)),
        "API": True,  # the worker reads and writes the Keep job store through the API
    }
    gpus = sum(int(a.get("count", 1)) for a in res.accelerators if a.get("kind") == "gpu")
    if gpus:
        rc["gpu"] = {
            "device_count": gpus,
            "stack": _gpu_stack(res.accelerators),
            "driver_version": "",
            "hardware_target": [],
            "vram": 0,
        }
    return rc


def _gpu_stack(accelerators: tuple[Mapping[str, Any], ...]) -> str:
    for a in accelerators:
        if a.get("kind") == "gpu":
            api = str(a.get("api") or a.get("brand") or "").lower()
            if api in ("rocm", "amd"):
                return "rocm"
    return "cuda"


def container_request_body(
    *,
    worker_command: str,
    display_name: str,
    job_name: str,
    job_store_id: str,
    workflow_id: str,
    batch_job_id: int,
    resources: JobResources,
    settings: SubmitSettings,
    environment: Mapping[str, str],
) -> dict[str, Any]:
    """The ``container_request`` object for one Toil job, committed so crunch runs it now."""
    properties = dict(settings.extra_properties)
    properties.update({
        PROPERTY_WORKFLOW: workflow_id,
        PROPERTY_JOB_STORE_ID: job_store_id,
        PROPERTY_JOB_NAME: job_name,
        PROPERTY_BATCH_ID: str(batch_job_id),
    })
    disk = max(int(resources.disk), 1 << 20)
    body: dict[str, Any] = {
        "name": display_name[:250] or job_name[:250],
        "owner_uuid": settings.project_uuid,
        "state": "Committed",
        "priority": settings.priority,
        "container_image": settings.image,
        "command": [settings.worker_python, "-m", "toil_arvados.worker", worker_command],
        "cwd": WORK_DIR,
        "output_path": WORK_DIR,
        "mounts": {
            WORK_DIR: {"kind": "tmp", "capacity": disk},
            TMP_DIR: {"kind": "tmp", "capacity": disk},
        },
        # The worker's node-local Toil state (caching file store database, worker locks) must live
        # in the container's own scratch space: a coordination dir shared with the leader's host
        # (as /run/lock is under the local cluster's namespace runtime) points at the leader's
        # private /tmp files ("Missing cache file").
        "environment": {**dict(environment), "TMPDIR": TMP_DIR, "TOIL_COORDINATION_DIR_OVERRIDE": TMP_DIR},
        "runtime_constraints": runtime_constraints(resources),
        "scheduling_parameters": {"preemptible": bool(resources.preemptible)},
        "use_existing": settings.reuse,
        "properties": properties,
    }
    if settings.max_attempts is not None:
        body["container_count_max"] = settings.max_attempts
    return body
