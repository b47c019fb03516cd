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

from . import arvados_client
from .arvados_client import ArvadosSetupError

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

        try:
            trash_intermediates(api, str(toil.config.workflowID))
        except Exception as e:  # the outputs are saved: this only leaves more behind
            logger.warning("Could not trash the run's intermediate collections (toil clean or the trash in "
                           "Workbench removes them): %s", arvados_client.scrub(str(e)))


def _save_output_collection(original: Callable[..., None], toil: Any, cwljob: Any, outdir: str, log_level: int,
                            api: Any, project: str) -> None:
    from . import output_collection

    options = toil.options
    spec = output_collection.load_spec(toil._jobStore, options)
    local = getattr(options, "outdir", None) is not None
    try:
        uuid, pdh, in_keep = output_collection.save_outputs(
            toil, cwljob, spec, project, api,
            compute_checksum=bool(getattr(options, "compute_checksum", True)) and not local)
    except Exception as e:
        raise ArvadosSetupError(
            f"the workflow finished but its outputs could not be saved as collection {spec['name']!r} in "
            f"{project}: {arvados_client.scrub(str(e))}; fix that and run it again (Arvados reuses the finished "
            "steps)") from None
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
    api = arvados_client.connect()
    user = arvados_client.check_connection(api)
    return api, arvados_client.resolve_project(api, getattr(options, "arvados_project", None), user)
