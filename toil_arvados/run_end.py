"""What ``toil-cwl-runner --batchSystem arvados`` does when its workflow has succeeded.

Toil then stages the outputs (``toilStageFiles``: into ``--outdir``, or to ``--destBucket``);
:mod:`toil_arvados.toil_patches` routes that call here, and for an arvados run:

1. without ``--destBucket``, the outputs are saved as the run's output collection
   (:mod:`output_collection`) and its UUID and portable data hash are logged; the output object
   Toil prints names ``keep:`` locations in it, unless ``--outdir`` was given (then Toil also
   downloads them there and prints local paths, as before). With ``--destBucket`` Toil exports
   there exactly as before (``keep:<project>/<name>`` makes that collection);
2. the run's intermediate collections are trashed (:mod:`intermediates`) unless
   ``--noArvadosTrashIntermediate``.

Both only run once the workflow succeeded: Toil calls ``toilStageFiles`` after ``start`` or
``restart`` returned.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

logger = logging.getLogger(__name__)


def is_arvados_run(options: Any) -> bool:
    return str(getattr(options, "batchSystem", "") or "") == "arvados"


def remember_output_spec(toil: Any, tool: Any, job_order: Any, runtime_context: Any, options: Any) -> None:
    """At root-job time: settle the output collection's name and properties, in the job store."""
    from . import output_collection

    if is_arvados_run(options) and not getattr(options, "destBucket", None):
        output_collection.save_spec(toil._jobStore, output_collection.make_spec(tool, job_order, runtime_context,
                                                                                 options))


def stage_outputs(original: Callable[..., None], toil: Any, cwljob: Any, outdir: str, destBucket: str | None,
                  log_level: int) -> None:
    """Toil's ``toilStageFiles`` for an arvados run (see the module docstring)."""
    options = toil.options
    if not is_arvados_run(options):
        original(toil, cwljob, outdir, destBucket=destBucket, log_level=log_level)
        return
    api, project = _api_and_project(options)
    if destBucket:
        original(toil, cwljob, outdir, destBucket=destBucket, log_level=log_level)
    else:
        _save_output_collection(original, toil, cwljob, outdir, log_level, api, project)
    if getattr(options, "arvados_trash_intermediate", True):
        from .intermediates import trash_intermediates

        trash_intermediates(api, str(toil.config.workflowID))


def _save_output_collection(original: Callable[..., None], toil: Any, cwljob: Any, outdir: str, log_level: int,
                            api: Any, project: str) -> None:
    from . import output_collection

    options = toil.options
    spec = output_collection.load_spec(toil._jobStore, options)
    local = getattr(options, "outdir", None) is not None
    uuid, pdh, in_keep = output_collection.save_outputs(
        toil, cwljob, spec, project, api, compute_checksum=bool(getattr(options, "compute_checksum", True)) and not local)
    logger.log(max(log_level, logging.INFO), "Final output collection %s \"%s\" (%s)", pdh, spec["name"], uuid)
    if local:
        original(toil, cwljob, outdir, destBucket=None, log_level=log_level)
        return
    _replace_contents(cwljob, in_keep)


def _replace_contents(target: Any, source: Any) -> None:
    """Make ``target`` (the object Toil prints) equal ``source`` in place: Toil keeps its reference."""
    if isinstance(target, dict):
        target.clear()
        target.update(source)
    elif isinstance(target, list):
        target[:] = source


def _api_and_project(options: Any) -> tuple[Any, str]:
    from . import arvados_client

    api = arvados_client.connect()
    user = arvados_client.check_connection(api)
    return api, arvados_client.resolve_project(api, getattr(options, "arvados_project", None), user)
