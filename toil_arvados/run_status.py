"""``toil status`` on a Keep job store: the run's container requests, as Arvados sees them.

Toil's own report reads only the job store (jobs left, failed, with logs); where each job ran
is Arvados' record. Every request of a run names the run's Toil workflow id in its
``properties`` (worker jobs, CWL steps and the run's own record alike), and the job store keeps
that id in its config, so one filtered ``list`` finds them all and one batched lookup their
containers. :func:`toil_patches.status_lists_requests` prints :func:`report` after Toil's.
"""
from __future__ import annotations

import logging
from typing import Any

from . import arvados_client
from .arvados_client import describe
from .container_request import PROPERTY_WORKFLOW

logger = logging.getLogger(__name__)

_REQUEST_FIELDS = ["uuid", "name", "state", "container_uuid", "created_at"]
_CONTAINER_FIELDS = ["uuid", "state", "exit_code"]
_BUDGET = 30.0  # seconds a status command waits through an outage: a person is waiting


def workflow_requests(api: Any, workflow_id: str) -> tuple[list[dict], dict[str, dict]]:
    """The run's requests (oldest first) and their containers by uuid: two calls, plus pages."""
    requests = arvados_client.list_all(api.container_requests().list,
                                       [[f"properties.{PROPERTY_WORKFLOW}", "=", workflow_id]],
                                       _REQUEST_FIELDS, what="list the workflow's container requests",
                                       budget=_BUDGET)
    c_uuids = [cr["container_uuid"] for cr in requests if cr.get("container_uuid")]
    containers = arvados_client.get_many(api.containers().list, c_uuids, _CONTAINER_FIELDS,
                                         what="look up the requests' containers", budget=_BUDGET) if c_uuids else []
    return requests, {c["uuid"]: c for c in containers}


def request_lines(workflow_id: str, requests: list[dict], containers: dict[str, dict]) -> list[str]:
    """The listing: a heading, then one aligned line per request (pure)."""
    if not requests:
        return [f"No Arvados container requests carry workflow id {workflow_id}."]
    rows = [("UUID", "STATE", "CONTAINER", "EXIT", "NAME")]
    for cr in requests:
        c = containers.get(cr.get("container_uuid") or "") or {}
        code = c.get("exit_code")
        rows.append((cr["uuid"], cr.get("state") or "-", c.get("state") or "-",
                     "-" if code is None else str(code), cr.get("name") or ""))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [f"Arvados container requests of workflow {workflow_id} ({len(requests)}):"]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row[:4], widths)) + "  " + row[4] for row in rows]
    return [line.rstrip() for line in lines]


def report(job_store: Any) -> list[str]:
    """What ``toil status`` adds for ``job_store``: nothing unless it is a Keep job store; one
    line instead of a traceback when Arvados cannot be asked."""
    from .jobstore.keep_jobstore import KeepJobStore

    if not isinstance(job_store, KeepJobStore):
        return []
    workflow_id = str(job_store.config.workflowID)
    try:
        requests, containers = workflow_requests(arvados_client.connect(), workflow_id)
    except Exception as e:
        return [describe(e, "could not list the workflow's Arvados container requests")]
    return request_lines(workflow_id, requests, containers)
