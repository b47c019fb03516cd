"""Container request rules of Arvados' API server, as pure functions (no store, no server).

Each function mirrors one validation of ``services/api/app/models/container_request.rb`` (or of
``arvados_model.rb`` / the database schema) and returns the error messages Arvados would add, in
its wording (``"Runtime constraints [vcpus]=0 must be a positive integer"``), so the API can
answer 422 with every problem at once, each naming the bad attribute. An empty list means valid.

Where the Rails model does not check a type but Arvados' Go components (dispatcher, crunch-run)
decode the value into a typed struct (``API``, ``keep_cache_*``, ``preemptible``,
``supervisor``), we refuse the wrong type up front: on a real cluster such a container could
never be dispatched, so accepting it here would be looser than Arvados.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

from .registry import KINDS

#: Keys Arvados allows in runtime_constraints ('cuda' is the legacy form of 'gpu').
RUNTIME_CONSTRAINT_KEYS = ("API", "gpu", "keep_cache_disk", "keep_cache_ram", "ram", "vcpus", "cuda")
GPU_KEYS = ("device_count", "driver_version", "hardware_target", "stack", "vram")
CUDA_KEYS = ("device_count", "driver_version", "hardware_capability")
GPU_STACKS = (None, "", "cuda", "rocm")
SCHEDULING_PARAMETER_KEYS = ("max_run_time", "partitions", "preemptible", "supervisor")
#: Columns that are ``character varying(255)`` in Arvados' database (db/structure.sql): a longer
#: value is refused by PostgreSQL ("value too long"), not truncated.
NAME_COLUMNS: dict[str, tuple[str, ...]] = {t: k.name_columns for t, k in KINDS.items() if k.name_columns}
MAX_NAME_LENGTH = 255


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _ruby_to_f(v: str) -> float:
    """Ruby's ``String#to_f``: the leading number of the string, 0.0 when there is none."""
    m = re.match(r"\s*[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?", v)
    return float(m.group(0)) if m else 0.0


def _version_ok(v: Any) -> bool:
    """Arvados' "X.Y" check: a string whose leading number is not 0."""
    return isinstance(v, str) and _ruby_to_f(v) != 0.0


def _extra_keys(attr: str, h: Mapping, allowed: tuple[str, ...]) -> list[str]:
    extra = [k for k in h if k not in allowed]
    return [f"{attr} contains unexpected keys {extra!r}"] if extra else []


def runtime_constraint_errors(rc: Any, *, committed: bool) -> list[str]:
    """``validate_runtime_constraints`` of container_request.rb, on constraints already filled in
    and translated (:func:`reuse.fill_runtime_constraint_defaults`), as Rails validates them."""
    attr = "Runtime constraints"
    if not isinstance(rc, dict):
        return [f"{attr} must be a hash"]
    errors: list[str] = []
    if committed:
        for k in ("vcpus", "ram"):
            v = rc.get(k)
            if not _is_int(v) or v <= 0:
                errors.append(f"{attr} [{k}]={v!r} must be a positive integer")
        errors += _cuda_errors(attr, rc.get("cuda"))
        errors += _gpu_errors(attr, rc.get("gpu"))
        if not isinstance(rc.get("API"), bool):
            errors.append(f"{attr} [API]={rc.get('API')!r} must be true or false")
        for k in ("keep_cache_ram", "keep_cache_disk"):
            v = rc.get(k)
            if not _is_int(v) or v < 0:
                errors.append(f"{attr} [{k}]={v!r} must be a positive or zero integer")
    return errors + _extra_keys(attr, rc, RUNTIME_CONSTRAINT_KEYS)


def _cuda_errors(attr: str, cuda: Any) -> list[str]:
    if not cuda:
        return []
    if not isinstance(cuda, dict):
        return [f"{attr} [cuda] must be a hash"]
    errors = _extra_keys(attr, cuda, CUDA_KEYS)
    count = cuda.get("device_count")
    if not _is_int(count) or count < 0:
        errors.append(f"{attr} [cuda.device_count]={count!r} must be a positive or zero integer")
        count = 0
    for k in ("driver_version", "hardware_capability"):
        v = cuda.get(k)
        if not isinstance(v, str) or (count > 0 and not _version_ok(v)):
            errors.append(f"{attr} [cuda.{k}]={v!r} must be a string in format 'X.Y'")
    return errors


