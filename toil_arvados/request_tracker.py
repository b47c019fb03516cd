"""One tracker for every container request of a run: worker jobs and CWL steps alike.

Nothing waits per request. The Arvados event bus (websocket) says when a request or its
container changes state; a reconciler thread backs it up with one batched ``list`` of all
requests in flight every ``poll_interval`` seconds (a missed event delays a job, never loses
it). When requests end, one batched lookup fetches their containers (exit code, runtime
status, times) and each request's ``on_final`` callback runs with both records, in the
reconciler thread: callbacks must be quick (hand real work to a pool).

Thread safety: every public method may be called from any thread; the state is guarded by
one lock, and callbacks run without holding it.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import arvados_client
from .arvados_client import describe
from .timestamps import parse_timestamp

logger = logging.getLogger(__name__)

_WATCHED_KINDS = ("arvados#containerRequest", "arvados#container")
_COALESCE_SECONDS = 0.05  # gather requests ending together into one batched lookup...
# ...and while requests keep ending, look them up at most this often: each lookup costs the same
# two calls (containers, step outputs) for one request or for hundreds.
_MIN_LOOKUP_INTERVAL = 0.5
CONTAINER_FIELDS = ["uuid", "state", "exit_code", "started_at", "finished_at", "runtime_status", "log", "output"]
REQUEST_FIELDS = ["uuid", "state", "container_uuid", "log_uuid", "output_uuid"]
#: Added to the container record handed to ``on_final`` for requests tracked with
#: ``read_output``: the manifest of its output collection (fetched with the others that ended).
OUTPUT_MANIFEST = "output_manifest_text"

FinalCallback = Callable[[dict, "dict | None"], None]
#: How many Final events about requests not tracked are kept: the run's own arrive moments before
#: their track(); the others (requests of other runs, forgotten ones) just pass through.
_EARLY_FINALS = 4096


@dataclass(frozen=True)
class RequestCounts:
    """How many of the run's requests are in each Arvados state, for Toil's progress bar:
    ``queued`` (container Queued or Locked), ``running`` (container Running) and ``finished``
    (request Final, whatever the outcome; reused ones too). Requests Toil killed are in none."""

    queued: int = 0
    running: int = 0
    finished: int = 0

    def summary(self) -> str:
        return f"Arvados: {self.queued} queued, {self.running} running, {self.finished} finished"


@dataclass
class Tracked:
    """A request in flight and what to do when it is Final."""

    cr_uuid: str
    container_uuid: str | None
    on_final: FinalCallback
    started_at: float | None = None
    final: bool = False
    cr: dict = field(default_factory=dict)
    read_output: bool = False

    @property
    def bucket(self) -> str:
        """Which :class:`RequestCounts` field the request counts in."""
        return "finished" if self.final else "running" if self.started_at is not None else "queued"


class RequestTracker:
    """Follows container requests until they are Final; see the module docstring."""

    def __init__(self, api: Any, poll_interval: float) -> None:
        self.api = api
        self.poll_interval = poll_interval
        self._lock = threading.Lock()
        self._tracked: dict[str, Tracked] = {}
        self._finishing: set[str] = set()
        # Requests whose Final event came before track() (a container that ran at once can end
        # before its creator registers it): most recent last, at most _EARLY_FINALS of them.
        self._early_finals: OrderedDict[str, None] = OrderedDict()
        self._last_lookup = 0.0  # time.monotonic() of the last lookup of ended requests
        # Kept up to date at each state change (under _lock), so the progress bar's frequent
        # questions cost nothing however many requests are in flight.
        self._counts = {"queued": 0, "running": 0, "finished": 0}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._events: Any = None
        # Connecting to the event bus must not hold anything up: polling covers until it is up.
        threading.Thread(target=self._connect_events, name="arvados-events", daemon=True).start()
        self._reconciler = threading.Thread(target=self._reconcile_loop, name="arvados-reconciler", daemon=True)
        self._reconciler.start()

    # -- what callers do -------------------------------------------------------------------

    def track(self, cr: dict, on_final: FinalCallback, running: bool = False, read_output: bool = False) -> None:
        """Follow ``cr`` (a request record as ``create`` returned it) until it is Final.
        ``read_output``: a success's container record comes with its output's manifest
        (:data:`OUTPUT_MANIFEST`), read together with the others that ended at the same time."""
        item = Tracked(cr["uuid"], cr.get("container_uuid"), on_final,
                       started_at=time.time() if running else None, read_output=read_output)
        with self._lock:
            old = self._tracked.get(item.cr_uuid)
            if old is not None and not old.final:
                self._counts[old.bucket] -= 1
            self._tracked[item.cr_uuid] = item
            self._counts[item.bucket] += 1
            early = item.cr_uuid in self._early_finals
            self._early_finals.pop(item.cr_uuid, None)
        if cr.get("state") == "Final" or early:  # reused a finished container, or ran at once
            self._mark_final(item.cr_uuid)

    def forget(self, cr_uuid: str) -> bool:
        """Stop following ``cr_uuid`` (its callback will not run); whether it was followed."""
        with self._lock:
            self._finishing.discard(cr_uuid)
            t = self._tracked.pop(cr_uuid, None)
            if t is not None and not t.final:
                self._counts[t.bucket] -= 1
            return t is not None

    def started(self) -> dict[str, float]:
        """Requests whose container has started: uuid -> when we noticed."""
        with self._lock:
            return {t.cr_uuid: t.started_at for t in self._tracked.values()
                    if t.started_at is not None and not t.final}

    def in_flight(self) -> list[str]:
        with self._lock:
            return [t.cr_uuid for t in self._tracked.values() if not t.final]

    def queued(self) -> int:
        with self._lock:
            return self._counts["queued"]

    def counts(self) -> RequestCounts:
        """The run's requests by Arvados state (see :class:`RequestCounts`); cheap."""
        with self._lock:
            return RequestCounts(**self._counts)

    def stop(self) -> list[str]:
        """Stop following anything; the requests that were still in flight."""
        self._stop.set()
        self._wake.set()
        with self._lock:
            left = [t.cr_uuid for t in self._tracked.values() if not t.final]
            self._tracked.clear()
            self._counts.update(queued=0, running=0)
            events, self._events = self._events, None
        if events is not None:
            try:
                events.close()
            except Exception:
                pass
        self._reconciler.join(timeout=5)
        return left

    # -- events ------------------------------------------------------------------------------

    def _connect_events(self) -> None:
        try:
            # Only ``event_type`` is filtered by the server (as Arvados' ws does); _on_event picks kinds.
            events = arvados_client.subscribe_events(self.api, ["update"], self._on_event)
        except Exception as e:
            logger.warning("%s; relying on polling every %.0fs", describe(e, "no event bus"), self.poll_interval)
            return
        with self._lock:
            stopped = self._stop.is_set()
            if not stopped:
                self._events = events
        if stopped:
            try:
                events.close()
            except Exception:
                pass

    def _on_event(self, event: dict) -> None:
        uuid = event.get("object_uuid")
        if not uuid or event.get("object_kind") not in _WATCHED_KINDS:
            return
        state = ((event.get("properties") or {}).get("new_attributes") or {}).get("state")
        if state == "Final":
            self._mark_final(uuid)
        elif state == "Running":
            with self._lock:
                for t in self._tracked.values():
                    if t.container_uuid == uuid:
                        self._started(t, time.time())

    def _mark_final(self, cr_uuid: str) -> None:
        with self._lock:
            t = self._tracked.get(cr_uuid)
            if t is None:  # not tracked (yet?): remembered for track()
                self._early_finals[cr_uuid] = None
                if len(self._early_finals) > _EARLY_FINALS:
                    self._early_finals.popitem(last=False)
                return
            if t.final:
                return
            self._counts[t.bucket] -= 1
            t.final = True
            self._counts["finished"] += 1
            self._finishing.add(cr_uuid)
        self._wake.set()

    def _started(self, t: Tracked, when: float) -> None:
        """Note that ``t``'s container runs (caller holds ``_lock``)."""
        if t.started_at is None and not t.final:
            self._counts["queued"] -= 1
            t.started_at = when
            self._counts["running"] += 1

    # -- reconciliation ------------------------------------------------------------------------

    def _reconcile_loop(self) -> None:
        last_full = time.monotonic()
        while not self._stop.is_set():
            self._wake.wait(timeout=min(self.poll_interval, 1.0))
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                if time.monotonic() - last_full >= self.poll_interval:
                    last_full = time.monotonic()
                    self._reconcile_all()
                if self._finishing:
                    self._finish()
            except Exception as e:  # a passing API hiccup: the next round retries
                logger.warning("%s", describe(e, "Arvados state reconciliation failed"))

    def _reconcile_all(self) -> None:
        """One batched look at every request in flight: catches what the event bus missed."""
        uuids = self.in_flight()
        if not uuids:
            return
        crs = arvados_client.get_many(self.api.container_requests().list, uuids, ["uuid", "state", "container_uuid"])
        c_uuids = [cr["container_uuid"] for cr in crs if cr.get("container_uuid")]
        states = {u: c["state"] for u, c in self._containers(c_uuids).items()}
        now = time.time()
        with self._lock:
            for cr in crs:
                t = self._tracked.get(cr["uuid"])
                if t is None:
                    continue
                t.container_uuid = cr.get("container_uuid")
                if states.get(t.container_uuid or "") in ("Running", "Complete"):
                    self._started(t, now)
        for cr in crs:
            if cr["state"] == "Final":
                self._mark_final(cr["uuid"])

    def _finish(self) -> None:
        # Let requests ending in the same instant (or since the last lookup, if that was
        # moments ago) arrive, so one batched call serves them all.
        self._stop.wait(max(_COALESCE_SECONDS, self._last_lookup + _MIN_LOOKUP_INTERVAL - time.monotonic()))
        self._last_lookup = time.monotonic()
        with self._lock:
            done = [self._tracked[u] for u in self._finishing if u in self._tracked]
            self._finishing = set()
        if not done:
            return
        for t, cr, container in self._final_records(done):
            with self._lock:
                if self._tracked.pop(t.cr_uuid, None) is None:
                    continue  # forgotten meanwhile (killed): nobody must hear of it
            try:
                t.on_final(cr, container)
            except Exception:
                logger.exception("handling the end of %s failed", t.cr_uuid)

    def _final_records(self, done: list[Tracked]) -> list[tuple[Tracked, dict, dict | None]]:
        """Each ended request with its container: one batched look at the containers this
        tracker knows; requests whose container did not simply succeed (exit code 0) are read
        whole too (their log, their output request), with their current container (Arvados may
        have replaced a cancelled one). A success needs nothing of its request but its uuid:
        its output is the container's."""
        known = self._containers([t.container_uuid for t in done if t.container_uuid])
        ok = {t.cr_uuid: known[t.container_uuid] for t in done
              if t.container_uuid in known and _succeeded(known[t.container_uuid])}
        ok = self._with_outputs(ok, {t.cr_uuid for t in done if t.read_output})
        rest = [t for t in done if t.cr_uuid not in ok]
        crs = {cr["uuid"]: cr for cr in arvados_client.get_many(
            self.api.container_requests().list, [t.cr_uuid for t in rest], REQUEST_FIELDS)} if rest else {}
        more = self._containers([cr["container_uuid"] for cr in crs.values()
                                 if cr.get("container_uuid") and cr["container_uuid"] not in known])
        records = []
        for t in done:
            if t.cr_uuid in ok:
                container = ok[t.cr_uuid]
                records.append((t, {"uuid": t.cr_uuid, "state": "Final", "container_uuid": container["uuid"]},
                                container))
                continue
            cr = crs.get(t.cr_uuid, {"uuid": t.cr_uuid})
            c_uuid = cr.get("container_uuid") or ""
            records.append((t, cr, known.get(c_uuid) or more.get(c_uuid)))
        return records

    def _with_outputs(self, ok: dict[str, dict], wanted: set[str]) -> dict[str, dict]:
        """``ok`` (request uuid -> its succeeded container) with the output manifests of the
        ``wanted`` requests added: one listing by hash for all of them (a hash the listing
        misses is left out, and its reader gets the collection itself)."""
        pdhs = {c["output"] for u, c in ok.items() if u in wanted and c.get("output")}
        manifests = arvados_client.manifests_by_pdh(self.api, pdhs, what="read step outputs") if pdhs else {}
        return {u: {**c, OUTPUT_MANIFEST: manifests[c["output"]]} if u in wanted and c.get("output") in manifests
                else c for u, c in ok.items()}

    def _containers(self, uuids: list[str]) -> dict[str, dict]:
        if not uuids:
            return {}
        return {c["uuid"]: c for c in arvados_client.get_many(self.api.containers().list, uuids, CONTAINER_FIELDS)}


def _succeeded(c: dict) -> bool:
    return c.get("state") == "Complete" and c.get("exit_code") == 0


def wall_time(c: dict | None) -> float | None:
    """Seconds a finished container ran (Toil's ``wallTime``), if its times are known."""
    if c and c.get("started_at") and c.get("finished_at"):
        return max(1e-6, parse_timestamp(c["finished_at"]) - parse_timestamp(c["started_at"]))
    return None
