"""The pure Toil job -> container request mapping (no server needed)."""
from __future__ import annotations

from toil_arvados.container_request import (
    PROPERTY_JOB_STORE_ID,
    PROPERTY_WORKFLOW,
    JobResources,
    SubmitSettings,
    Unfit,
    container_request_body,
    gpu_constraints,
    image_scratch,
    needed_ram,
    needed_scratch,
    runtime_constraints,
    scheduling_parameters,
    unfit,
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
    # One tmp mount: dispatch-cloud adds up tmp capacities, so a second one would double the disk.
    assert b["mounts"] == {"/var/spool/cwl": {"kind": "tmp", "capacity": 3 << 30}}
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
    assert "gpu" not in body()["runtime_constraints"]


def test_long_names_are_truncated_and_max_attempts_passed():
    b = body(display_name="x" * 1000,
             settings=SubmitSettings(project_uuid="p", image="i", max_attempts=1))
    assert len(b["name"]) == 255
    assert b["container_count_max"] == 1


def test_worker_keeps_its_node_local_toil_state_in_its_own_scratch_space():
    # Not the leader host's /run/lock: its caching file store database names the leader's files.
    env = body()["environment"]
    assert env["TOIL_COORDINATION_DIR_OVERRIDE"] == "/var/spool/cwl" == env["TMPDIR"]
    assert body()["mounts"]["/var/spool/cwl"]["kind"] == "tmp"


def _valid_gpu(gpu):
    """What Arvados' container_request.rb accepts for runtime_constraints.gpu."""
    assert set(gpu) == {"device_count", "stack", "driver_version", "hardware_target", "vram"}
    assert gpu["stack"] in ("cuda", "rocm") and isinstance(gpu["device_count"], int) and gpu["vram"] == 0
    major, _, minor = gpu["driver_version"].partition(".")
    assert major.isdigit() and minor.isdigit() and float(gpu["driver_version"]) > 0
    assert isinstance(gpu["hardware_target"], list) and all(isinstance(t, str) for t in gpu["hardware_target"])


def test_toil_gpus_become_a_gpu_constraint_arvados_accepts():
    cuda = runtime_constraints(JobResources(cores=1, memory=1 << 30, disk=0,
                                            accelerators=({"kind": "gpu", "count": 1, "brand": "nvidia"},)))["gpu"]
    _valid_gpu(cuda)
    # No version named: the loosest values dispatch-cloud still compares (an empty CUDA target fits nothing).
    assert cuda["stack"] == "cuda" and cuda["driver_version"] == "1.0" and cuda["hardware_target"] == ["1.0"]
    for acc in ({"kind": "gpu", "api": "rocm", "model": "gfx90a"}, {"kind": "gpu", "brand": "amd", "model": "gfx90a"}):
        rocm = runtime_constraints(JobResources(cores=1, memory=1 << 30, disk=0, accelerators=(acc,)))["gpu"]
        _valid_gpu(rocm)
        assert rocm["stack"] == "rocm" and rocm["hardware_target"] == ["gfx90a"]


def test_gpu_versions_are_x_y_strings_and_targets_a_list():
    gpu = gpu_constraints(2, "cuda", "11.4.2", "7.5")
    _valid_gpu(gpu)
    assert gpu["driver_version"] == "11.4" and gpu["hardware_target"] == ["7.5"]
    assert gpu_constraints(1, "cuda", "12", ["8.0", "8.6"])["driver_version"] == "12.0"
    assert gpu_constraints(1, "cuda", "12", ["8.0", "8.6"])["hardware_target"] == ["8.0", "8.6"]
    assert gpu_constraints(1, "cuda", "garbage")["driver_version"] == "1.0"


def test_preemptible_is_asked_for_only_where_the_cluster_has_such_instances():
    # Toil's preemptible means "may be preempted": fine to run on a normal node.
    assert scheduling_parameters(True, preemptible_instances=False) == {}
    assert scheduling_parameters(True, preemptible_instances=True) == {"preemptible": True}
    assert scheduling_parameters(None, preemptible_instances=True) == {}
    assert scheduling_parameters(False, preemptible_instances=False) == {"preemptible": False}
    may = JobResources(cores=1, memory=1 << 30, disk=1 << 30, preemptible=True)
    assert body(resources=may)["scheduling_parameters"] == {}
    with_spot = SubmitSettings(project_uuid="p", image="i", preemptible_instances=True)
    assert body(resources=may, settings=with_spot)["scheduling_parameters"] == {"preemptible": True}


GIB = 1 << 30
CLUSTER = {
    "Containers": {"ReserveExtraRAM": 256 << 20, "DefaultKeepCacheRAM": 0, "LocalKeepBlobBuffersPerVCPU": 0},
    "InstanceTypes": {
        # As GET /arvados/v1/config exports them: no Scratch (computed as IncludedScratch + AddedScratch).
        "small": {"VCPUs": 2, "RAM": 4 * GIB, "IncludedScratch": 20 * GIB, "AddedScratch": 0, "Preemptible": False,
                  "GPU": {}},
        "gpu": {"VCPUs": 8, "RAM": 32 * GIB, "IncludedScratch": 60 * GIB, "AddedScratch": 40 * GIB, "Preemptible": False,
                "GPU": {"Stack": "cuda", "DeviceCount": 1, "DriverVersion": "12.0", "HardwareTarget": "8.6",
                        "VRAM": 0}},
    },
}


def test_sizes_are_computed_as_dispatch_cloud_does():
    rc = {"vcpus": 1, "ram": 1 * GIB}
    # RAM: ram + keep cache RAM + ReserveExtraRAM, and 5% of the instance's RAM counted unusable.
    assert needed_ram(rc, CLUSTER["Containers"]) == (GIB + (256 << 20)) * 100 // 95
    # Scratch: tmp mounts + keep cache disk (ram bounded to [2, 32] GiB when no keep cache RAM).
    mounts = {"/a": {"kind": "tmp", "capacity": GIB}, "/b": {"kind": "tmp", "capacity": GIB},
              "/c": {"kind": "collection"}}
    assert needed_scratch(rc, mounts, None, CLUSTER["Containers"]) == 2 * GIB + 2 * GIB
    # An arv-keepdocker image of 3 blocks: its manifest is 80 + 3*42 characters long.
    pdh = "0" * 32 + f"+{80 + 3 * 42}"
    assert image_scratch(pdh) == 3 * (64 << 20)
    assert needed_scratch(rc, {}, pdh, CLUSTER["Containers"]) == 2 * image_scratch(pdh) + 2 * GIB


def test_a_request_no_instance_type_can_run_is_unfit():
    fits = {"vcpus": 2, "ram": 3 * GIB}
    assert unfit(fits, {}, {}, None, CLUSTER) is None
    # 3.8 GiB + reserve does not fit in 4 GiB, but the GPU node is no home for a non-GPU job.
    why = unfit({"vcpus": 1, "ram": 3800 << 20}, {}, {}, None, CLUSTER)
    assert isinstance(why, Unfit) and why.resource == "memory" and why.available == 4 * GIB
    assert "ReserveExtraRAM" in why.detail
    assert unfit({"vcpus": 16, "ram": GIB}, {}, {}, None, CLUSTER).resource == "cores"
    assert unfit({"vcpus": 1, "ram": GIB}, {"/t": {"kind": "tmp", "capacity": 200 * GIB}}, {}, None,
                 CLUSTER).resource == "disk"
    assert unfit(fits, {}, {"preemptible": True}, None, CLUSTER).resource == "preemptible"
    gpu = {"vcpus": 1, "ram": GIB, "gpu": gpu_constraints(1, "cuda", "11.0", "8.0")}
    assert unfit(gpu, {}, {}, None, CLUSTER) is None
    gpu["gpu"] = gpu_constraints(1, "cuda", "12.2", "8.0")  # driver too old on every node
    assert unfit(gpu, {}, {}, None, CLUSTER).resource == "accelerators"
    assert unfit({"vcpus": 99, "ram": GIB}, {}, {}, None, {}) is None  # no instance types: not judged


def test_instance_scratch_is_included_plus_added_as_arvados_computes_it():
    # Arvados never exports Scratch (json:"-"); a type whose scratch adds up to 0 fits nothing
    # needing disk, as in dispatch-cloud (it used to be taken as "enough").
    zero = {"InstanceTypes": {"t": {"VCPUs": 2, "RAM": 4 * GIB, "Scratch": 500 * GIB}}}
    why = unfit({"vcpus": 1, "ram": GIB}, {"/t": {"kind": "tmp", "capacity": GIB}}, {}, None, zero)
    assert why is not None and why.resource == "disk" and why.available == 0
    added = {"InstanceTypes": {"t": {"VCPUs": 2, "RAM": 4 * GIB, "IncludedScratch": 4 * GIB, "AddedScratch": 20 * GIB}}}
    assert unfit({"vcpus": 1, "ram": GIB}, {"/t": {"kind": "tmp", "capacity": 10 * GIB}}, {}, None, added) is None


def test_unsupported_accelerators_are_named() -> None:
    from toil_arvados.container_request import unsupported_accelerator

    assert unsupported_accelerator({"kind": "gpu", "count": 1}) is None
    assert unsupported_accelerator({"kind": "gpu", "api": "ROCm"}) is None
    assert "'opencl'" in (unsupported_accelerator({"kind": "gpu", "api": "opencl"}) or "")
    assert "not 'fpga'" in (unsupported_accelerator({"kind": "fpga"}) or "")