def _gpu_errors(attr: str, gpu: Any) -> list[str]:
    if not isinstance(gpu, dict):
        return [f"{attr} [gpu] must be a hash"]
    errors = _extra_keys(attr, gpu, GPU_KEYS)
    if gpu.get("stack") not in GPU_STACKS:
        errors.append(f"{attr} [gpu.stack]={gpu.get('stack')!r} must be one of 'cuda' or 'rocm' or be empty")
    for k in ("device_count", "vram"):
        v = gpu.get(k)
        if not _is_int(v) or v < 0:
            errors.append(f"{attr} [gpu.{k}]={v!r} must be a positive or zero integer")
    count = gpu.get("device_count")
    if _is_int(count) and count > 0:
        if not _version_ok(gpu.get("driver_version")):
            errors.append(f"{attr} [gpu.driver_version]={gpu.get('driver_version')!r} "
                          "must be a string in format 'X.Y'")
        target = gpu.get("hardware_target")
        if not isinstance(target, list) or not all(isinstance(t, str) for t in target):
            errors.append(f"{attr} [gpu.hardware_target]={target!r} must be an array of strings")
    return errors


def scheduling_parameter_errors(sp: Any, *, committing: bool, any_preemptible: bool) -> list[str]:
    """``validate_scheduling_parameters`` of container_request.rb.

    ``committing``: the request becomes Committed now (new, or its state changes), the only time
    the preemptible check runs (a later config change must not block finalizing).
    """
    attr = "Scheduling parameters"
    if not isinstance(sp, dict):
        return [f"{attr} must be a hash"]
    errors: list[str] = []
    parts = sp.get("partitions")
    if parts is not None and (not isinstance(parts, list) or not all(isinstance(p, str) for p in parts)):
        errors.append(f"{attr} partitions must be an array of strings")
    if "max_run_time" in sp and (not _is_int(sp["max_run_time"]) or sp["max_run_time"] < 0):
        errors.append(f"{attr} max_run_time must be positive integer")
    for k in ("preemptible", "supervisor"):
        if k in sp and not isinstance(sp[k], bool):
            errors.append(f"{attr} {k}={sp[k]!r} must be true or false")
    errors += _extra_keys(attr, sp, SCHEDULING_PARAMETER_KEYS)
    if committing and sp.get("preemptible") is True and not any_preemptible:
        errors.append(f"{attr} preemptible instances are not configured in InstanceTypes")
    return errors


def array_of_strings_errors(label: str, value: Any) -> list[str]:
    """Rails' ``array_of_strings`` validator (validate_serialized.rb), on every save; ``None``
    is the column's default being filled."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        return [f"{label} must be an array of non-empty strings"]
    return []


def output_path_errors(output_path: Any, mounts: Any) -> list[str]:
    """``output_path`` must be exactly one of the mount targets (keys of ``mounts``)."""
    if isinstance(mounts, dict) and output_path in mounts:
        return []
    return [f"Output path {output_path!r} must be a mount target"]


def name_length_errors(table: str, attrs: Mapping) -> list[str]:
    """Names longer than the ``varchar(255)`` column are refused, as PostgreSQL refuses them."""
    return [f"{col}: value too long for type character varying({MAX_NAME_LENGTH}) "
            f"({len(attrs[col])} characters)"
            for col in NAME_COLUMNS.get(table, ())
            if isinstance(attrs.get(col), str) and len(attrs[col]) > MAX_NAME_LENGTH]


def unique_name(name: str, uuid: str) -> str:
    """``add_uuid_to_name``: how Arvados renames an object to make its name unique (and short
    enough): the first 237 characters, then the random part of its UUID in parentheses."""
    return f"{name[:237]} ({uuid[-15:]})"


def any_preemptible(instance_types: Mapping[str, Mapping]) -> bool:
    """``ContainerRequest.any_preemptible_instances?``."""
    return any(bool(t.get("Preemptible")) for t in instance_types.values())
