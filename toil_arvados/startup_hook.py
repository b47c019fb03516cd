"""Runs at interpreter start-up (``toil_arvados.pth``) to hook the plugin into Toil lazily.

Toil 9 has no job-store plugin hook, and some of its commands (``toil clean``, ``toil status``,
a bare ``_toil_worker``) never import a plugin before opening a job store. This hook waits,
without importing anything, until one of the modules in :data:`_ACTIONS` is imported, and runs
its action right after the module is executed:

* ``toil.common``: :func:`toil_arvados.jobstore.registration.register_job_store`;
* ``toil.cwl.cwltoil`` (before ``toil-cwl-runner``'s script takes its ``main``):
  :func:`toil_arvados.toil_patches.submit_hook`, so ``--arvadosSubmit`` can take over from the
  local leader;
* ``toil.job``: :func:`toil_arvados.toil_patches.promise_hooks` (a promise's one write makes its
  file, in whichever process fulfils it);
* ``toil.utils.toilStatus``: :func:`toil_arvados.toil_patches.status_lists_requests`, to add the
  run's container requests to ``toil status``'s report.

Interpreters that never import Toil pay only for installing one meta path finder.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys


def _register_job_store() -> None:
    from toil_arvados.jobstore.registration import register_job_store

    register_job_store()


def _submit_hook() -> None:
    from toil_arvados.toil_patches import submit_hook

    submit_hook()


def _promise_hooks() -> None:
    from toil_arvados.toil_patches import promise_hooks

    promise_hooks()


def _status_hook() -> None:
    from toil_arvados.toil_patches import status_lists_requests

    status_lists_requests()


_ACTIONS = {"toil.common": _register_job_store, "toil.job": _promise_hooks, "toil.cwl.cwltoil": _submit_hook,
            "toil.utils.toilStatus": _status_hook}


class _AfterToilImport(importlib.abc.MetaPathFinder):
    """Runs an action right after one of the modules in :data:`_ACTIONS` has been executed."""

    def __init__(self) -> None:
        self.pending = {name for name in _ACTIONS if name not in sys.modules}

    def find_spec(self, name, path=None, target=None):  # type: ignore[no-untyped-def]
        if name not in self.pending:
            return None
        self.pending.discard(name)
        if not self.pending:
            sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        original_exec = spec.loader.exec_module
        action = _ACTIONS[name]

        def exec_module(module):  # type: ignore[no-untyped-def]
            original_exec(module)
            try:
                action()
            except Exception:  # never break Toil itself because of the plugin
                pass

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def install() -> None:
    if any(isinstance(f, _AfterToilImport) for f in sys.meta_path):
        return
    finder = _AfterToilImport()
    if finder.pending:
        sys.meta_path.insert(0, finder)
