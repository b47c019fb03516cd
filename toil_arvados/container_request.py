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

# Where the worker runs and writes scratch data inside the container: one ``tmp`` mount whose
# capacity is the job's disk requirement. One, not two: dispatch-cloud adds up the capacity of
# every tmp mount, so a second one at the full size would ask the node for twice the disk.
WORK_DIR = "/var/spool/cwl"
TMP_DIR = WORK_DIR
NAME_MAX = 255  # Arvados refuses longer names

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
    # Whether the cluster has preemptible instance types (configs.get -> InstanceTypes): only then
    # may a request ask for one; Arvados refuses ``preemptible: true`` otherwise.
    preemptible_instances: bool = False


# Loosest values Arvados accepts when the job names no version: driver_version must be "X.Y" > 0,
# and for CUDA one hardware_target "X.Y" is a minimum compute capability (dispatch-cloud compares).
ANY_DRIVER = "1.0"
ANY_CUDA_CAPABILITY = "1.0"


def gpu_constraints(device_count: int, stack: str = "cuda", driver_version: str = "",
                    hardware_target: Any = ()) -> dict[str, Any]:
    """``runtime_constraints.gpu`` as Arvados 3 validates it (container_request.rb): ``stack`` cuda or
    rocm, ``device_count``, ``driver_version`` "X.Y", ``hardware_target`` a list of strings, ``vram``."""
    if isinstance(hardware_target, str):
        hardware_target = [hardware_target]
    targets = [str(t) for t in hardware_target or () if str(t)]
    if not targets and stack == "cuda":
        targets = [ANY_CUDA_CAPABILITY]
    return {
        "device_count": int(device_count),
        "stack": stack,
        "driver_version": _x_y(driver_version) or ANY_DRIVER,
        "hardware_target": targets,
        "vram": 0,
    }


def _x_y(version: Any) -> str:
    """"12" -> "12.0", "11.4.2" -> "11.4"; "" when there is no usable version (pure)."""
    parts = str(version or "").strip().split(".")
    if not parts[0].isdigit():
        return ""
    minor = parts[1] if len(parts) > 1 and parts[1].isdigit() else "0"
    return f"{int(parts[0])}.{int(minor)}" if float(f"{parts[0]}.{minor}") > 0 else ""


def runtime_constraints(res: JobResources) -> dict[str, Any]:
    """Cores, memory and GPUs in Arvados' form (``vcpus`` is an integer; ``ram`` in bytes)."""
    rc: dict[str, Any] = {
        "vcpus": max(1, math.ceil(res.cores)),
        "ram": max(_MIN_RAM, int(res.memory)),
        "API": True,  # the worker reads and writes the Keep job store through the API
    }
    gpus = [a for a in res.accelerators if a.get("kind") == "gpu"]
    count = sum(int(a.get("count", 1)) for a in gpus)
    if count:
        stack = _gpu_stack(res.accelerators)
        # Toil's ``model`` names the hardware; for ROCm that is an LLVM target (gfx90a) Arvados matches.
        targets = [str(a["model"]) for a in gpus if stack == "rocm" and a.get("model")]
        rc["gpu"] = gpu_constraints(count, stack, hardware_target=targets)
    return rc


#: The GPU software stacks Arvados 3 schedules (runtime_constraints.gpu.stack).
GPU_STACKS = ("cuda", "rocm")


def unsupported_accelerator(acc: Mapping[str, Any]) -> str | None:
    """Why Arvados cannot give a job this Toil accelerator request, or None (pure)."""
    if acc.get("kind") != "gpu":
        return f"Arvados offers GPUs only, not {acc.get('kind')!r} accelerators."
    api = str(acc.get("api") or "").lower()
    if api and api not in GPU_STACKS:
        return (f"Arvados schedules GPUs for the {' and '.join(GPU_STACKS)} stacks, not {api!r}: ask for "
                "api 'cuda' or 'rocm' (or no api).")
    return None


def _gpu_stack(accelerators: tuple[Mapping[str, Any], ...]) -> str:
    for a in accelerators:
        if a.get("kind") == "gpu":
            if str(a.get("api") or "").lower() == "rocm" or str(a.get("brand") or "").lower() == "amd":
                return "rocm"
    return "cuda"


