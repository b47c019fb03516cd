"""Container reuse: which existing container may satisfy a newly committed container request.

Follows the rules of Arvados' API server (``Container.resolve`` / ``find_reusable``) so that
``use_existing`` behaves as on a real cluster. Everything here is pure: the server resolves the
image and collection mounts to portable data hashes and supplies a ``readable(pdh)`` check.

Match (all must hold): ``command``, ``cwd``, ``environment``, ``output_path``, ``output_glob``,
``container_image`` (PDH), ``mounts`` (collection mounts carry a PDH, no UUID), the md5 of
``secret_mounts`` and ``runtime_constraints`` after resolution, where keep-cache sizes and an
all-zero GPU/CUDA request are ignored (Arvados enumerates the usual variants of those keys).
Notably *not* compared, though the docs list some of them: ``scheduling_parameters`` (except
``preemptible``, below), ``runtime_user_uuid``, ``runtime_auth_scopes``, ``output_storage_classes``.

Preference: Complete with exit_code 0 and readable log+output (earliest finished) > Running with
priority > 0 and no ``runtime_status.error`` (highest progress, then earliest started) > Locked,
then Queued (highest priority, then oldest). A non-preemptible request never reuses a preemptible
Locked/Queued container. Cancelled and failed containers are never reused.
"""
from __future__ import annotations

import copy
import hashlib
import json
from typing import Any, Callable, Iterable, Mapping

#: Container attributes that decide whether a container can be reused (compared exactly).
REUSE_ATTRIBUTES: tuple[str, ...] = (
    "command", "cwd", "environment", "output_path", "output_glob", "container_image", "mounts",
    "secret_mounts_md5", "runtime_constraints",
)
#: Attributes a container inherits from its request (plus resolution) in ``Container.resolve``.
CONTAINER_ATTRIBUTES_FROM_REQUEST: tuple[str, ...] = (
    "command", "cwd", "environment", "output_path", "output_glob", "container_image", "mounts",
    "runtime_constraints", "scheduling_parameters", "secret_mounts", "runtime_token",
    "output_storage_classes", "service", "published_ports",
)
#: Arvados' ``Containers.DefaultKeepCacheRAM`` default (0: use a disk cache instead).
DEFAULT_KEEP_CACHE_RAM = 0

_ZERO_GPU = {"device_count": 0, "driver_version": "", "hardware_target": [], "stack": "",
             "vram": 0}
_ZERO_CUDA = {"device_count": 0, "driver_version": "", "hardware_capability": ""}
# Serialized attributes where an empty value also matches a NULL column (old records).
_SERIALIZED = ("command", "environment", "output_glob", "mounts")


class UnresolvableError(ValueError):
    """A mount or image cannot be resolved; Arvados answers 422 ``UnresolvableContainerError``."""


# --------------------------------------------------------------------------- normalisation


