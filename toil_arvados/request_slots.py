"""Toil's ``--maxJobs`` for ``--batchSystem arvados``: at most that many container requests in
flight at once, worker jobs and native CWL steps together.

Toil's leader issues every job that is ready; the batch system decides how many run at once
(Toil's Kubernetes and grid engine batch systems keep a queue in the same way). A job issued
beyond the limit waits here, issued but not running, until a request of the run ends; then it
is started, in issue order. Nothing blocks the leader: waiting is a queue entry, not a thread.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable


class RequestSlots:
    """Slots for container requests, held by key (a batch job id). Thread-safe."""

    def __init__(self, limit: int | None) -> None:
        self.limit = int(limit) if limit else 0  # 0: no limit
        self._lock = threading.Lock()
        self._holders: set[int] = set()
        self._waiting: OrderedDict[int, Callable[[bool], None]] = OrderedDict()

    def acquire(self, key: int, start: Callable[[bool], None]) -> bool:
        """Run ``start(False)`` now if a slot is free (True), else ``start(True)`` when one frees
        up (False), in the thread that frees it."""
        with self._lock:
            if self.limit and len(self._holders) >= self.limit:
                self._waiting[key] = start
                return False
            self._holders.add(key)
        start(False)
        return True

    def take(self, key: int) -> None:
        """Hold a slot whatever the limit (a request that already exists, e.g. re-attached)."""
        with self._lock:
            self._holders.add(key)

    def release(self, key: int) -> None:
        """``key``'s request ended (or was never started): its slot or queue place is freed, and
        the jobs waiting longest start in this thread."""
        with self._lock:
            self._waiting.pop(key, None)
            self._holders.discard(key)
            ready = []
            while self._waiting and (not self.limit or len(self._holders) < self.limit):
                next_key, start = self._waiting.popitem(last=False)
                self._holders.add(next_key)
                ready.append(start)
        for start in ready:
            start(True)

    def in_flight(self) -> int:
        with self._lock:
            return len(self._holders)

    def waiting(self) -> int:
        with self._lock:
            return len(self._waiting)

    def clear(self) -> None:
        """Forget the waiting jobs (the leader is shutting down)."""
        with self._lock:
            self._waiting.clear()