def scheduling_parameters(preemptible: bool | None, preemptible_instances: bool) -> dict[str, Any]:
    """Toil's ``preemptible`` means a job *may* be preempted: ask for a preemptible instance only
    when the cluster has such types (Arvados refuses it otherwise); an explicit "no" is always fine."""
    if preemptible and preemptible_instances:
        return {"preemptible": True}
    if preemptible is False:
        return {"preemptible": False}
    return {}


def request_name(*candidates: str) -> str:
    """The first non-empty candidate, cut to the 255 characters Arvados allows."""
    return next((c for c in candidates if c), "")[:NAME_MAX]


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
        "name": request_name(display_name, job_name),
        "owner_uuid": settings.project_uuid,
        "state": "Committed",
        "priority": settings.priority,
        "container_image": settings.image,
        "command": [settings.worker_python, "-m", "toil_arvados.worker", worker_command],
        "cwd": WORK_DIR,
        "output_path": WORK_DIR,
        "mounts": {WORK_DIR: {"kind": "tmp", "capacity": disk}},
        # The worker's node-local Toil state (caching file store database, worker locks) and its
        # temporary files must live in the container's own scratch space: a coordination dir
        # shared with the leader's host points at the leader's private files ("Missing cache
        # file"), and the image's own /tmp is not part of the job's disk.
        "environment": {**dict(environment), "TMPDIR": TMP_DIR, "TOIL_COORDINATION_DIR_OVERRIDE": TMP_DIR},
        "runtime_constraints": runtime_constraints(resources),
        "scheduling_parameters": scheduling_parameters(bool(resources.preemptible) or None,
                                                       settings.preemptible_instances),
        "use_existing": settings.reuse,
        "properties": properties,
    }
    if settings.max_attempts is not None:
        body["container_count_max"] = settings.max_attempts
    return body


# -- will it fit? (dispatch-cloud's rules, lib/dispatchcloud/container/node_size.go) ----------

_RAM_DISCOUNT_PERCENT = 5  # dispatch-cloud assumes 5% of an instance's configured RAM is unusable
_MANIFEST_BLOCK_CHARS, _MANIFEST_OVERHEAD, _IMAGE_BLOCK = 42, 80, 64 << 20


@dataclass(frozen=True)
class Unfit:
    """Why no instance type can run a request: the Toil resource name, the most any type offers, why."""

    resource: str  # Toil's names: cores, memory, disk, accelerators, preemptible
    available: Any
    detail: str


def keep_cache(rc: Mapping[str, Any], containers_config: Mapping[str, Any]) -> tuple[int, int]:
    """(keep_cache_ram, keep_cache_disk) after the API server fills its defaults (pure)."""
    ram = int(rc.get("keep_cache_ram") or 0) or int(containers_config.get("DefaultKeepCacheRAM") or 0)
    disk = int(rc.get("keep_cache_disk") or 0)
    if not disk and not ram:
        disk = min(max(int(rc.get("ram") or 0), 2 << 30), 32 << 30)
    return ram, disk


