"""``toil-cwl-runner --batchSystem arvados --arvadosSubmit``: the Toil leader runs on the cluster.

Each test runs the real command against the session's local cluster: the runner request runs
the leader in the worker image, its steps are its children, its output collection holds the
workflow's outputs, and Ctrl-C while following cancels the runner and its steps.
"""
from __future__ import annotations

import json
import re
import secrets
import signal
import textwrap
from pathlib import Path

from e2e_util import collection_files
from toil_cli import (TOIL_CWL_RUNNER, Background, is_one_line_error, last_line, list_all, poll_until,
                      project_requests, run)

from toil_arvados.cwl_submit_request import PROPERTY_RUNNER as RUNNER_PROPERTY

DEMO = Path(__file__).resolve().parent.parent / "toil_arvados" / "demo"
UUID = re.compile(r"^[a-z0-9]{5}-xvhdp-[a-z0-9]{15}$")
RUN_TIMEOUT = 540


def _inputs(where: Path, name: str) -> Path:
    """Demo inputs with a local header file (which the submission must upload to Keep)."""
    header = where / "data" / "header.txt"
    header.parent.mkdir(exist_ok=True)
    header.write_text("word bytes\n")
    words = [f"w{secrets.token_hex(2)}", f"v{secrets.token_hex(2)}"]
    path = where / f"{name}.yml"
    path.write_text(json.dumps({"words": words, "header": {"class": "File", "location": "data/header.txt"}}))
    return path


def _submit(project: str, *extra: str) -> list[str]:
    return [TOIL_CWL_RUNNER, "--batchSystem", "arvados", "--arvadosProject", project, "--arvadosSubmit",
            "--retryCount", "0", *extra]


def _final(api, uuid: str, timeout: float = RUN_TIMEOUT) -> dict:
    return poll_until(lambda: api.container_requests().get(uuid=uuid).execute(), lambda cr: cr["state"] == "Final",
                      timeout, f"runner {uuid} to be Final", interval=1.0)


def _children(api, runner: dict) -> list[dict]:
    return list_all(api.container_requests(), [["requesting_container_uuid", "=", runner["container_uuid"]]])


def test_no_wait_prints_the_runner_uuid_which_ends_with_the_outputs(api, clean_project, env, tmp_path: Path) -> None:
    inputs = _inputs(tmp_path, "nowait")
    done = run(_submit(clean_project, "--arvadosNoWait", str(DEMO / "workflow.cwl"), str(inputs)), env, tmp_path,
               timeout=120)
    assert done.returncode == 0, done.describe()
    uuid = done.stdout.strip()
    assert UUID.match(uuid), done.stdout
    assert done.seconds < 60, f"--arvadosNoWait took {done.seconds:.0f}s"
    runner = api.container_requests().get(uuid=uuid).execute()
    assert runner["state"] == "Committed" and runner["runtime_constraints"]["API"] is True
    token_secret = env["ARVADOS_API_TOKEN"].rsplit("/", 1)[-1]
    assert token_secret not in json.dumps(runner) and runner["scheduling_parameters"]["supervisor"] is True

    runner = _final(api, uuid)
    container = api.containers().get(uuid=runner["container_uuid"]).execute()
    assert container["state"] == "Complete" and container["exit_code"] == 0, runner
    files = collection_files(api, runner["output_uuid"])
    outputs = json.loads(files["cwl.output.json"])
    assert outputs["report"]["location"] == "report.txt"
    words = json.loads(inputs.read_text())["words"]
    assert files["report.txt"].decode().splitlines() == ["word bytes"] + [f"{w} {len(w) + 1}" for w in words]
    steps = _children(api, runner)
    assert len(steps) == 2 * len(words) + 1 and all(cr["state"] == "Final" for cr in steps), steps
    log = collection_files(api, runner["log_uuid"])
    assert "Finished toil run successfully" in log["stderr.txt"].decode(), sorted(log)


def _run_local(clean_project: str, env, where: Path, inputs: Path) -> dict:
    done = run([TOIL_CWL_RUNNER, "--batchSystem", "arvados", "--arvadosProject", clean_project, "--retryCount", "0",
                "--jobStore", f"arvados:{clean_project}/local-leader", "--outdir", str(where / "local"),
                str(DEMO / "workflow.cwl"), str(inputs)], env, where, timeout=RUN_TIMEOUT)
    assert done.returncode == 0, done.describe()
    return json.loads(done.stdout)


