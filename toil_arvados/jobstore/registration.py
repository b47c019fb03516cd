"""The one place that teaches Toil 9 the ``arvados:`` job-store locator.

Why a patch: Toil 9.6 has plugin hooks for batch systems and URL schemes but none for job stores.
``Toil.getJobStore`` is a hard-coded ``match`` over ``file``/``aws``/``google``, and every Toil
process that opens a job store (leader, ``_toil_worker``, ``toil clean``/``status``/``kill``) goes
through it. ``Toil.parseLocator`` already splits ``arvados:<rest>`` correctly, so it is left alone.

What :func:`register_job_store` changes, idempotently (a marker attribute guards each patch):

1. ``Toil.getJobStore``: ``arvados:<rest>`` -> ``KeepJobStore(<rest>)``; everything else goes to
   Toil's original method. ``"arvados"`` is added to ``Toil.JOB_STORE_TYPES``.
2. ``Toil.createBatchSystem``: when the job store is ``arvados:`` and the batch system is not our
   own ``arvados`` one (whose containers already start through :mod:`toil_arvados.worker`), each
   worker command ``_toil_worker ...`` is issued as ``python -m toil_arvados.worker '_toil_worker
   ...'``. Reason: a plain ``_toil_worker`` process imports no plugin before opening the job
   store, so it would not know ``arvados:``; our worker entrypoint registers first, then runs
   Toil's worker in the same process. ``--debugWorker`` runs jobs inside the leader (already
   registered) and is left alone.

Who calls it: the ``toil_batch_system_arvados`` plugin module (Toil imports it in every process
that parses Toil options, i.e. every leader) and :mod:`toil_arvados.worker`. Command-line tools
that do not load plugins (``toil clean``) need ``import toil_batch_system_arvados`` first.
"""
from __future__ import annotations

import functools
import logging
import os
import shlex
import sys
from typing import Any

logger = logging.getLogger(__name__)

PREFIX = "arvados"
_MARK = "_toil_arvados_patched"


def register_job_store() -> None:
    """Make Toil's factories know ``arvados:`` job stores (safe to call any number of times)."""
    from toil.common import Toil

    if not getattr(Toil.getJobStore, _MARK, False):
        original_get = Toil.getJobStore.__func__  # type: ignore[attr-defined]

        @functools.wraps(original_get)
        def getJobStore(cls: type, locator: str) -> Any:
            kind, rest = Toil.parseLocator(locator)
            if kind == PREFIX:
                from toil_arvados.jobstore.keep_jobstore import KeepJobStore

                return KeepJobStore(rest)
            return original_get(cls, locator)

        setattr(getJobStore, _MARK, True)
        Toil.getJobStore = classmethod(getJobStore)  # type: ignore[method-assign,assignment]
        if PREFIX not in Toil.JOB_STORE_TYPES:
            Toil.JOB_STORE_TYPES.append(PREFIX)
        logger.debug("Registered the %s: job store with Toil", PREFIX)

    if not getattr(Toil.createBatchSystem, _MARK, False):
        original_create = Toil.createBatchSystem

        @functools.wraps(original_create)
        def createBatchSystem(config: Any) -> Any:
            batch_system = original_create(config)
            if _needs_worker_wrapper(config):
                _wrap_worker_commands(batch_system)
            return batch_system

        setattr(createBatchSystem, _MARK, True)
        Toil.createBatchSystem = staticmethod(createBatchSystem)  # type: ignore[method-assign,assignment]


def _needs_worker_wrapper(config: Any) -> bool:
    locator = str(getattr(config, "jobStore", "") or "")
    return (locator.startswith(PREFIX + ":") and getattr(config, "batchSystem", None) != PREFIX
            and not getattr(config, "debugWorker", False))


def worker_command(command: str) -> str:
    """``_toil_worker ARGS`` -> a command that registers this plugin, then runs Toil's worker."""
    words = command.split(" ", 1)
    if not words or os.path.basename(words[0]) != "_toil_worker":
        return command
    return f"{shlex.quote(sys.executable)} -m toil_arvados.worker {shlex.quote(command)}"


def _wrap_worker_commands(batch_system: Any) -> None:
    issue = batch_system.issueBatchJob

    @functools.wraps(issue)
    def issueBatchJob(command: str, *args: Any, **kwargs: Any) -> Any:
        return issue(worker_command(command), *args, **kwargs)

    batch_system.issueBatchJob = issueBatchJob
