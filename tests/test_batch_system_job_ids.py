"""Container jobs and local (leader-side) jobs never share a batch job ID.

Why: CWL workflows mix both kinds (Toil runs its small bookkeeping jobs on the leader), and Toil's
leader keys every issued job by its ID. When the Arvados batch system numbered its jobs from 1 on
its own, they collided with the local jobs' IDs, and conditional/scatter CWL conformance tests
failed with "An unexpected job is still running" or "Jobs waiting on successors at shutdown".
"""
from __future__ import annotations

import time
import uuid

from toil.common import Config
from toil.job import JobDescription

from toil_arvados.batch_system import ArvadosBatchSystem


def _job(config: Config, name: str, local: bool) -> JobDescription:
    desc = JobDescription(requirements={"cores": 1, "memory": 64 << 20, "disk": 1 << 20, "preemptible": False},
                          jobName=name, local=local)
    desc.jobStoreID = f"kind-{name}/instance-{uuid.uuid4().hex[:8]}"
    desc.assignConfig(config)  # defaults (accelerators...) come from the config, as in a real workflow
    return desc


def test_local_and_container_jobs_get_distinct_ids_and_both_finish(cluster_env):
    config = Config()
    config.workflowID = str(uuid.uuid4())
    config.cleanWorkDir = "always"
    config.arvados_poll_interval = 1.0
    batch = ArvadosBatchSystem(config=config, maxCores=2, maxMemory=1e9, maxDisk=1 << 30)
    try:
        issued = {
            batch.issueBatchJob("true", _job(config, "local1", True)): "local1",
            batch.issueBatchJob("true", _job(config, "remote1", False)): "remote1",
            batch.issueBatchJob("true", _job(config, "local2", True)): "local2",
            batch.issueBatchJob("true", _job(config, "remote2", False)): "remote2",
        }
        assert len(issued) == 4, f"batch job IDs collided: {issued}"
        assert sorted(batch.getIssuedBatchJobIDs()) == sorted(issued)
        finished: dict[int, int] = {}
        deadline = time.monotonic() + 120
        while len(finished) < len(issued) and time.monotonic() < deadline:
            update = batch.getUpdatedBatchJob(maxWait=1)
            if update is not None:
                assert update.jobID not in finished, f"job {update.jobID} reported twice"
                finished[update.jobID] = update.exitStatus
        assert finished == {job_id: 0 for job_id in issued}
    finally:
        batch.shutdown()