def test_following_streams_the_log_and_ends_as_a_local_leader_run(api, clean_project, env, tmp_path: Path) -> None:
    inputs = _inputs(tmp_path, "follow")
    local = _run_local(clean_project, env, tmp_path, inputs)
    done = run(_submit(clean_project, "--outdir", str(tmp_path / "remote"), str(DEMO / "workflow.cwl"),
                       str(inputs)), env, tmp_path, timeout=RUN_TIMEOUT)
    assert done.returncode == 0, done.describe()
    remote = json.loads(done.stdout)
    assert sorted(remote) == sorted(local) == ["report"]
    assert Path(remote["report"]["path"]) == tmp_path / "remote" / "report.txt"
    assert Path(remote["report"]["path"]).read_bytes() == Path(local["report"]["path"]).read_bytes()
    for key in ("basename", "checksum", "size", "class"):
        assert remote["report"][key] == local["report"][key], key
    # The leader's own log lines, streamed while it ran.
    assert "Finished toil run successfully" in done.stderr, done.describe()
    assert "workflow runner finished with exit code 0" in done.stderr


FAILING = textwrap.dedent("""\
    cwlVersion: v1.2
    class: CommandLineTool
    baseCommand: [sh, -c, "echo about to fail >&2; exit 3"]
    inputs: []
    outputs: []
    """)


def test_a_failing_workflow_fails_the_command(api, clean_project, env, tmp_path: Path) -> None:
    tool = tmp_path / "fail.cwl"
    tool.write_text(FAILING)
    local = run([TOIL_CWL_RUNNER, "--batchSystem", "arvados", "--arvadosProject", clean_project, "--retryCount",
                 "0", "--jobStore", f"arvados:{clean_project}/local-fail", str(tool)], env, tmp_path,
                timeout=RUN_TIMEOUT)
    done = run(_submit(clean_project, str(tool)), env, tmp_path, timeout=RUN_TIMEOUT)
    assert done.returncode != 0 and done.returncode == local.returncode, (local.returncode, done.describe())
    assert "about to fail" in done.stderr, done.describe()  # the step's stderr, via the leader's log
    (runner,) = [cr for cr in project_requests(api, clean_project)
                 if RUNNER_PROPERTY in cr["properties"] and cr["state"] == "Final" and cr["container_uuid"]]
    assert api.containers().get(uuid=runner["container_uuid"]).execute()["exit_code"] != 0


def test_missing_worker_image_is_one_line_before_anything_is_submitted(api, clean_project, env,
                                                                        tmp_path: Path) -> None:
    inputs = _inputs(tmp_path, "noimage")
    done = run(_submit(clean_project, "--arvadosWorkerImage", "toil-arvados/worker:0.0.0-missing",
                       str(DEMO / "workflow.cwl"), str(inputs)), env, tmp_path, timeout=120)
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.describe()
    line = last_line(done.stderr)
    assert is_one_line_error(line) and "toil-arvados/worker:0.0.0-missing" in line, done.describe()
    assert project_requests(api, clean_project) == []
    assert list_all(api.collections(), [["owner_uuid", "=", clean_project]]) == []  # inputs not uploaded either


SLEEPER = textwrap.dedent("""\
    cwlVersion: v1.2
    class: Workflow
    inputs: []
    outputs: []
    steps:
      nap:
        run: {class: CommandLineTool, baseCommand: [sleep, "300"], inputs: [], outputs: []}
        in: []
        out: []
    """)


def test_ctrl_c_cancels_the_runner_and_its_steps(api, clean_project, env, tmp_path: Path) -> None:
    wf = tmp_path / "sleeper.cwl"
    wf.write_text(SLEEPER)
    follower = Background(_submit(clean_project, str(wf)), env, tmp_path, "sleeper")
    try:
        def step_running() -> list[dict]:
            runners = [cr for cr in project_requests(api, clean_project) if RUNNER_PROPERTY in cr["properties"]]
            if not runners or not runners[0]["container_uuid"]:
                return []
            steps = _children(api, runners[0])
            c_uuids = [cr["container_uuid"] for cr in steps if cr["container_uuid"]]
            running = list_all(api.containers(), [["uuid", "in", c_uuids], ["state", "=", "Running"]]) if c_uuids else []
            return [runners[0]] + steps if running else []

        found = poll_until(step_running, bool, RUN_TIMEOUT, "the sleeping step to run", interval=1.0)
        runner, steps = found[0], found[1:]
        # The leader's log lines arrive while it runs, not only at its end.
        poll_until(follower.stderr, lambda text: "CWL step main.nap" in text, 60, "the leader's log lines")
        follower.proc.send_signal(signal.SIGINT)
        done = follower.wait(120)
    finally:
        follower.kill()
    assert done.returncode != 0, done.describe()
    assert runner["uuid"] in done.stderr and "cancelling" in done.stderr, done.describe()
    runner = _final(api, runner["uuid"], 120)
    assert runner["priority"] == 0
    assert api.containers().get(uuid=runner["container_uuid"]).execute()["state"] == "Cancelled"
    for step in steps:
        step = _final(api, step["uuid"], 120)
        assert api.containers().get(uuid=step["container_uuid"]).execute()["state"] == "Cancelled", step


