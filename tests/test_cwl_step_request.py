"""Pure mappings behind native CWL steps: tool invocation -> request body, path-mapper entries ->
mounts, DockerRequirement -> image. No server: these decide what Arvados compares for reuse."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from cwl_utils.errors import WorkflowException

from toil_arvados.cwl_images import docker_requirements, load_process, missing_images
from toil_arvados.cwl_staging import Entry, collection_path, plan_mounts, stdin_mount
from toil_arvados.cwl_step import image_name, normalize_image
from toil_arvados.cwl_step_request import (
    PROPERTY_PARENT_REQUEST,
    PROPERTY_STEP,
    PROPERTY_WORKFLOW_RUN,
    StepInvocation,
    StepSettings,
    process_status,
    step_request_body,
)

PDH = "d41d8cd98f00b204e9800998ecf8427e+0"


def _inv(**kw) -> StepInvocation:
    base = dict(name="main.shout", command=["echo", "hi"], image="debian:stable-slim",
                environment={"HOME": "/var/spool/cwl", "TMPDIR": "/tmp"}, mounts={})
    base.update(kw)
    return StepInvocation(**base)


def test_body_runs_the_tools_command_in_its_image_with_cwl_paths() -> None:
    body = step_request_body(_inv(cores=1.5, ram_mib=300, outdir_mib=10, tmpdir_mib=20),
                             StepSettings(project_uuid="zzzzz-j7d0g-000000000000000", priority=700),
                             step="main.shout", tool="file:///w/shout.cwl")
    assert body["command"] == ["echo", "hi"]
    assert body["container_image"] == "debian:stable-slim"
    assert body["cwd"] == body["output_path"] == "/var/spool/cwl"
    assert body["mounts"]["/var/spool/cwl"] == {"kind": "tmp", "capacity": 10 * 2**20}
    assert body["mounts"]["/tmp"] == {"kind": "tmp", "capacity": 20 * 2**20}
    assert body["runtime_constraints"] == {"vcpus": 2, "ram": 300 * 2**20, "API": False}
    assert body["state"] == "Committed" and body["priority"] == 700 and body["use_existing"] is True
    assert body["owner_uuid"] == "zzzzz-j7d0g-000000000000000"


def test_run_facts_stay_out_of_what_arvados_compares_for_reuse() -> None:
    """Two runs of the same step differ only in name/properties, never in the reuse key."""
    reuse_key = ("command", "cwd", "environment", "output_path", "container_image", "mounts",
                 "runtime_constraints", "scheduling_parameters")
    a = step_request_body(_inv(), StepSettings(project_uuid="p", workflow_run="run-1", parent_request="cr-1"),
                          step="main.shout", tool="t")
    b = step_request_body(_inv(), StepSettings(project_uuid="p", workflow_run="run-2", parent_request="cr-2"),
                          step="main.shout", tool="t")
    assert {k: a[k] for k in reuse_key} == {k: b[k] for k in reuse_key}
    assert a["properties"][PROPERTY_WORKFLOW_RUN] == "run-1" and b["properties"][PROPERTY_PARENT_REQUEST] == "cr-2"
    assert a["properties"][PROPERTY_STEP] == "main.shout"


def test_streams_network_time_limit_gpu_and_reuse_switches() -> None:
    body = step_request_body(
        _inv(stdin={"kind": "collection", "portable_data_hash": PDH, "path": "stage/stg0/in.txt"},
             stdout="out.txt", stderr="err.txt", network=True, timelimit=30, cuda_devices=1, preemptible=True,
             reuse=False),
        StepSettings(project_uuid="p", max_attempts=2, preemptible_instances=True), step="s", tool="t")
    m = body["mounts"]
    assert m["stdin"]["path"] == "stage/stg0/in.txt"
    assert m["stdout"] == {"kind": "file", "path": "/var/spool/cwl/out.txt"}
    assert m["stderr"] == {"kind": "file", "path": "/var/spool/cwl/err.txt"}
    assert body["runtime_constraints"]["API"] is True
    assert body["runtime_constraints"]["gpu"]["device_count"] == 1
    assert body["scheduling_parameters"] == {"max_run_time": 30, "preemptible": True}
    assert body["use_existing"] is False and body["container_count_max"] == 2
    # Reuse can also be switched off for the whole run.
    off = step_request_body(_inv(), StepSettings(project_uuid="p", reuse=False), step="s", tool="t")
    assert off["use_existing"] is False


@pytest.mark.parametrize("code,success,temporary,permanent,expected", [
    (0, [], [], [], "success"),
    (1, [], [], [], "permanentFail"),
    (1, [1], [], [], "success"),
    (0, [1], [], [], "success"),
    (75, [], [75], [], "temporaryFail"),
    (0, [], [], [0], "permanentFail"),
    (None, [], [], [], "permanentFail"),
])
def test_exit_codes_follow_cwltool(code, success, temporary, permanent, expected) -> None:
    assert process_status(code, success, temporary, permanent) == expected


def test_staging_layout_is_one_stage_mount_plus_one_per_work_dir_entry() -> None:
    entries = [Entry("toilfile:a", "/var/lib/cwl/stg0/a.txt", "File"),
               Entry("keep:x/d", "/var/lib/cwl/stg1/d", "Directory"),
               Entry("hello", "/var/spool/cwl/greeting.txt", "CreateFile"),
               Entry("toilfile:b", "/var/spool/cwl/b.txt", "WritableFile")]
    assert collection_path("/var/lib/cwl/stg0/a.txt", "/var/lib/cwl") == "stage/stg0/a.txt"
    assert collection_path("/var/spool/cwl/b.txt", "/var/lib/cwl") == "mnt/var/spool/cwl/b.txt"
    mounts = plan_mounts(entries, "/var/lib/cwl", PDH)
    assert mounts == {
        "/var/lib/cwl": {"kind": "collection", "portable_data_hash": PDH, "path": "stage"},
        "/var/spool/cwl/greeting.txt": {"kind": "collection", "portable_data_hash": PDH,
                                        "path": "mnt/var/spool/cwl/greeting.txt"},
        "/var/spool/cwl/b.txt": {"kind": "collection", "portable_data_hash": PDH,
                                 "path": "mnt/var/spool/cwl/b.txt", "writable": True},
    }
    assert stdin_mount("/var/lib/cwl/stg0/a.txt", entries, "/var/lib/cwl", PDH)["path"] == "stage/stg0/a.txt"
    with pytest.raises(ValueError, match="not one of the step's staged inputs"):
        stdin_mount("/etc/passwd", entries, "/var/lib/cwl", PDH)


def test_images_follow_arvados_cwl_runner_naming() -> None:
    assert image_name(None, "toil-arvados/worker:latest") == "toil-arvados/worker:latest"
    assert image_name({"dockerPull": "alpine"}, "d") == "alpine:latest"
    assert image_name({"dockerPull": "debian:stable-slim"}, "d") == "debian:stable-slim"
    assert image_name({"dockerPull": "a:1", "dockerImageId": "b:2"}, "d") == "b:2"
    assert normalize_image("registry:5000/x/y") == "registry:5000/x/y:latest"
    with pytest.raises(WorkflowException, match="arv-keepdocker"):
        image_name({"dockerFile": "FROM debian"}, "d")


def test_every_docker_requirement_of_a_workflow_is_found(tmp_path: Path) -> None:
    (tmp_path / "wf.cwl").write_text(textwrap.dedent("""\
        cwlVersion: v1.2
        class: Workflow
        inputs: []
        outputs: []
        steps:
          a:
            run:
              class: CommandLineTool
              hints: {DockerRequirement: {dockerPull: "bash:4.4"}}
              baseCommand: "true"
              inputs: []
              outputs: []
            in: []
            out: []
          b:
            run:
              class: CommandLineTool
              requirements: {DockerRequirement: {dockerPull: "alpine"}}
              baseCommand: "true"
              inputs: []
              outputs: []
            in: []
            out: []
          c:
            run:
              class: CommandLineTool
              baseCommand: "true"
              inputs: []
              outputs: []
            in: []
            out: []
        """))
    tool = load_process(str(tmp_path / "wf.cwl"))
    images = sorted(image_name(r, "") for r in docker_requirements(tool))
    assert images == ["alpine:latest", "bash:4.4"]
    assert missing_images(["a:1", "b:1", "a:1", "c:1"], lambda i: i == "b:1") == ["a:1", "c:1"]


def test_in_place_updates_are_accepted_only_for_native_steps_on_a_keep_job_store() -> None:
    from toil_arvados.cwl_images import native_steps_on_keep

    assert native_steps_on_keep(["--batchSystem", "arvados", "--jobStore", "arvados:p/n", "wf.cwl"], {})
    assert native_steps_on_keep(["--batchSystem=arvados", "--jobStore=arvados:n"], {})
    assert native_steps_on_keep(["--jobStore", "arvados:n"], {"TOIL_BATCH_SYSTEM": "arvados"})
    assert not native_steps_on_keep(["--batchSystem", "arvados", "--jobStore", "file:/js"], {})
    assert not native_steps_on_keep(["--batchSystem", "arvados", "--jobStore", "arvados:n",
                                     "--noArvadosNativeSteps"], {})
    assert not native_steps_on_keep(["--batchSystem", "single_machine", "--jobStore", "arvados:n"], {})


def test_tool_ids_keep_no_leader_directory() -> None:
    from toil_arvados.cwl_step_request import portable_tool_id

    assert portable_tool_id("file:///home/u/wf/tool.cwl#main") == "tool.cwl#main"
    assert portable_tool_id("/home/u/wf/tool.cwl") == "tool.cwl"
    assert portable_tool_id("keep:99999999999999999999999999999999+99/wf.cwl#x") == \
        "keep:99999999999999999999999999999999+99/wf.cwl#x"


def test_cuda_requirement_becomes_an_arvados_3_gpu_constraint() -> None:
    """cudaVersionMin -> driver_version "X.Y", cudaComputeCapability -> hardware_target (list of strings)."""
    body = step_request_body(_inv(cuda_devices=2, cuda_version_min="11.4", cuda_compute_capability=("7.5",)),
                             StepSettings(project_uuid="p"), step="s", tool="t")
    assert body["runtime_constraints"]["gpu"] == {"device_count": 2, "stack": "cuda", "driver_version": "11.4",
                                                  "hardware_target": ["7.5"], "vram": 0}
    many = step_request_body(_inv(cuda_devices=1, cuda_version_min="12", cuda_compute_capability=("8.0", "9.0")),
                             StepSettings(project_uuid="p"), step="s", tool="t")
    assert many["runtime_constraints"]["gpu"]["driver_version"] == "12.0"
    assert many["runtime_constraints"]["gpu"]["hardware_target"] == ["8.0", "9.0"]


def test_use_preemptible_only_where_the_cluster_has_preemptible_instances() -> None:
    def sched(preemptible, instances):
        return step_request_body(_inv(preemptible=preemptible),
                                 StepSettings(project_uuid="p", preemptible_instances=instances),
                                 step="s", tool="t")["scheduling_parameters"]

    assert sched(True, False) == {}  # Arvados would refuse preemptible: true here
    assert sched(True, True) == {"preemptible": True}
    assert sched(False, False) == {"preemptible": False}
    assert sched(None, True) == {}


def test_names_are_cut_to_255_characters() -> None:
    body = step_request_body(_inv(name="n" * 400), StepSettings(project_uuid="p"), step="s", tool="t")
    assert len(body["name"]) == 255 and len(body["output_name"]) == 255
