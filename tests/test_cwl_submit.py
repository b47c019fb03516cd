"""``--arvadosSubmit``'s pure parts: the runner request, the options it passes on, locations."""
from __future__ import annotations

import json

import pytest

from toil_arvados.cwl_submit import _arity, wanted
from toil_arvados.cwl_submit_request import (INPUT_MOUNT, WORKFLOW_MOUNT, RunnerSettings, common_parent, env_options,
                                             local_paths, passthrough_args, relocate_outputs, runner_request_body,
                                             secret_input_names, split_secrets, to_keep)
from toil_arvados.cwl_submit_runner import write_output_object

SETTINGS = RunnerSettings(name="toil-cwl-runner wf.cwl", project_uuid="zzzzz-j7d0g-000000000000001",
                          image="toil-arvados/worker:0.2.0", job_store="arvados:zzzzz-j7d0g-000000000000001/run",
                          cores=2, ram=3 << 30)


def test_the_runner_request_runs_the_leader_with_api_access_and_the_inputs_mounted() -> None:
    body = runner_request_body(SETTINGS, {"id": "#main"}, {"x": 1}, {}, ["--retryCount", "0"])
    assert body["state"] == "Committed" and body["runtime_constraints"] == {"vcpus": 2, "ram": 3 << 30, "API": True}
    assert body["container_image"] == "toil-arvados/worker:0.2.0" and body["output_path"] == "/var/spool/cwl"
    assert body["mounts"][WORKFLOW_MOUNT] == {"kind": "json", "content": {"id": "#main"}}
    assert body["mounts"][INPUT_MOUNT] == {"kind": "json", "content": {"x": 1}}
    command = body["command"]
    assert command[command.index("--batchSystem") + 1] == "arvados"
    assert command[command.index("--jobStore") + 1] == SETTINGS.job_store
    assert command[-4:] == ["--retryCount", "0", f"{WORKFLOW_MOUNT}#main", INPUT_MOUNT]
    assert body["use_existing"] is False and body["properties"]["type"] == "workflow"


def test_secret_inputs_travel_only_in_secret_mounts() -> None:
    packed = {"$graph": [{"id": "#main", "hints": [{"class": "http://commonwl.org/cwltool#Secrets",
                                                   "secrets": ["#main/pw"]}]}]}
    assert secret_input_names(packed) == ["pw"]
    order, mounts = split_secrets({"pw": "hunter2", "n": 3}, secret_input_names(packed))
    assert order == {"pw": {"$include": "/secrets/s0"}, "n": 3}
    assert mounts == {"/secrets/s0": {"kind": "text", "content": "hunter2"}}
    body = runner_request_body(SETTINGS, packed, order, mounts, [])
    visible = json.dumps({k: v for k, v in body.items() if k != "secret_mounts"})
    assert "hunter2" not in visible and body["secret_mounts"] == mounts


def test_options_naming_this_machine_are_not_passed_on() -> None:
    argv = ["--batchSystem", "arvados", "--arvadosSubmit", "--arvadosNoWait", "--arvadosSubmitRam", "2G",
            "--jobStore", "arvados:x", "--outdir", "/home/me/out", "--retryCount", "2", "--logDebug",
            "--workDir=/scratch", "--noArvadosStepReuse", "--arvadosDefaultImage", "debian:stable-slim",
            "wf.cwl", "job.yml"]
    assert passthrough_args(argv, _arity()) == ["--retryCount", "2", "--logDebug", "--noArvadosStepReuse",
                                                "--arvadosDefaultImage", "debian:stable-slim"]


def test_plugin_options_set_in_the_environment_reach_the_runner() -> None:
    options = [("--arvadosDefaultImage", "arvados_default_image", "TOIL_ARVADOS_DEFAULT_IMAGE"),
               ("--arvadosPriority", "arvados_priority", "TOIL_ARVADOS_PRIORITY"),
               ("--arvadosProject", "arvados_project", "TOIL_ARVADOS_PROJECT"),
               ("--workDir", "workDir", "TOIL_WORKDIR")]
    environ = {"TOIL_ARVADOS_DEFAULT_IMAGE": "debian:stable-slim", "TOIL_ARVADOS_PRIORITY": "700",
               "TOIL_ARVADOS_PROJECT": "zzzzz-j7d0g-000000000000001", "TOIL_WORKDIR": "/scratch"}
    assert env_options(options, ["--arvadosPriority=900", "wf.cwl"], environ) == \
        ["--arvadosDefaultImage", "debian:stable-slim"]  # the command line wins; local options stay here


def test_the_flag_counts_only_as_an_option() -> None:
    assert wanted(["--batchSystem", "arvados", "--arvadosSubmit", "wf.cwl"])
    assert not wanted(["wf.cwl", "--", "--arvadosSubmit"])
    assert not wanted(["--batchSystem", "arvados", "wf.cwl"])


def test_local_files_move_to_keep_keeping_their_layout() -> None:
    order = {"a": {"class": "File", "location": "file:///home/me/data/a.txt", "path": "/home/me/data/a.txt",
                   "secondaryFiles": [{"class": "File", "location": "file:///home/me/data/a.txt.idx"}]},
             "d": {"class": "Directory", "location": "file:///home/me/ref"},
             "in_d": {"class": "File", "location": "file:///home/me/ref/g.fa"},
             "k": {"class": "File", "location": "keep:99999999999999999999999999999999+0/x"},
             "lit": {"class": "File", "basename": "l.txt", "contents": "hi"}}
    paths = local_paths(order)
    assert paths == ["/home/me/data/a.txt", "/home/me/data/a.txt.idx", "/home/me/ref"]
    assert common_parent(paths) == "/home/me"
    moved = to_keep(order, "abc+1", "/home/me")
    assert moved["a"]["location"] == "keep:abc+1/data/a.txt" and "path" not in moved["a"]
    assert moved["a"]["secondaryFiles"][0]["location"] == "keep:abc+1/data/a.txt.idx"
    assert moved["d"]["location"] == "keep:abc+1/ref" and moved["in_d"]["location"] == "keep:abc+1/ref/g.fa"
    assert moved["k"] == order["k"] and moved["lit"] == order["lit"]


def test_outputs_are_relative_in_the_collection_and_local_after_download(tmp_path) -> None:
    raw = json.dumps({"r": {"class": "File", "location": (tmp_path / "out" / "r.txt").as_uri(),
                            "path": str(tmp_path / "out" / "r.txt"), "basename": "r.txt"},
                      "k": {"class": "File", "location": "keep:abc+1/x"}})
    (tmp_path / "out").mkdir()
    write_output_object(raw, tmp_path / "out")
    relative = json.loads((tmp_path / "out" / "cwl.output.json").read_text())
    assert relative["r"] == {"class": "File", "location": "r.txt", "basename": "r.txt"}
    local = relocate_outputs(relative, "", "file:///home/me/o/", True)
    assert local["r"]["location"] == "file:///home/me/o/r.txt" and local["r"]["path"] == "/home/me/o/r.txt"
    assert local["k"] == {"class": "File", "location": "keep:abc+1/x"}


@pytest.mark.parametrize("extra", [["job.yml", "more.yml"], ["--word", "x"]])
def test_inputs_as_options_are_refused_in_one_line(extra) -> None:
    from argparse import Namespace

    from toil_arvados.arvados_client import ArvadosSetupError
    from toil_arvados.cwl_submit import _check_options

    with pytest.raises(ArvadosSetupError, match="one YAML or JSON file"):
        _check_options(Namespace(batchSystem="arvados", restart=False, jobStore=None, cwljob=extra))
