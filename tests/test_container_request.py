"""The pure Toil job -> container request mapping (no server needed)."""
from __future__ import annotations

from toil_arvados.container_request import (
    PROPERTY_JOB_STORE_ID,
    PROPERTY_WORKFLOW,
    JobResources,
    SubmitSettings,
    container_request_body,
    runtime_constraints,
)

SETTINGS = SubmitSettings(project_uuid="zzzzz-j7d0g-000000000000001", image="toil-arvados/worker:latest",
                          priority=700, worker_python="/opt/venv/bin/python")


def body(**overrides):
    args = dict(worker_command="_toil_worker job1 arvados:p/js kind-x", display_name="step 1",
                job_name="step", job_store_id="zzzzz-4zz18-aaaaaaaaaaaaaaa", workflow_id="wf-1",
                batch_job_id=7, resources=JobResources(cores=1.5, memory=2 << 30, disk=3 << 30),
                settings=SETTINGS, environment={"OMP_NUM_THREADS": "2"})
    args.update(overrides)
    return container_request_body(**args)


def test_requirements_become_runtime_constraints_and_tmp_capacity():
    b = body()
    assert b["runtime_constraints"]["vcpus"] == 2  # Arvados wants whole cores: 1.5 rounds up
    assert b["runtime_constraints"]["ram"] == 2 << 30
    assert b["runtime_constraints"]["API"] is True
    assert b["mounts"]["/var/spool/cwl"] == {"kind": "tmp", "capacity": 3 << 30}
    assert b["mounts"]["/tmp"]["capacity"] == 3 << 30
    assert b["output_path"] == "/var/spool/cwl"


def test_identity_priority_image_project_and_command():
    b = body()
    assert b["state"] == "Committed" and b["priority"] == 700
    assert b["owner_uuid"] == SETTINGS.project_uuid
    assert b["container_image"] == "toil-arvados/worker:latest"
    assert b["command"] == ["/opt/venv/bin/python", "-m", "toil_arvados.worker",
                            "_toil_worker job1 arvados:p/js kind-x"]
    assert b["properties"][PROPERTY_WORKFLOW] == "wf-1"
    assert b["properties"][PROPERTY_JOB_STORE_ID] == "zzzzz-4zz18-aaaaaaaaaaaaaaa"
    assert b["name"] == "step 1"
    assert b["use_existing"] is False
    assert b["environment"]["OMP_NUM_THREADS"] == "2"


def test_preemptible_gpus_and_tiny_memory():
    rc = runtime_constraints(JobResources(cores=0.1, memory=1000, disk=0,
                                          accelerators=({"kind": "gpu", "count": 2, "api": "cuda"},)))
    assert rc["vcpus"] == 1
    assert rc["ram"] >= 64 << 20
    assert rc["gpu"]["device_count"] == 2 and rc["gpu"]["stack"] == "cuda"
    b = body(resources=JobResources(cores=1, memory=1 << 30, disk=1 << 30, preemptible=True))
    assert b["scheduling_parameters"] == {"preemptible": True}
    assert "gpu" not in b["runtime_constraints"]


def test_long_names_are_truncated_and_max_attempts_passed():
    b = body(display_name="x" * 1000,
             settings=SubmitSettings(project_uuid="p", image="i", max_attempts=1))
    assert len(b["name"]) <= 250
    assert b["container_count_max"] == 1


def test_worker_keeps_its_node_local_toil_state_in_its_own_scratch_space():
    # Not the leader host's /run/lock: its caching file store database names the leader's files.
    env = body()["environment"]
    assert env["TOIL_COORDINATION_DIR_OVERRIDE"] == "/tmp" == env["TMPDIR"]
    assert body()["mounts"]["/tmp"]["kind"] == "tmp"