def deep_sort(value: Any) -> Any:
    """Hash keys sorted recursively: Arvados stores/compares serialized hashes this way."""
    if isinstance(value, dict):
        return {k: deep_sort(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [deep_sort(v) for v in value]
    return value


def canonical_json(value: Any) -> str:
    """Compact JSON of the deep-sorted value (Arvados' ``SafeJSON.dump(deep_sort_hash(x))``)."""
    return json.dumps(deep_sort(value), separators=(",", ":"), ensure_ascii=False)


def secret_mounts_md5(secret_mounts: Mapping[str, Any] | None) -> str:
    """md5 of the secret mounts: the only trace of them a finished container keeps.

    ``{}`` gives ``99914b932bd37a50b983c5e7c90ae93b``, the column default in Arvados.
    """
    return hashlib.md5(canonical_json(secret_mounts or {}).encode()).hexdigest()


def fill_runtime_constraint_defaults(rc: Mapping[str, Any] | None) -> dict:
    """A container request's runtime_constraints with Arvados' implied zero values filled in.

    Arvados does this on every request save (legacy ``cuda`` with devices also becomes ``gpu``),
    so requests that omit a key and requests that give its zero value look the same.
    """
    out = copy.deepcopy(dict(rc or {}))
    _translate_cuda_to_gpu(out)
    filled: dict[str, Any] = {"API": False, "gpu": {}, "keep_cache_disk": 0,
                              "keep_cache_ram": 0, "ram": 0, "vcpus": 0}
    filled.update(out)
    if isinstance(filled["gpu"], dict):
        filled["gpu"] = {**_ZERO_GPU, **filled["gpu"]}
    return filled


def _translate_cuda_to_gpu(rc: dict) -> None:
    """Legacy ``cuda`` requests with devices are rewritten as generic ``gpu`` (cuda is kept)."""
    cuda = rc.get("cuda")
    count = cuda.get("device_count") if isinstance(cuda, dict) else None
    if isinstance(count, int) and not isinstance(count, bool) and count > 0:
        rc["gpu"] = {"device_count": cuda["device_count"],
                     "driver_version": cuda.get("driver_version"),
                     "hardware_target": [cuda.get("hardware_capability")],
                     "stack": "cuda", "vram": 0}


def bound_keep_cache_disk(ram: int | None) -> int:
    """Default disk cache: the container's RAM, clamped to [2 GiB, 32 GiB]."""
    return min(max(ram or 0, 2 << 30), 32 << 30)


def resolve_runtime_constraints(rc: Mapping[str, Any] | None,
                                default_keep_cache_ram: int = DEFAULT_KEEP_CACHE_RAM) -> dict:
    """The runtime_constraints a new container gets: ranges collapsed, cache sizes defaulted.

    Apply :func:`fill_runtime_constraint_defaults` first (the request side does). Idempotent.
    """
    out = {k: (v[0] if isinstance(v, list) else copy.deepcopy(v)) for k, v in (rc or {}).items()}
    if out.get("keep_cache_ram") == 0:
        out["keep_cache_ram"] = default_keep_cache_ram
    if out.get("keep_cache_disk") == 0 and out.get("keep_cache_ram") == 0:
        out["keep_cache_disk"] = bound_keep_cache_disk(out.get("ram"))
    _translate_cuda_to_gpu(out)
    return deep_sort(out)


def resolve_mounts(mounts: Mapping[str, Any] | None,
                   pdh_for_uuid: Callable[[str], str | None]) -> dict:
    """Mounts as a container holds them: collection mounts by PDH, their ``uuid`` removed.

    ``pdh_for_uuid`` looks a collection UUID up *as the requesting user* (Arvados checks read
    permission here); an unknown/unreadable collection is an :class:`UnresolvableError`.
    """
    out: dict[str, Any] = {}
    for path, mount in (mounts or {}).items():
        mount = dict(mount)
        out[path] = mount
        if mount.get("kind") != "collection":
            continue
        uuid = mount.pop("uuid", None)
        if mount.get("portable_data_hash") is None and uuid is not None:
            pdh = pdh_for_uuid(uuid)
            if not pdh:
                raise UnresolvableError(f"cannot mount collection {json.dumps(uuid)}: not found")
            mount["portable_data_hash"] = pdh
    return out


def reusable_runtime_constraints(rc: Mapping[str, Any] | None,
                                 default_keep_cache_ram: int = DEFAULT_KEEP_CACHE_RAM
                                 ) -> list[dict]:
    """Every runtime_constraints value a reusable container may have for this request.

    Keep cache sizes do not change a container's result, and an all-zero GPU/CUDA request is the
    same as none, so Arvados accepts the common variants of those keys (absent, zero, default,
    clamp bounds, the requested value) instead of ignoring them outright.
    """
    base = resolve_runtime_constraints(rc, default_keep_cache_ram)
    variations: dict[str, list[Any]] = {
        "keep_cache_disk": [None, 0, bound_keep_cache_disk(base.get("ram")),
                            bound_keep_cache_disk(0), bound_keep_cache_disk(1 << 60),
                            base.pop("keep_cache_disk", None)],
        "keep_cache_ram": [0, default_keep_cache_ram, base.pop("keep_cache_ram", None)],
    }
    gpu = base.get("gpu")
    if gpu is None or (isinstance(gpu, dict) and gpu.get("device_count") == 0):
        variations["gpu"] = [None, dict(_ZERO_GPU), base.pop("gpu", None)]
    cuda = base.get("cuda")
    if cuda is None or (isinstance(cuda, dict) and cuda.get("device_count") == 0):
        variations["cuda"] = [None, dict(_ZERO_CUDA), base.pop("cuda", None)]
    else:
        variations["gpu"] = [None, base.pop("gpu", None)]
    combos: list[dict] = [dict(base)]
    for key, values in variations.items():
        unique: list[Any] = []
        for v in values:
            if v not in unique:
                unique.append(v)
        combos = [({**c, key: v} if v is not None else c) for c in combos for v in unique]
    seen: dict[str, dict] = {}
    for combo in combos:
        seen.setdefault(canonical_json(combo), deep_sort(combo))
    return list(seen.values())


# --------------------------------------------------------------------------- matching


def reuse_key(container_attrs: Mapping[str, Any]) -> str:
    """Digest of the exactly-compared attributes (everything but runtime_constraints).

    Useful to index candidates; :func:`is_reuse_match` must still check runtime_constraints.
    Accepts either ``secret_mounts`` (a request) or ``secret_mounts_md5`` (a stored container).
    """
    parts = [_serialized_form(container_attrs, a) for a in
             ("command", "cwd", "environment", "output_path", "output_glob", "container_image",
              "mounts")]
    parts.append(_secret_md5_of(container_attrs))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _serialized_form(attrs: Mapping[str, Any], name: str) -> str:
    value = attrs.get(name)
    if name in _SERIALIZED and (value is None or value == {} or value == []):
        return "<empty>"  # Arvados matches an empty value against NULL too
    return canonical_json(value)


def _secret_md5_of(attrs: Mapping[str, Any]) -> str:
    if attrs.get("secret_mounts_md5"):
        return attrs["secret_mounts_md5"]
    return secret_mounts_md5(attrs.get("secret_mounts"))


def is_reuse_match(candidate: Mapping[str, Any], request_attrs: Mapping[str, Any],
                   default_keep_cache_ram: int = DEFAULT_KEEP_CACHE_RAM) -> bool:
    """True if ``candidate`` (a container) runs exactly what ``request_attrs`` asks for.

    ``request_attrs`` are the would-be container attributes: image and collection mounts already
    resolved to PDHs, runtime_constraints as the request stores them (defaults filled).
    """
    for name in ("cwd", "output_path", "container_image"):
        want = request_attrs.get(name)
        if want is None or candidate.get(name) != want:  # SQL: NULL = x is never true
            return False
    for name in _SERIALIZED:
        if _serialized_form(candidate, name) != _serialized_form(request_attrs, name):
            return False
    if _secret_md5_of(candidate) != _secret_md5_of(request_attrs):
        return False
    have = canonical_json(candidate.get("runtime_constraints") or {})
    return any(have == canonical_json(v) for v in reusable_runtime_constraints(
        request_attrs.get("runtime_constraints"), default_keep_cache_ram))


def _asc(value: Any) -> tuple:
    """Ascending sort key with NULLs last (PostgreSQL)."""
    return (1, 0) if value is None else (0, value)


def _desc(value: Any) -> tuple:
    """Descending sort key with NULLs first (PostgreSQL's default for DESC)."""
    return (0, 0) if value is None else (1, -value)


def _is_preemptible(sp: Any) -> bool:
    return isinstance(sp, dict) and bool(sp.get("preemptible"))


def choose_reusable(candidates: Iterable[Mapping[str, Any]], request_attrs: Mapping[str, Any],
                    readable: Callable[[str], bool],
                    default_keep_cache_ram: int = DEFAULT_KEEP_CACHE_RAM) -> dict | None:
    """The container Arvados would reuse for ``request_attrs``, or None for "create one".

    ``readable(pdh)`` says whether a (non-trashed) collection with that PDH is readable; Arvados
    runs this check as the system user, so in effect "such a collection still exists".
    """
    matching = [c for c in candidates if is_reuse_match(c, request_attrs, default_keep_cache_ram)]

    complete = [c for c in matching
                if c.get("state") == "Complete" and c.get("exit_code") == 0
                and c.get("log") and c.get("output")
                and readable(c["log"]) and readable(c["output"])]
    if complete:
        return dict(min(complete, key=lambda c: (_asc(c.get("finished_at")),
                                                 _asc(c.get("uuid")))))

    running = [c for c in matching
               if c.get("state") == "Running" and (c.get("priority") or 0) > 0
               and "error" not in (c.get("runtime_status") or {})]
    if running:
        return dict(min(running, key=lambda c: (_desc(c.get("progress")),
                                               _asc(c.get("started_at")), _asc(c.get("uuid")))))

    waiting = [c for c in matching if c.get("state") in ("Locked", "Queued")]
    if not _is_preemptible(request_attrs.get("scheduling_parameters")):
        waiting = [c for c in waiting if not _is_preemptible(c.get("scheduling_parameters"))]
    if waiting:
        return dict(min(waiting, key=lambda c: (c["state"] != "Locked",
                                               _desc(c.get("priority")),
                                               _asc(c.get("created_at")), _asc(c.get("uuid")))))
    return None
