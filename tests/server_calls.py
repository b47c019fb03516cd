"""API calls counted by the local cluster (``/_health/stats``), for tests that bound what a
piece of the product costs in calls."""
from __future__ import annotations

from typing import Any


def server_calls(cluster) -> dict[str, int]:
    """API calls per endpoint counted by the local cluster (``/_health/stats``)."""
    from toil_arvados.localcluster.control import stats

    return stats(cluster)["calls_by_endpoint"]


class CallCounter:
    """Calls made between two points: ``with CallCounter(cluster) as calls: ...; calls.total``."""

    def __init__(self, cluster) -> None:
        self.cluster = cluster
        self.total = 0
        self.by_endpoint: dict[str, int] = {}

    def __enter__(self) -> "CallCounter":
        self._before = server_calls(self.cluster)
        return self

    def __exit__(self, *exc: Any) -> None:
        after = server_calls(self.cluster)
        self.by_endpoint = {k: v - self._before.get(k, 0) for k, v in after.items() if v != self._before.get(k, 0)}
        self.total = sum(self.by_endpoint.values())
