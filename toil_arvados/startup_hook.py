"""Run at interpreter start by ``toil_arvados.pth``: makes every Toil command know ``arvados:``.

Toil 9 has no job-store plugin hook, and some of its commands (``toil clean``, ``toil status``,
a bare ``_toil_worker``) never import a plugin before opening a job store. This hook waits,
without importing anything, until ``toil.common`` is imported, then calls
:func:`toil_arvados.jobstore.registration.register_job_store`; from then on it also waits for
``toil status``'s module, to add the run's container requests to its report
(:func:`toil_arvados.toil_patches.status_lists_requests`). Interpreters that never import
Toil pay only for installing one meta path finder.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from typing import Callable


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs ``then`` once, right after the module ``target`` has been executed."""

    def __init__(self, target: str, then: Callable[[], None]) -> None:
        self.target = target
        self.then = then

    def find_spec(self, name, path=None, target=None):  # type: ignore[no-untyped-def]
        if name != self.target:
            return None
        sys.meta_path.remove(self)  # one shot: let the real finders find the module
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        original_exec = spec.loader.exec_module
        then = self.then

        def exec_module(module):  # type: ignore[no-untyped-def]
            original_exec(module)
            try:
                then()
            except Exception:  # never break Toil itself because of the plugin
                pass

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def _after_toil_common() -> None:
    from toil_arvados.jobstore.registration import register_job_store

    register_job_store()
    _watch("toil.utils.toilStatus", _after_toil_status)


def _after_toil_status() -> None:
    from toil_arvados.toil_patches import status_lists_requests

    status_lists_requests()


def _watch(target: str, then: Callable[[], None]) -> None:
    if target not in sys.modules and not any(isinstance(f, _AfterImport) and f.target == target
                                             for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(target, then))


def install() -> None:
    _watch("toil.common", _after_toil_common)
