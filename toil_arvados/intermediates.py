"""What a run leaves in Keep besides its output collection, and trashing it when the run succeeds.

A run makes, in its project: one staging collection per native step (its inputs), and for every
container request Arvados makes an output collection (named by the request's ``output_name``), a
log collection for the request (``log_uuid``) and, for a Complete container, a verbatim copy of
the container's log ("Container log for container ..."). Once the run has succeeded and its
outputs are saved in their own collection, none of these is needed by the run. But Arvados
reuses a finished container only while the user can read a (non-trashed) collection holding its
output *and* one holding its log (``Container.find_reusable``, "readable output"/"readable log"):
crunch-run's own copies are made already trashed, so for a reusable step those are the
request's copies. So on success (unless ``--noArvadosTrashIntermediate``) everything the run
made is trashed except, for each step Arvados may reuse (no ``output_ttl``, Complete with exit
code 0; a CWL step even if its own request had no ``use_existing``), one collection with its output and one with its log; none at all
when the project already had such a collection before the run (a rerun that Arvados reused
leaves nothing new but its output collection).

``--arvadosIntermediateOutputTTL N`` and a step's ``arv:IntermediateOutput`` ``outputTTL`` are
``arvados-cwl-runner``'s: the step request's ``output_ttl``, after which Arvados trashes the
request's output collection itself (whatever the run's outcome; and the step is no longer
reusable then). The run finds its collections by the requests' ``toil_workflow_id`` property
(``properties.container_request`` of their collections) and the staging collections by their
own properties: a few listing calls, then one trash call per collection, in parallel.
"""
from __future__ import annotations

import logging
from argparse import ArgumentParser, ArgumentTypeError, _ArgumentGroup
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from . import arvados_client
from .container_request import PROPERTY_WORKFLOW
from .cwl_step_request import PROPERTY_STEP

logger = logging.getLogger(__name__)

INTERMEDIATE_OUTPUT_REQ = "http://arvados.org/cwl#IntermediateOutput"
#: Properties of a staging collection: which run made it.
PROPERTY_ROLE = "toil_role"
ROLE_STAGING = "staging"
PARALLEL = 8


def add_options(parser: ArgumentParser | _ArgumentGroup) -> None:
    parser.add_argument("--arvadosIntermediateOutputTTL", dest="arvados_intermediate_output_ttl", type=seconds,
                        default=0, metavar="SECONDS",
                        help="If > 0, Arvados trashes each step's output collection this many seconds after "
                             "it is made, as arvados-cwl-runner's --intermediate-output-ttl (default: 0, keep)")
    parser.add_argument("--noArvadosTrashIntermediate", dest="arvados_trash_intermediate", default=True,
                        action="store_false",
                        help="Keep the staging, step output and log collections of a successful run (by "
                             "default they are trashed, except what Arvados needs to reuse the steps)")
    parser.add_argument("--arvadosTrashIntermediate", dest="arvados_trash_intermediate", action="store_true",
                        help="Trash a successful run's intermediate collections (the default)")


class IntermediateOptionError(ArgumentTypeError, ValueError):
    """A negative or non-integer TTL (argparse prints it as one line)."""


def seconds(text: str) -> int:
    """argparse ``type`` of ``--arvadosIntermediateOutputTTL``."""
    try:
        value = int(text)
    except ValueError:
        value = None  # type: ignore[assignment]
    return check_ttl(value if value is not None else text)


def check_ttl(ttl: Any, where: str = "--arvadosIntermediateOutputTTL") -> int:
    if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 0:
        raise IntermediateOptionError(f"{where}: {ttl!r} is not a number of seconds >= 0 (0 keeps step outputs)")
    return ttl


def step_output_ttl(requirement: Mapping[str, Any] | None, default: int) -> int:
    """A step's ``output_ttl``: its ``arv:IntermediateOutput`` ``outputTTL``, else the run's."""
    if requirement and "outputTTL" in requirement:
        return check_ttl(requirement["outputTTL"], "arv:IntermediateOutput outputTTL")
    return default


def staging_properties(workflow_id: str) -> dict[str, str]:
    return {PROPERTY_WORKFLOW: workflow_id, PROPERTY_ROLE: ROLE_STAGING, "type": "intermediate"}


# -- the plan (pure) -------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunRecords:
    """What one run left: its requests, their containers, the collections it made (the requests'
    and the staging ones), and other collections holding the PDHs reuse needs."""

    requests: list[dict]
    containers: Mapping[str, dict]
    collections: list[dict]
    elsewhere: list[dict]


def reuse_needs(requests: Iterable[dict], containers: Mapping[str, dict]) -> set[str]:
    """The PDHs (outputs and logs) that must stay readable for Arvados to reuse the run's steps."""
    need: set[str] = set()
    for cr in requests:
        c = containers.get(cr.get("container_uuid") or "")
        if (not _reusable_later(cr) or (cr.get("output_ttl") or 0) > 0 or c is None
                or c.get("state") != "Complete" or c.get("exit_code") != 0):
            continue
        need.update(p for p in (c.get("output"), c.get("log")) if p)
    return need


