"""Toil plugin discovery hook: Toil 9 imports every module named ``toil_batch_system_*``.

Importing this module registers ``--batchSystem arvados`` and makes Toil's job-store factory
know ``arvados:`` locators (see :mod:`toil_arvados.jobstore.registration`).
"""
from toil.batchSystems.registry import add_batch_system_factory


def _arvados_batch_system():
    from toil_arvados.batch_system import ArvadosBatchSystem

    return ArvadosBatchSystem


add_batch_system_factory("arvados", _arvados_batch_system)

from toil_arvados import cli_errors  # noqa: E402

cli_errors.install()  # setup errors (bad token, unknown project, ...) print as one line

import sys  # noqa: E402

if "toil.cwl.cwltoil" in sys.modules:  # toil-cwl-runner: check images in Keep instead of pulling them
    from toil_arvados import toil_patches

    toil_patches.cwl_runner_patches()

try:
    from toil_arvados.jobstore.registration import register_job_store

    register_job_store()
except ImportError:  # the job store package failed to import; the batch system still works
    pass
