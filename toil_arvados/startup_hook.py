"""Run at interpreter start by ``toil_arvados.pth``: makes every Toil command know ``arvados:``.

Toil 9 has no job-store plugin hook, and some of its commands (``toil clean``, ``toil status``,
a bare ``_toil_worker``) never import a plugin before opening a job store. This hook waits,
without importing anything, until ``toil.common`` is imported, then calls
:func:`toil_arvados.jobstore.registration.register_job_store`. Interpreters that never import
Toil pay only for installing one meta path finder.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

_TARGET = "toil.common"


class _AfterToilCommon(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):  # type: ignore[no-untyped-def]
        if name != _TARGET:
            return None
        sys.meta_path.remove(self)  # one shot: let the real finders find the module
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        original_exec = spec.loader.exec_module

        def exec_module(module):  # type: ignore[no-untyped-def]
            original_exec(module)
            try:
                from toil_arvados.jobstore.registration import register_job_store

                register_job_store()
            except Exception:  # never break Toil itself because of the plugin
                pass

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def install() -> None:
    if _TARGET not in sys.modules and not any(isinstance(f, _AfterToilCommon) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterToilCommon())