def image_scratch(image_pdh: str | None) -> int:
    """Disk dispatch-cloud reserves for an arv-keepdocker image, estimated from its manifest size."""
    size = (image_pdh or "").partition("+")[2]
    n = int(size) if size.isdigit() else 0
    return 0 if n < 122 else ((n - _MANIFEST_OVERHEAD) // _MANIFEST_BLOCK_CHARS) * _IMAGE_BLOCK


def needed_ram(rc: Mapping[str, Any], containers_config: Mapping[str, Any]) -> int:
    """Instance RAM a container needs: its ram + keep cache + ReserveExtraRAM (+ local keepstore)."""
    need = int(rc.get("ram") or 0) + keep_cache(rc, containers_config)[0]
    need += int(containers_config.get("ReserveExtraRAM") or 0)
    buffers = int(containers_config.get("LocalKeepBlobBuffersPerVCPU") or 0)
    if buffers:
        need += (220 << 20) + buffers * int(rc.get("vcpus") or 0) * (1 << 26) * 11 // 10
    return need * 100 // (100 - _RAM_DISCOUNT_PERCENT)


def needed_scratch(rc: Mapping[str, Any], mounts: Mapping[str, Mapping[str, Any]], image_pdh: str | None,
                   containers_config: Mapping[str, Any]) -> int:
    """Instance scratch a container needs: its tmp mounts, the image (loaded + extracted), keep cache."""
    tmp = sum(int(m.get("capacity") or 0) for m in mounts.values() if m.get("kind") == "tmp")
    image = image_scratch(image_pdh)
    return max(tmp, image) + image + keep_cache(rc, containers_config)[1]


def _version_less(have: Any, want: Any) -> bool:
    try:
        return float(have) < float(want)
    except (TypeError, ValueError):
        return True


def _gpu_fits(gpu: Mapping[str, Any], it_gpu: Mapping[str, Any]) -> bool:
    count = int(gpu.get("device_count") or 0)
    if str(it_gpu.get("Stack") or "") != str(gpu.get("stack") or ""):  # a GPU node runs GPU jobs only
        return False
    if not count:
        return True
    if int(it_gpu.get("DeviceCount") or 0) < count or int(it_gpu.get("VRAM") or 0) < int(gpu.get("vram") or 0):
        return False
    if _version_less(it_gpu.get("DriverVersion"), gpu.get("driver_version")):
        return False
    targets, have = list(gpu.get("hardware_target") or []), str(it_gpu.get("HardwareTarget") or "")
    if gpu.get("stack") == "cuda" and len(targets) == 1:
        return not _version_less(have, targets[0])
    return have in targets


def instance_scratch(instance_type: Mapping[str, Any]) -> int:
    """An exported instance type's scratch: Arvados exports IncludedScratch and AddedScratch, and
    computes Scratch (never exported) as their sum, as Go's ``InstanceTypeMap`` does on reading."""
    return int(instance_type.get("IncludedScratch") or 0) + int(instance_type.get("AddedScratch") or 0)


def _vcpus(instance_type: Mapping[str, Any]) -> int:
    return int(instance_type.get("VCPUs") or 0)


def _ram(instance_type: Mapping[str, Any]) -> int:
    return int(instance_type.get("RAM") or 0)


def unfit(rc: Mapping[str, Any], mounts: Mapping[str, Mapping[str, Any]], scheduling: Mapping[str, Any],
          image_pdh: str | None, cluster: Mapping[str, Any]) -> Unfit | None:
    """None if some instance type of ``cluster`` (the exported config) can run the request, as
    dispatch-cloud decides; else what is short. A cluster without InstanceTypes is not judged."""
    types = list((cluster.get("InstanceTypes") or {}).values())
    if not types:
        return None
    cc = cluster.get("Containers") or {}
    ram, scratch = needed_ram(rc, cc), needed_scratch(rc, mounts, image_pdh, cc)
    gpu = rc.get("gpu") or {}
    preemptible = bool(scheduling.get("preemptible"))
    # First the kind of node (preemptible or not, its GPUs), then the sizes among nodes of that kind.
    kinds = [
        ("preemptible", lambda t: bool(t.get("Preemptible")) == preemptible, None,
         f"a{'' if preemptible else ' non'}-preemptible instance"),
        ("accelerators", lambda t: _gpu_fits(gpu, t.get("GPU") or {}),
         max(int((t.get("GPU") or {}).get("DeviceCount") or 0) for t in types), f"GPUs {dict(gpu) or 'none'}"),
    ]
    for resource, ok, available, what in kinds:
        if not any(ok(t) for t in types):
            return Unfit(resource, available, f"no instance type of the cluster offers {what}")
    types = [t for t in types if all(ok(t) for _, ok, _, _ in kinds)]
    sizes = [
        ("cores", lambda t: _vcpus(t) >= int(rc.get("vcpus") or 0), _vcpus, "cores", f"{rc.get('vcpus')} cores"),
        ("memory", lambda t: _ram(t) >= ram, _ram, "bytes of RAM",
         f"{ram} bytes of RAM (ram + keep cache + ReserveExtraRAM, less 5% of the instance's)"),
        ("disk", lambda t: instance_scratch(t) >= scratch, instance_scratch,
         "bytes of scratch", f"{scratch} bytes of scratch (tmp mounts + image + keep cache)"),
    ]
    if any(all(ok(t) for _, ok, _, _, _ in sizes) for t in types):
        return None
    for resource, ok, size, unit, what in sizes:
        if not any(ok(t) for t in types):
            available = max(size(t) for t in types)
            return Unfit(resource, available,
                         f"it needs {what}, but the largest suitable instance type offers {available} {unit}")
    return Unfit("cores", None, "no single instance type of the cluster offers all of: "
                 + ", ".join(what for _, _, _, _, what in sizes))
