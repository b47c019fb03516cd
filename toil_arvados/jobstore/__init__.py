"""Toil's job store in Arvados Keep + collections (``--jobStore arvados:<project-uuid>/<name>``).

Import :func:`register_job_store` (or the ``toil_batch_system_arvados`` plugin module) to make
Toil resolve ``arvados:`` locators; :class:`KeepJobStore` is imported lazily so that registering
costs nothing until a job store is actually opened.
"""
from __future__ import annotations

from typing import Any

from toil_arvados.jobstore.registration import register_job_store

__all__ = ["KeepJobStore", "register_job_store"]


def __getattr__(name: str) -> Any:
    if name == "KeepJobStore":
        from toil_arvados.jobstore.keep_jobstore import KeepJobStore

        return KeepJobStore
    raise AttributeError(name)
