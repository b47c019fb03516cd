"""Following a submitted run (``--arvadosSubmit`` without ``--arvadosNoWait``): print the runner's
log lines as they come, end with its result, and cancel it on Ctrl-C.

The runner publishes its leader's log lines as ``logs`` records about its container
(:mod:`cwl_submit_runner`); they arrive here on the event bus, and one look-up per poll
interval (request state, then new log records by id) catches anything the bus missed, so the
output is the same either way, in order, each line once.
"""
from __future__ import annotations

import logging
import sys
import threading
from dataclasses import dataclass
from typing import Any, TextIO

from . import arvados_client
from .cwl_submit_runner import LOG_EVENT

logger = logging.getLogger(__name__)

POLL_SECONDS = 5.0  # the fallback when the event bus is quiet or down
CANCEL_WAIT_SECONDS = 60.0


@dataclass
class Progress:
    """What the follower has shown so far."""

    last_log_id: int = 0
    container_uuid: str | None = None
    container_state: str | None = None


def new_log_text(api: Any, container_uuid: str, after: int) -> list[dict]:
    """The runner's log records after id ``after``, oldest first."""
    return arvados_client.list_all(api.logs().list, [["object_uuid", "=", container_uuid],
                                                     ["event_type", "=", LOG_EVENT], ["id", ">", after]],
                                   ["id", "properties"], what="read the runner's log")


def show_logs(api: Any, progress: Progress, out: TextIO) -> None:
    if not progress.container_uuid:
        return
    for rec in sorted(new_log_text(api, progress.container_uuid, progress.last_log_id), key=lambda r: r["id"]):
        if rec["id"] > progress.last_log_id:
            out.write(str((rec.get("properties") or {}).get("text") or ""))
            progress.last_log_id = rec["id"]
    out.flush()


def show_state(api: Any, progress: Progress) -> None:
    """Say when the runner's container changes state (Queued: it waits for room on the cluster)."""
    if not progress.container_uuid:
        return
    c = arvados_client.call(lambda: api.containers().get(uuid=progress.container_uuid, select=["uuid", "state"]),
                            f"look up {progress.container_uuid}")
    if c.get("state") != progress.container_state:
        progress.container_state = c.get("state")
        logger.info("Workflow runner container %s is %s", progress.container_uuid, progress.container_state)


def request_state(api: Any, uuid: str) -> dict:
    return arvados_client.call(lambda: api.container_requests().get(
        uuid=uuid, select=["uuid", "state", "container_uuid", "output_uuid", "log_uuid", "priority"]),
        f"look up {uuid}")


def exit_code(api: Any, cr: dict) -> int:
    """The runner's exit code: its container's, 1 if it was cancelled or never ran."""
    if not cr.get("container_uuid"):
        return 1
    c = arvados_client.call(lambda: api.containers().get(uuid=cr["container_uuid"],
                                                         select=["uuid", "state", "exit_code"]),
                            f"look up {cr['container_uuid']}")
    if c.get("state") != "Complete" or c.get("exit_code") is None:
        return 1
    return int(c["exit_code"])


def follow(api: Any, uuid: str, out: TextIO = sys.stderr, poll: float = POLL_SECONDS) -> dict:
    """Show the runner's log until its request is Final; the final request record."""
    wake = threading.Event()
    progress = Progress()

    def on_event(event: dict) -> None:  # the bus sends every update the user may read
        if event.get("object_uuid") in (uuid, progress.container_uuid):
            wake.set()

    try:
        events = arvados_client.subscribe_events(api, [LOG_EVENT, "update"], on_event)
    except Exception as e:
        logger.debug("event bus unavailable, polling: %s", arvados_client.scrub(str(e)))
        events = None
    try:
        while True:
            wake.clear()  # before looking: whatever happens from now on wakes the next round
            cr = request_state(api, uuid)
            if cr.get("container_uuid") != progress.container_uuid:
                progress.container_uuid, progress.last_log_id = cr.get("container_uuid"), 0
            show_state(api, progress)
            show_logs(api, progress, out)
            if cr["state"] == "Final":
                return cr
            wake.wait(poll)
    finally:
        if events is not None:
            events.close()


def cancel(api: Any, uuid: str) -> None:
    """Priority 0: Arvados stops the runner, and with it cancels every request it made."""
    arvados_client.cancel_request(api, uuid, budget=CANCEL_WAIT_SECONDS)
