"""The Arvados CWL extensions a native step acts on: read from a tool, checked, as plain values.

What each means is what Arvados users know from ``arvados-cwl-runner``:

* ``arv:PartitionRequirement`` ``partition`` (one or a list) -> ``scheduling_parameters.partitions``;
* ``arv:OutputStorageClass`` ``intermediateStorageClass`` -> the step request's
  ``output_storage_classes`` (``finalStorageClass`` is for the workflow's final output);
* ``arv:OutOfMemoryRetry`` -> a step whose container failed for memory (exit code 137, or its
  logs match ``memoryErrorRegex``) is submitted again with its RAM x ``memoryRetryMultiplier``
  (default 2);
* ``arv:RuntimeConstraints`` ``keep_cache`` (MiB) -> ``keep_cache_disk``, or ``keep_cache_ram``
  where the cluster caches in RAM or ``arv:KeepCacheTypeRequirement`` says ``ram_cache``;
* ``arv:APIRequirement`` -> ``runtime_constraints.API``; ``arv:ReuseRequirement`` ->
  ``use_existing`` (CWL v1.0's WorkReuse); ``arv:ProcessProperties`` -> request ``properties``.

Values that cannot work (a partition name sbatch would split, a storage class the cluster does
not have, a multiplier that does not add RAM, a regex that does not compile) are a
:class:`HintError` with one line, found by :func:`check_process` on the leader before the
workflow starts.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from .cwl_extensions import NAMESPACE

PARTITION = NAMESPACE + "PartitionRequirement"
STORAGE = NAMESPACE + "OutputStorageClass"
OOM_RETRY = NAMESPACE + "OutOfMemoryRetry"
RUNTIME = NAMESPACE + "RuntimeConstraints"
KEEP_CACHE_TYPE = NAMESPACE + "KeepCacheTypeRequirement"
API = NAMESPACE + "APIRequirement"
REUSE = NAMESPACE + "ReuseRequirement"
PROPERTIES = NAMESPACE + "ProcessProperties"

#: What Arvados' runner looks for in a failed container's logs by default: C++'s bad_alloc,
#: "out of memory"/"OutOfMemory", "MemoryError", and crunch-run's "Container using over 9x% of
#: memory" (case-insensitive).
DEFAULT_MEMORY_ERROR_REGEX = r"(bad_alloc|out ?of ?memory|memory ?error|container using over 9.% of memory)"
DEFAULT_MEMORY_MULTIPLIER = 2.0
#: exit code of a process killed with SIGKILL, which is how the kernel ends one out of memory
OOM_EXIT_CODE = 137

Get = Callable[[str], "dict | None"]


class HintError(ValueError):
    """A hint or option value that cannot work; its message is one line."""


@dataclass(frozen=True)
class MemoryRetry:
    """How a step is retried after running out of memory."""

    multiplier: float
    error_regex: str
    retries: int = 1  # Arvados' runner re-submits once


def names(value: Any, what: str) -> tuple[str, ...]:
    """A string or a list of strings as a tuple of names (pure); each must be a name a
    scheduler or Keep can take: not empty, no comma (sbatch joins partitions with commas and
    Arvados' options split on them), no whitespace."""
    items = [value] if isinstance(value, str) else list(value or [])
    for item in items:
        if not isinstance(item, str) or not item or "," in item or any(c.isspace() for c in item):
            raise HintError(f"{what}: {item!r} is not a valid name (a non-empty word without commas or spaces)")
    return tuple(dict.fromkeys(items))


def split_option(value: str | None, what: str) -> tuple[str, ...]:
    """A comma-separated option value as names (``a,b`` -> ("a", "b")), as Arvados' runner splits
    ``--storage-classes``."""
    if not value:
        return ()
    return names([v.strip() for v in str(value).split(",")], what)


def check_known(values: Iterable[str], known: Iterable[str] | None, what: str) -> None:
    """Refuse a name the cluster does not have; ``known`` None: the cluster does not say."""
    if known is None:
        return
    have = sorted(known)
    for v in values:
        if v not in have:
            raise HintError(f"{what}: the cluster has no storage class {v!r} (it has: {', '.join(have) or 'none'})")


def partitions(get: Get, where: str) -> tuple[str, ...] | None:
    req = get(PARTITION)
    return names(req.get("partition"), f"{where}: arv:PartitionRequirement partition") if req else None


def intermediate_storage_classes(get: Get, where: str) -> tuple[str, ...] | None:
    req = get(STORAGE) or {}
    value = req.get("intermediateStorageClass")
    return names(value, f"{where}: arv:OutputStorageClass intermediateStorageClass") if value else None


def memory_retry(get: Get, double_mem: bool, retry_count: int, where: str) -> MemoryRetry | None:
    """The memory retries a step is allowed: arv:OutOfMemoryRetry's one retry (with its
    multiplier and regex), and with Toil's ``--doubleMem`` one per ``--retryCount``, doubling."""
    req = get(OOM_RETRY)
    toil_retries = int(retry_count) if double_mem else 0
    if req is None:
        return MemoryRetry(2.0, DEFAULT_MEMORY_ERROR_REGEX, toil_retries) if toil_retries > 0 else None
    multiplier = req.get("memoryRetryMultiplier") or req.get("memoryRetryMultipler") or DEFAULT_MEMORY_MULTIPLIER
    if float(multiplier) <= 1:
        raise HintError(f"{where}: arv:OutOfMemoryRetry memoryRetryMultiplier must be more than 1, not {multiplier}")
    regex = req.get("memoryErrorRegex") or DEFAULT_MEMORY_ERROR_REGEX
    try:
        re.compile(regex)
    except re.error as e:
        raise HintError(f"{where}: arv:OutOfMemoryRetry memoryErrorRegex {regex!r} is not a regular expression: {e}") from None
    return MemoryRetry(float(multiplier), str(regex), max(1, toil_retries))


def out_of_memory(exit_code: int | None, log_text: Callable[[], str], regex: str) -> bool:
    """Whether a failed container ran out of memory, as Arvados' runner judges it: killed by
    SIGKILL (137), or its logs say so. ``log_text`` is only read when the exit code does not tell."""
    if exit_code == OOM_EXIT_CODE:
        return True
    return re.search(regex, log_text(), re.IGNORECASE | re.MULTILINE) is not None


def keep_cache(get: Get, where: str) -> tuple[int | None, bool | None]:
    """(keep cache MiB, whether in RAM) from arv:RuntimeConstraints / arv:KeepCacheTypeRequirement."""
    rc = get(RUNTIME) or {}
    mib = rc.get("keep_cache")
    if mib is not None and (not isinstance(mib, int) or mib <= 0):
        raise HintError(f"{where}: arv:RuntimeConstraints keep_cache must be a positive number of MiB, not {mib!r}")
    kind = str((get(KEEP_CACHE_TYPE) or {}).get("keepCacheType") or "")
    in_ram = None if not kind else kind.rsplit("/", 1)[-1] == "ram_cache"
    return mib, in_ram


def api_access(get: Get) -> bool:
    return get(API) is not None


def reuse(get: Get) -> bool | None:
    req = get(REUSE)
    return bool(req["enableReuse"]) if req and "enableReuse" in req else None


def properties(get: Get, evaluate: Callable[[Any], Any], where: str) -> dict[str, Any]:
    req = get(PROPERTIES) or {}
    out: dict[str, Any] = {}
    for p in req.get("processProperties") or []:
        name = str(p.get("propertyName") or "")
        if not name:
            raise HintError(f"{where}: arv:ProcessProperties has a property without a name")
        out[name] = evaluate(p.get("propertyValue"))
    return out


# -- before the run: every process of the workflow ----------------------------------------------

def _entries(process: Any) -> Iterator[tuple[str, Get]]:
    seen: set[int] = set()

    def getter(entries: list) -> Get:
        def get(cls: str) -> dict | None:
            return next((e for e in entries if isinstance(e, dict) and e.get("class") == cls), None)
        return get

    def walk(p: Any) -> Iterator[tuple[str, Get]]:
        if id(p) in seen:
            return
        seen.add(id(p))
        where = str(getattr(p, "tool", {}).get("id", "") or "").rsplit("/", 1)[-1] or "the workflow"
        yield where, getter(list(getattr(p, "requirements", []) or []) + list(getattr(p, "hints", []) or []))
        for step in getattr(p, "steps", []) or []:
            step_where = str(getattr(step, "id", "") or "").rsplit("/", 1)[-1] or where
            yield step_where, getter(list(getattr(step, "requirements", []) or []) + list(getattr(step, "hints", []) or []))
            embedded = getattr(step, "embedded_tool", None)
            if embedded is not None:
                yield from walk(embedded)

    yield from walk(process)


def check_process(process: Any, storage_classes: Callable[[], Iterable[str] | None]) -> None:
    """Check the Arvados hints of a loaded workflow and all its tools; raise :class:`HintError`
    for the first value that cannot work. ``storage_classes`` gives the cluster's (None if it
    does not say); it is asked only if a tool names a storage class."""
    known: list[Iterable[str] | None] = []

    def check_classes(value: Any, what: str) -> None:
        if not value:
            return
        if not known:
            known.append(storage_classes())
        check_known(names(value, what), known[0], what)

    for where, get in _entries(process):
        partitions(get, where)
        storage = get(STORAGE) or {}
        for field in ("intermediateStorageClass", "finalStorageClass"):
            check_classes(storage.get(field), f"{where}: arv:OutputStorageClass {field}")
        memory_retry(get, False, 0, where)
        keep_cache(get, where)


def cluster_storage_classes(api: Any) -> list[str] | None:
    """The storage classes the cluster declares (its exported ``StorageClasses``), None if it
    does not say."""
    from . import arvados_client

    declared = arvados_client.cluster_config(api).get("StorageClasses")
    return sorted(declared) if declared else None


def check_arvados_hints(tool: Any) -> None:
    """:func:`check_process` for the leader: a bad value stops the run with one line."""
    from . import arvados_client

    from .keep_url import set_final_storage_classes

    try:
        check_process(tool, lambda: cluster_storage_classes(arvados_client.connect()))
    except HintError as e:
        raise arvados_client.ArvadosSetupError(str(e)) from None
    final = ((tool.get_requirement(STORAGE)[0] or {}).get("finalStorageClass")
             if hasattr(tool, "get_requirement") else None)
    set_final_storage_classes("hint", names(final, "finalStorageClass") if final else ())
