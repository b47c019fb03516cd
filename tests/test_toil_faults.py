"""Faults, end to end with ``toil-cwl-runner --batchSystem arvados`` on the local cluster.

A failing step is retried as ``--retryCount`` says and its stderr reaches the leader's log;
Ctrl-C on the leader leaves nothing running on the cluster; ``--restart`` after the leader was
killed re-attaches to the running request instead of running finished or running steps again;
and setup mistakes end in one line naming the problem, never a traceback or the token.
"""
from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path

import pytest

from toil_cli import (
    TOIL_CWL_RUNNER,
    Background,
    containers_by_uuid,
    is_one_line_error,
    last_line,
    poll_until,
    project_requests,
    run,
)

BOOM = """\
cwlVersion: v1.2
class: CommandLineTool
baseCommand: [sh, -c, 'echo boom-marker >&2; exit 3']
inputs: []
outputs: []
"""

SLEEPER = """\
cwlVersion: v1.2
class: CommandLineTool
baseCommand: [sleep, "600"]
inputs: []
outputs: []
"""

# Two steps in sequence. The second asks for more memory than the first on purpose: Toil chains a
# successor that fits in its predecessor's resources into the same worker (one container for both),
# and then there would be no second request to re-attach to.
TWO_STEPS = """\
cwlVersion: v1.2
class: Workflow
inputs: []
outputs:
  out: {type: File, outputSource: second/out}
steps:
  first:
    run:
      class: CommandLineTool
      baseCommand: [echo, first-done]
      inputs: []
      stdout: first.txt
      outputs: {out: stdout}
    in: {}
    out: [out]
  second:
    run:
      class: CommandLineTool
      requirements:
        ResourceRequirement: {ramMin: 512}
      baseCommand: [sh, -c]
      arguments: ['sleep 25; cat $(inputs.inp.path); echo second-done']
      inputs: {inp: File}
      stdout: second.txt
      outputs: {out: stdout}
    in: {inp: first/out}
    out: [out]
"""

ECHO = """\
cwlVersion: v1.2
class: CommandLineTool
baseCommand: [echo, hello]
inputs: []
stdout: out.txt
outputs: {out: stdout}
"""

BIG = """\
cwlVersion: v1.2
class: CommandLineTool
requirements:
  ResourceRequirement: {coresMin: 64}
baseCommand: [echo, hello]
inputs: []
stdout: out.txt
outputs: {out: stdout}
"""


def _write(where: Path, name: str, text: str) -> Path:
    path = where / name
    path.write_text(text)
    return path


# CWL tools run as their own container requests (native steps, the default) or inside Toil
# worker containers; failures, cancellation and restarts must work in both.
MODES = {"native": [], "workers": ["--noArvadosNativeSteps"]}
JOB_ID_PROPERTY = {"native": "toil_step_job_store_id", "workers": "toil_job_store_id"}


def _arvados_args(project: str, store: str, outdir: Path, mode: str = "native") -> list[str]:
    return [TOIL_CWL_RUNNER, "--batchSystem", "arvados", "--arvadosProject", project,
            "--jobStore", f"arvados:{project}/{store}", "--outdir", str(outdir), *MODES[mode]]


def _named(crs: list[dict], step: str) -> list[dict]:
    return [cr for cr in crs if step in cr["name"]]


@pytest.mark.parametrize("mode", list(MODES))
def test_failing_step_is_retried_then_fails_with_its_stderr(mode: str, api, clean_project, env,
                                                            tmp_path: Path) -> None:
    project = clean_project
    tool = _write(tmp_path, "boom.cwl", BOOM)
    done = run(_arvados_args(project, "e2e-boom", tmp_path / "out", mode) + ["--retryCount", "1", str(tool)],
               env, tmp_path, timeout=300)
    assert done.returncode != 0, done.describe()
    # The tool's own stderr line, not just the command line that contains the word.
    assert any(line.strip() == "boom-marker" for line in done.stderr.splitlines()), done.describe()
    crs = _named(project_requests(api, project), "boom")
    assert len(crs) == 2, [cr["name"] for cr in crs]  # first try + one retry
    assert len({cr["properties"][JOB_ID_PROPERTY[mode]] for cr in crs}) == 1  # the same Toil job twice
    containers = containers_by_uuid(api, crs)
    assert sorted(c["state"] for c in containers.values()) == ["Complete", "Complete"]
    assert all(c["exit_code"] != 0 for c in containers.values())
    # The plugin's failure report names each failed request.
    for cr in crs:
        report = f"Arvados job {cr['uuid']}" if mode == "workers" else f"container request {cr['uuid']} ended"
        assert report in done.stderr, done.describe()