def _reusable_later(cr: dict) -> bool:
    """Whether a later request may reuse this request's container. A CWL step's: always, since a
    request's ``use_existing`` only says whether *it* takes an existing container
    (``Container.find_reusable`` looks at the container alone). A Toil worker job's: only when
    the run asked for reuse (``--arvadosReuse``); its command names its job store and job, so no
    other run's request can match it anyway."""
    return bool(cr.get("use_existing")) or PROPERTY_STEP in (cr.get("properties") or {})


def plan_trash(records: RunRecords) -> list[str]:
    """The run's collections to trash: all but one holding each PDH reuse needs, and none of those
    if a lasting collection made for an earlier run's request already holds it."""
    need = reuse_needs(records.requests, records.containers) - {c.get("portable_data_hash") for c in records.elsewhere}
    keep: set[str] = set()
    for c in sorted(records.collections, key=_keep_order):
        pdh = c.get("portable_data_hash")
        if pdh in need and not c.get("trash_at"):
            need.discard(pdh)
            keep.add(c["uuid"])
    return sorted({c["uuid"] for c in records.collections if c["uuid"] not in keep and not c.get("is_trashed")})


def _keep_order(c: dict) -> tuple[int, str]:
    """Keep the request's own copies first (an output, or the verbatim log), then the oldest."""
    props = c.get("properties") or {}
    return (0 if props.get("type") in ("intermediate", "output") or props.get("container_uuid") else 1,
            str(c.get("created_at") or ""))


# -- finding and trashing --------------------------------------------------------------------------

_CR_FIELDS = ["uuid", "container_uuid", "use_existing", "output_ttl", "output_uuid", "log_uuid", "owner_uuid",
              "properties"]
_COLL_FIELDS = ["uuid", "portable_data_hash", "properties", "created_at", "owner_uuid", "is_trashed", "trash_at"]


def find_run_records(api: Any, workflow_id: str) -> RunRecords:
    """Everything a run left in Keep, found by its workflow id (no per-step calls)."""
    requests = arvados_client.list_all(api.container_requests().list, [[f"properties.{PROPERTY_WORKFLOW}", "=", workflow_id]],
                                       _CR_FIELDS, what="list the run's container requests")
    cuuids = sorted({cr["container_uuid"] for cr in requests if cr.get("container_uuid")})
    containers = {c["uuid"]: c for c in arvados_client.get_many(
        api.containers().list, cuuids, ["uuid", "state", "exit_code", "output", "log"], what="look up containers")}
    collections = arvados_client.list_all(
        api.collections().list, [[f"properties.{PROPERTY_WORKFLOW}", "=", workflow_id],
                                 [f"properties.{PROPERTY_ROLE}", "=", ROLE_STAGING]],
        _COLL_FIELDS, what="list the run's staging collections")
    crs = [cr["uuid"] for cr in requests]
    for i in range(0, len(crs), 200):
        collections += arvados_client.list_all(api.collections().list,
                                               [["properties.container_request", "in", crs[i:i + 200]]],
                                               _COLL_FIELDS, what="list the run's request collections")
    ours = {c["uuid"] for c in collections}
    needed = sorted(reuse_needs(requests, containers))
    elsewhere: list[dict] = []
    for i in range(0, len(needed), 200):
        lasting = [["portable_data_hash", "in", needed[i:i + 200]], ["properties", "exists", "container_request"],
                   ["trash_at", "=", None]]
        elsewhere += [c for c in arvados_client.list_all(api.collections().list, lasting, _COLL_FIELDS,
                                                         what="list collections reuse needs")
                      if c["uuid"] not in ours and _lasting_request_copy(c)]
    return RunRecords(requests, containers, collections, elsewhere)


def _lasting_request_copy(c: dict) -> bool:
    """A collection Arvados made for an earlier request and nobody means to trash: one that reuse
    can count on. (Other collections with the same content, e.g. a job store's files, may go.)"""
    return bool((c.get("properties") or {}).get("container_request")) and not c.get("trash_at")


def trash_collections(api: Any, uuids: list[str]) -> int:
    """Trash each collection (Arvados' ``delete``); one already gone is no failure."""
    def trash(uuid: str) -> int:
        try:
            arvados_client.call(lambda: api.collections().delete(uuid=uuid), f"trash {uuid}")
            return 1
        except Exception as e:
            if arvados_client.status_of(e) in (404, 422):
                return 0
            raise
    if not uuids:
        return 0
    with ThreadPoolExecutor(min(PARALLEL, len(uuids))) as pool:
        return sum(pool.map(trash, uuids))


def trash_intermediates(api: Any, workflow_id: str) -> int:
    """Trash what the run left that neither its outputs nor Arvados' reuse need; how many."""
    records = find_run_records(api, workflow_id)
    doomed = plan_trash(records)
    n = trash_collections(api, doomed)
    logger.log(logging.INFO if n else logging.DEBUG,
               "Trashed %d intermediate collections of workflow %s (kept %d that Arvados needs to reuse its steps)",
               n, workflow_id, len(records.collections) - len(doomed))
    return n
