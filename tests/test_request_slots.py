"""Toil's --maxJobs as slots for container requests (pure: no server)."""
from __future__ import annotations

from toil_arvados.request_slots import RequestSlots


def test_jobs_beyond_the_limit_wait_and_start_in_issue_order_as_slots_free() -> None:
    started: list[tuple[int, bool]] = []
    slots = RequestSlots(2)
    for key in range(1, 5):
        slots.acquire(key, lambda deferred, key=key: started.append((key, deferred)))
    assert started == [(1, False), (2, False)] and slots.in_flight() == 2 and slots.waiting() == 2
    slots.release(1)
    assert started[-1] == (3, True) and slots.in_flight() == 2
    slots.release(4)  # killed while waiting: never starts
    slots.release(2)
    slots.release(3)
    assert [k for k, _ in started] == [1, 2, 3] and slots.in_flight() == 0 and slots.waiting() == 0


def test_release_is_idempotent_and_taken_slots_count() -> None:
    started: list[int] = []
    slots = RequestSlots(1)
    slots.take(7)  # a re-attached request
    slots.acquire(1, lambda _d: started.append(1))
    assert started == []
    slots.release(7)
    slots.release(7)
    assert started == [1] and slots.in_flight() == 1


def test_no_limit_starts_everything_at_once() -> None:
    started: list[int] = []
    slots = RequestSlots(None)
    for key in range(100):
        slots.acquire(key, lambda _d, key=key: started.append(key))
    assert len(started) == 100