@pytest.mark.parametrize("mode", list(MODES))
def test_ctrl_c_cancels_running_requests(mode: str, api, clean_project, env, tmp_path: Path) -> None:
    project = clean_project
    tool = _write(tmp_path, "sleeper.cwl", SLEEPER)
    leader = Background(_arvados_args(project, "e2e-sigint", tmp_path / "out", mode) + [str(tool)], env, tmp_path,
                        "leader")
    try:
        def running_request() -> dict | None:
            crs = _named(project_requests(api, project), "sleeper")
            containers = containers_by_uuid(api, crs)
            return next((cr for cr in crs if containers.get(cr.get("container_uuid") or "", {}).get("state")
                         == "Running"), None)

        cr = poll_until(running_request, lambda cr: cr is not None or leader.proc.poll() is not None, timeout=180,
                      what="the sleeper's container to be Running")
        assert cr is not None, f"the leader exited early:\n{leader.stderr()[-3000:]}"
        leader.proc.send_signal(signal.SIGINT)
        done = leader.wait(timeout=60)
    finally:
        leader.kill()
    assert done.returncode != 0, done.describe()

    def leftovers() -> list[dict]:
        return [c for c in project_requests(api, project) if c["state"] == "Committed" and c["priority"] > 0]

    poll_until(leftovers, lambda left: not left, timeout=10, what="no committed request with priority > 0")
    container = poll_until(lambda: api.containers().get(uuid=cr["container_uuid"]).execute(),
                         lambda c: c["state"] == "Cancelled", timeout=30, what="the container to be Cancelled")
    assert container["priority"] == 0
    assert api.container_requests().get(uuid=cr["uuid"]).execute()["state"] == "Final"


@pytest.mark.parametrize("mode", list(MODES))
def test_restart_reattaches_and_skips_finished_steps(mode: str, api, clean_project, env, tmp_path: Path) -> None:
    project = clean_project
    wf = _write(tmp_path, "two.cwl", TWO_STEPS)
    args = _arvados_args(project, "e2e-restart", tmp_path / "out", mode)
    leader = Background(args + [str(wf)], env, tmp_path, "leader")
    try:
        def progress() -> tuple[list[dict], dict]:
            crs = project_requests(api, project)
            return crs, containers_by_uuid(api, crs)

        def first_final_second_running(state: tuple[list[dict], dict]) -> bool:
            crs, containers = state
            if leader.proc.poll() is not None:
                return True
            first, second = _named(crs, "first"), _named(crs, "second")
            return (len(first) == 1 and first[0]["state"] == "Final" and len(second) == 1
                    and containers.get(second[0].get("container_uuid") or "", {}).get("state") == "Running")

        crs, _ = poll_until(progress, first_final_second_running, timeout=180,
                          what="step one Final and step two Running")
        assert leader.proc.poll() is None, f"the leader exited early:\n{leader.stderr()[-3000:]}"
        leader.proc.kill()  # SIGKILL: no shutdown, step two's request stays Committed
        leader.proc.wait()
    finally:
        leader.kill()
    second = _named(crs, "second")[0]
    assert api.container_requests().get(uuid=second["uuid"]).execute()["state"] == "Committed"

    restart_began = time.time()
    # Another coordination directory, as on another leader host: it is part of the worker command
    # (Toil's --context), so re-attaching must go by the job, not by the exact command string.
    coordination = tmp_path / "coordination-after-restart"
    coordination.mkdir()
    done = run(args + ["--restart", "--coordinationDir", str(coordination), str(wf)], env, tmp_path, timeout=300)
    assert done.returncode == 0, done.describe()
    out = json.loads(done.stdout)["out"]
    assert Path(out["path"]).read_text() == "first-done\nsecond-done\n"

    crs = project_requests(api, project)
    assert len(_named(crs, "first")) == 1, [cr["name"] for cr in crs]  # not run again
    if mode == "workers":
        assert [cr["uuid"] for cr in _named(crs, "second")] == [second["uuid"]]  # re-attached, not resubmitted
    else:
        # The restarted leader submits the step again, and Arvados gives it the container that was
        # still running: the step's work is done once.
        assert {cr["container_uuid"] for cr in _named(crs, "second")} == {second["container_uuid"]}
    assert {cr["state"] for cr in crs if cr["properties"].get("type") != "workflow"} == {"Final"}
    container = api.containers().get(uuid=second["container_uuid"]).execute()
    assert (container["state"], container["exit_code"]) == ("Complete", 0)
    from toil_arvados.timestamps import parse_timestamp

    if mode == "workers" and parse_timestamp(container["finished_at"]) > restart_began:
        # Step two was still running when the restarted leader started: it must have re-attached.
        assert f"to running container request {second['uuid']}" in done.stderr, done.describe()