SECRET = textwrap.dedent("""\
    cwlVersion: v1.2
    class: CommandLineTool
    $namespaces: {cwltool: "http://commonwl.org/cwltool#"}
    hints:
      cwltool:Secrets: {secrets: [pw]}
    requirements:
      InitialWorkDirRequirement:
        listing: [{entryname: pw.txt, entry: $(inputs.pw)}]
      ShellCommandRequirement: {}
    inputs:
      pw: string
    arguments: [{valueFrom: 'wc -c < pw.txt', shellQuote: false}]
    stdout: out.txt
    outputs:
      out: {type: File, outputBinding: {glob: out.txt}}
    """)


def test_a_secret_input_reaches_the_tool_but_no_record(api, clean_project, env, tmp_path: Path) -> None:
    secret = f"hunter2-{secrets.token_hex(8)}"
    tool = tmp_path / "secret.cwl"
    tool.write_text(SECRET)
    inputs = tmp_path / "secret.yml"
    inputs.write_text(json.dumps({"pw": secret}))
    done = run(_submit(clean_project, "--outdir", str(tmp_path / "out"), str(tool), str(inputs)), env, tmp_path,
               timeout=RUN_TIMEOUT)
    assert done.returncode == 0, done.describe()
    assert (tmp_path / "out" / "out.txt").read_text().strip() == str(len(secret))
    (runner,) = [cr for cr in project_requests(api, clean_project) if RUNNER_PROPERTY in cr["properties"]]
    container = api.containers().get(uuid=runner["container_uuid"]).execute()
    logs = list_all(api.logs(), [["object_uuid", "=", runner["container_uuid"]]])
    log_files = collection_files(api, runner["log_uuid"])
    assert logs and secret not in json.dumps([runner, container, logs, done.stderr])
    assert all(secret.encode() not in data for data in log_files.values())


DIRECTORIES = textwrap.dedent("""\
    cwlVersion: v1.2
    class: CommandLineTool
    requirements: {ShellCommandRequirement: {}}
    inputs:
      d: Directory
    arguments: [{valueFrom: 'mkdir out && cp -r $(inputs.d.path)/. out/ && ls -R out > listing.txt',
                 shellQuote: false}]
    outputs:
      copy: {type: Directory, outputBinding: {glob: out}}
      listing: {type: File, outputBinding: {glob: listing.txt}}
    """)


def test_a_local_directory_goes_up_and_a_directory_output_comes_back(api, clean_project, env,
                                                                     tmp_path: Path) -> None:
    tool = tmp_path / "dirs.cwl"
    tool.write_text(DIRECTORIES)
    data = tmp_path / "in" / "data"
    (data / "sub").mkdir(parents=True)
    (data / "a.txt").write_text("a\n")
    (data / "sub" / "b.txt").write_text("b\n")
    inputs = tmp_path / "dirs.yml"
    inputs.write_text(json.dumps({"d": {"class": "Directory", "location": "in/data"}}))
    done = run(_submit(clean_project, "--outdir", str(tmp_path / "out"), str(tool), str(inputs)), env, tmp_path,
               timeout=RUN_TIMEOUT)
    assert done.returncode == 0, done.describe()
    out = json.loads(done.stdout)
    copy = Path(out["copy"]["path"])
    assert copy == tmp_path / "out" / "out"
    assert (copy / "a.txt").read_text() == "a\n" and (copy / "sub" / "b.txt").read_text() == "b\n"
    assert "b.txt" in Path(out["listing"]["path"]).read_text()
    (runner,) = [cr for cr in project_requests(api, clean_project) if RUNNER_PROPERTY in cr["properties"]]
    location = runner["mounts"]["/var/lib/cwl/cwl.input.json"]["content"]["d"]["location"]
    assert location.startswith("keep:") and location.endswith("/data"), location
