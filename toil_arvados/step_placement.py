"""Where and how native CWL steps run: the ``--arvados*`` placement options and the Toil
options that apply to steps (``--defaultPreemptible``, ``--defaultWalltime``, ``--doubleMem``
with ``--retryCount``), turned into :class:`~toil_arvados.cwl_step_request.StepSettings` fields.

Options are checked when the batch system starts, before anything is submitted: a partition
name sbatch would split or a storage class the cluster does not declare is one line.
"""
from __future__ import annotations

from argparse import ArgumentParser, _ArgumentGroup
from typing import Any

from .arvados_client import ArvadosSetupError
from .cwl_hints import HintError, check_known, split_option

OPTIONS = ("arvados_partition", "arvados_intermediate_storage_classes", "arvados_storage_classes")


def add_options(parser: ArgumentParser | _ArgumentGroup) -> None:
    parser.add_argument("--arvadosPartition", dest="arvados_partition", default=None,
                        env_var="TOIL_ARVADOS_PARTITION", metavar="PARTITION[,PARTITION...]",
                        help="Scheduling partition(s) for CWL steps' container requests "
                             "(scheduling_parameters.partitions); a tool's arv:PartitionRequirement wins")
    parser.add_argument("--arvadosIntermediateStorageClasses", dest="arvados_intermediate_storage_classes",
                        default=None, env_var="TOIL_ARVADOS_INTERMEDIATE_STORAGE_CLASSES",
                        metavar="CLASS[,CLASS...]",
                        help="Keep storage classes of CWL steps' output collections (output_storage_classes); "
                             "a tool's arv:OutputStorageClass intermediateStorageClass wins (default: the "
                             "cluster's default classes)")
    parser.add_argument("--arvadosStorageClasses", dest="arvados_storage_classes", default=None,
                        env_var="TOIL_ARVADOS_STORAGE_CLASSES", metavar="CLASS[,CLASS...]",
                        help="Keep storage classes of the workflow's final output collection (--destBucket "
                             "keep:...); the workflow's arv:OutputStorageClass finalStorageClass wins "
                             "(default: the cluster's default classes)")


def set_options(set_option: Any) -> None:
    for name in OPTIONS:
        set_option(name)


def step_settings(config: Any, cluster: dict) -> dict[str, Any]:
    """The StepSettings fields these options and the cluster decide (raises a one-line
    :class:`ArvadosSetupError` for a value that cannot work). Also records
    ``--arvadosStorageClasses`` for the final output this (the leader's) process saves."""
    from .keep_url import set_final_storage_classes

    declared = cluster.get("StorageClasses")
    known = sorted(declared) if declared else None
    try:
        partitions = split_option(getattr(config, "arvados_partition", None), "--arvadosPartition")
        classes = split_option(getattr(config, "arvados_intermediate_storage_classes", None),
                               "--arvadosIntermediateStorageClasses")
        check_known(classes, known, "--arvadosIntermediateStorageClasses")
        final = split_option(getattr(config, "arvados_storage_classes", None), "--arvadosStorageClasses")
        check_known(final, known, "--arvadosStorageClasses")
    except HintError as e:
        raise ArvadosSetupError(str(e)) from None
    set_final_storage_classes("option", final)
    return {
        "partitions": partitions,
        "intermediate_storage_classes": classes,
        "default_preemptible": bool(getattr(config, "defaultPreemptible", False)),
        "default_walltime": int(getattr(config, "defaultWalltime", 0) or 0),
        "keep_cache_in_ram": bool(int((cluster.get("Containers") or {}).get("DefaultKeepCacheRAM") or 0)),
        "double_mem": bool(getattr(config, "doubleMem", False)),
        "retry_count": int(getattr(config, "retryCount", 0) or 0),
    }