# -- bad input: one line, non-zero exit, no traceback, no token ------------------------------------

CAT = """cwlVersion: v1.2
class: CommandLineTool
baseCommand: cat
inputs:
  f: {type: File, inputBinding: {position: 1}}
outputs: {}
"""

def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


BAD_TOKEN = "v2/local-gj3su-0123456789abcde/thisisnotavalidsecretatalltoilarvadostest"


@pytest.mark.parametrize("case", ["bad token", "missing token", "unreachable host", "unknown project",
                                  "unknown job store project", "missing worker image", "too many cores",
                                  "invalid CWL", "filter group as project", "missing keep input"])
def test_bad_input_is_one_line_error(case: str, api, cluster, clean_project, env, cluster_env,
                                     tmp_path: Path) -> None:
    project = clean_project
    prefix = project.split("-")[0]
    missing_project = f"{prefix}-j7d0g-zzzzzzzzzzzzzzz"
    tool = _write(tmp_path, "echo.cwl", ECHO)
    store = f"file:{tmp_path / 'js'}"
    extra: list[str] = []
    inputs: list[str] = []  # the workflow's own inputs, after it
    env = dict(env)
    expect: str
    if case == "bad token":
        env["ARVADOS_API_TOKEN"] = BAD_TOKEN
        expect = "ARVADOS_API_TOKEN"
    elif case == "missing token":
        env.pop("ARVADOS_API_TOKEN")
        expect = "ARVADOS_API_TOKEN"
    elif case == "unreachable host":
        port = _closed_port()
        env["ARVADOS_API_HOST"] = f"127.0.0.1:{port}"
        expect = f"127.0.0.1:{port}"
    elif case == "unknown project":
        project = missing_project
        expect = missing_project
    elif case == "unknown job store project":
        store = f"arvados:{missing_project}/e2e-js"
        expect = missing_project
    elif case == "missing worker image":
        extra = ["--arvadosWorkerImage", "toil-arvados/no-such-image:1"]
        expect = "toil-arvados/no-such-image:1"
    elif case == "filter group as project":  # a saved search cannot own requests
        project = api.groups().create(body={"group": {"name": "saved search", "group_class": "filter",
                                                      "owner_uuid": clean_project}},
                                      ensure_unique_name=True).execute()["uuid"]
        expect = f"{project} is a filter group"
    elif case == "missing keep input":  # imported by reference into a Keep job store: it must exist
        tool = _write(tmp_path, "cat.cwl", CAT)
        store = f"arvados:{project}/e2e-missing-input"
        missing = "9" * 32 + "+99"
        job = _write(tmp_path, "job.yml", f"f: {{class: File, location: 'keep:{missing}/missing.txt'}}\n")
        inputs = [str(job)]
        expect = f"no collection {missing}"
    elif case == "invalid CWL":
        tool = _write(tmp_path, "bad.cwl", ECHO + "outputs: []\n")  # a second "outputs" key
        expect = 'duplicate key "outputs"'
    else:
        tool = _write(tmp_path, "big.cwl", BIG)
        extra = ["--maxCores", "1000"]  # past Toil's own local check: the cluster's limit must say no
        expect = "64 cores"
    done = run([TOIL_CWL_RUNNER, "--batchSystem", "arvados", "--arvadosProject", project, "--jobStore", store,
                "--outdir", str(tmp_path / "out"), *extra, str(tool), *inputs], env, tmp_path, timeout=120)
    assert done.returncode != 0, done.describe()
    assert "Traceback" not in done.stderr, done.describe()
    line = last_line(done.stderr)
    assert is_one_line_error(line), done.describe()
    assert expect in line, done.describe()
    for secret in (cluster_env["ARVADOS_API_TOKEN"], cluster_env["ARVADOS_API_TOKEN"].split("/")[-1],
                   BAD_TOKEN, BAD_TOKEN.split("/")[-1]):
        assert secret not in done.stderr and secret not in done.stdout
    if case == "unreachable host":
        assert done.seconds < 30, done.describe()
    if case == "too many cores":
        assert f"largest suitable instance type offers {cluster.cores} cores" in line, done.describe()
    assert project_requests(api, clean_project) == []  # nothing was submitted
