"""Arvados timestamps: UTC, nanosecond digits, ``Z`` suffix, so they sort as text.

Shared by the plugin (wall times from a container's ``started_at``/``finished_at``) and the local
cluster (which writes them).
"""
from __future__ import annotations

import time
from datetime import datetime, timezone


def timestamp(t: float | None = None) -> str:
    """Seconds since the epoch (default: now) -> ``2026-11-25T11:54:06.442295074Z``."""
    t = time.time() if t is None else t
    whole = int(t)
    nanos = int(round((t - whole) * 1e9))
    if nanos >= 1_000_000_000:
        whole, nanos = whole + 1, 0
    text = datetime.fromtimestamp(whole, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{nanos:09d}Z"


def parse_timestamp(value: str) -> float:
    """The inverse of :func:`timestamp`; also takes fewer fractional digits or none."""
    whole, _, frac = value.rstrip("Z").partition(".")
    base = datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc).timestamp()
    return base + (float("0." + frac) if frac else 0.0)
