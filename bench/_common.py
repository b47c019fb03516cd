"""Helpers shared by the benchmarks: server-side call counters, paged listing, the a-c-r venv."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parent.parent


def stats(cfg) -> dict:
    """The cluster's API call counters (total, by token, by ``resource.method``); not counted itself."""
    from toil_arvados.localcluster.control import stats as cluster_stats

    return cluster_stats(cfg)


def list_all(method, **kwargs) -> list[dict]:
    """Every item of a list call, paged by offset (the runs are the only writers meanwhile)."""
    items: list[dict] = []
    while True:
        page = method(offset=len(items), limit=1000, **kwargs).execute()
        items.extend(page["items"])
        if not page["items"] or len(items) >= page["items_available"]:
            return items


def acr_venv() -> ModuleType:
    """``tests/acr_venv.py`` (how the tests build arvados-cwl-runner's own venv), loaded by path so
    the benchmarks build and find the same venv without putting ``tests/`` on ``sys.path``."""
    spec = importlib.util.spec_from_file_location("acr_venv", REPO / "tests" / "acr_venv.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
