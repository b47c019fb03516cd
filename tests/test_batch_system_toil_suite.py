"""Toil's own batch system test suite, run against ArvadosBatchSystem on the local cluster."""
from __future__ import annotations

import pytest
from toil.test.batchSystems.batchSystemTest import hidden

from toil_arvados.batch_system import ArvadosBatchSystem


@pytest.fixture(autouse=True, scope="module")
def _cluster_env(cluster_env):
    """Toil's unittest-style tests read the SDK's environment variables set by this fixture."""
    yield


class TestArvadosBatchSystem(hidden.AbstractBatchSystemTest):
    """Runs every generic batch system test Toil ships (run_jobs, set_env, job env, resources)."""

    def supportsWallTime(self) -> bool:
        return True

    def get_max_startup_seconds(self) -> int:
        return 30

    def createBatchSystem(self) -> ArvadosBatchSystem:
        self.config.arvados_poll_interval = 2.0
        # 2 cores, 1 GB, as Toil's other batch system tests configure; the local cluster has 2 cores.
        return ArvadosBatchSystem(config=self.config, maxCores=2, maxMemory=1e9, maxDisk=2001)
