"""arvados-cwl-runner 3.2.1, Arvados' own CWL runner, as an independent client of the local cluster.

Why: a-c-r exercises the API the way a real Arvados user's tooling does (image lookup through
``docker_image_repo+tag`` links, collections, container requests created Uncommitted and then
committed, secret mounts, container logs parsed line by line, output collections saved into a
project, workflows records), so a run that ends with the right output is strong evidence of
fidelity. It pins its own cwltool, so it lives in a separate virtualenv (``tests/acr_venv.py``).

Each ``--local`` run takes ~15 s: a-c-r polls its container requests every 12 s.
"""
from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from acr_venv import ACR_VERSION, ensure_venv  # noqa: E402

RUNNER_IMAGE = f"arvados/jobs:{ACR_VERSION}"  # a-c-r's image for its runner and for tools without one
TOOL_IMAGE = "debian:stable-slim"
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z ")
KEEP_LOCATION = re.compile(r"^keep:([0-9a-f]{32}\+\d+)/(.+)$")

ECHO_WORKFLOW = """\
cwlVersion: v1.2
class: Workflow
inputs:
  message: string
outputs:
  out:
    type: File
    outputSource: echo/out
steps:
  echo:
    in:
      message: message
    out: [out]
    run:
      class: CommandLineTool
      baseCommand: echo
      inputs:
        message:
          type: string
          inputBinding: {position: 1}
      outputs:
        out:
          type: stdout
      stdout: out.txt
"""

# A File input uploaded from the client, a secret (cwltool:Secrets -> secret_mounts) and an
# explicit DockerRequirement image.
SECRET_TOOL = """\
cwlVersion: v1.2
class: CommandLineTool
$namespaces:
  cwltool: "http://commonwl.org/cwltool#"
hints:
  cwltool:Secrets:
    secrets: [secret]
requirements:
  DockerRequirement:
    dockerPull: debian:stable-slim
  InitialWorkDirRequirement:
    listing:
      - entryname: secret.txt
        entry: $(inputs.secret)
baseCommand: [sh, -c, 'cat "$0"; wc -c < secret.txt']
inputs:
  infile:
    type: File
    inputBinding: {position: 1}
  secret: string
outputs:
  out:
    type: stdout
stdout: cat.txt
"""

FAILING_TOOL = """\
cwlVersion: v1.2
class: CommandLineTool
baseCommand: [sh, -c, 'echo boom-on-stderr >&2; exit 3']
inputs: []
outputs: []
"""


@pytest.fixture(scope="session")
def acr() -> Path:
    """The arvados-cwl-runner executable (its venv is created on first use, then reused)."""
    return ensure_venv()


@pytest.fixture(scope="session")
def acr_images(api: Any, built_images: dict[str, Any]) -> dict[str, str]:
    """The images a-c-r looks up, in Keep: name -> PDH.  No registry is reachable here, so
    ``arvados/jobs`` is the worker image (Debian, Python, arvados-python-client 3.2.1) stored under
    that name too, as an administrator would mirror an image."""
    from toil_arvados.images.keep import store_image

    from conftest import TEST_IMAGE

    worker, tool = built_images["worker"], built_images[TEST_IMAGE]
    return {RUNNER_IMAGE: store_image(api, worker.tarball, worker.image_id, (*worker.names, RUNNER_IMAGE),
                                      properties=worker.properties),
            TOOL_IMAGE: store_image(api, tool.tarball, tool.image_id, tool.names, properties=tool.properties)}


def run_acr(acr: Path, env: dict[str, str], cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a-c-r with the cluster's credentials in its environment (never on its command line)."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    full_env.update(env)
    full_env["HOME"] = str(cwd)  # a-c-r's caches stay in the test's temp dir
    return subprocess.run([str(acr), *args], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


def explain(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-6000:]}"


def read_keep_file(api: Any, location: str) -> bytes:
    import arvados.collection

    m = KEEP_LOCATION.match(location)
    assert m, f"not a keep: location: {location}"
    with arvados.collection.CollectionReader(m.group(1), api_client=api).open(m.group(2), "rb") as f:
        return f.read()


def cancel(api: Any, cr_uuid: str) -> None:
    """Priority 0 for a request that may already have ended by itself (then it is left alone)."""
    import arvados.errors

    if api.container_requests().get(uuid=cr_uuid).execute()["state"] != "Committed":
        return
    try:
        api.container_requests().update(uuid=cr_uuid, body={"container_request": {"priority": 0}}).execute()
    except arvados.errors.ApiError:
        if api.container_requests().get(uuid=cr_uuid).execute()["state"] == "Committed":
            raise


def project_items(api: Any, project: str, kind: str) -> list[dict]:
    return api.groups().contents(uuid=project, filters=[["uuid", "is_a", kind]], limit=1000).execute()["items"]


def test_local_run_saves_right_output_in_project(acr: Path, cluster_env: dict[str, str], api: Any,
                                                 project: str, acr_images: dict[str, str],
                                                 tmp_path: Path) -> None:
    message = f"hello from arvados-cwl-runner {time.time_ns()}"
    (tmp_path / "wf.cwl").write_text(ECHO_WORKFLOW)
    (tmp_path / "job.yml").write_text(json.dumps({"message": message}))
    proc = run_acr(acr, cluster_env, tmp_path, "--local", "--api=containers", "--disable-reuse",
                   f"--project-uuid={project}", "wf.cwl", "job.yml")
    assert proc.returncode == 0, explain(proc)

    # The output object printed on stdout points into Keep, at a file with the right content.
    out = json.loads(proc.stdout)["out"]
    assert out["class"] == "File" and out["basename"] == "out.txt" and out["size"] == len(message) + 1
    assert read_keep_file(api, out["location"]) == (message + "\n").encode()

    # The final output collection is saved in the project and holds that file.
    pdh = KEEP_LOCATION.match(out["location"]).group(1)
    saved = [c for c in project_items(api, project, "arvados#collection")
             if c["portable_data_hash"] == pdh and c["name"].startswith("Output from workflow wf.cwl")]
    assert len(saved) == 1, proc.stderr[-3000:]
    assert f'Final output collection {pdh} "Output from workflow wf.cwl' in proc.stderr

    # The step ran as one container request in the project, with a-c-r's default image resolved to
    # the registered stand-in, and its own output and log collections next to it.
    (step,) = project_items(api, project, "arvados#containerRequest")
    assert (step["name"], step["state"], step["use_existing"]) == ("echo", "Final", False)
    assert step["command"] == ["echo", message]
    assert step["container_image"] == acr_images[RUNNER_IMAGE]
    assert step["properties"]["cwl_output"]["out"]["basename"] == "out.txt"
    assert step["runtime_constraints"]["vcpus"] >= 1 and "API" in step["runtime_constraints"]
    c = api.containers().get(uuid=step["container_uuid"]).execute()
    assert (c["state"], c["exit_code"]) == ("Complete", 0)
    assert read_keep_file(api, f"keep:{c['output']}/out.txt") == (message + "\n").encode()


def test_file_input_secret_and_docker_requirement(acr: Path, cluster_env: dict[str, str], api: Any,
                                                  project: str, acr_images: dict[str, str],
                                                  tmp_path: Path, cluster) -> None:
    secret = f"s3cr3t-{time.time_ns()}"
    (tmp_path / "tool.cwl").write_text(SECRET_TOOL)
    (tmp_path / "in.txt").write_text("file content\n")
    (tmp_path / "job.yml").write_text(json.dumps({"infile": {"class": "File", "path": "in.txt"},
                                                  "secret": secret}))
    proc = run_acr(acr, cluster_env, tmp_path, "--local", "--api=containers", "--disable-reuse",
                   f"--project-uuid={project}", "tool.cwl", "job.yml")
    assert proc.returncode == 0, explain(proc)
    out = json.loads(proc.stdout)["out"]
    assert read_keep_file(api, out["location"]) == f"file content\n{len(secret)}\n".encode()

    (step,) = project_items(api, project, "arvados#containerRequest")
    assert step["container_image"] == acr_images[TOOL_IMAGE]
    # The uploaded input is mounted read-only from Keep by portable data hash.
    keep_mounts = [m for p, m in step["mounts"].items() if p.startswith("/keep/")]
    assert keep_mounts and all(m["kind"] == "collection" and m["portable_data_hash"] for m in keep_mounts)
    # The secret went through secret_mounts: never shown, and not kept once the request is Final.
    assert secret not in json.dumps(step) and "secret_mounts" not in step
    # No stored object (requests, containers, their event log records) holds it any more.
    # (Freed SQLite pages may still, as dead rows in Arvados' PostgreSQL do until vacuumed.)
    db = sqlite3.connect(f"file:{Path(cluster.state_dir) / 'arvados.sqlite3'}?mode=ro", uri=True)
    try:
        holders = [uuid for uuid, data in db.execute("SELECT uuid, data FROM objects") if secret in data]
    finally:
        db.close()
    assert holders == [], f"the secret is still stored in {holders}"


def test_failed_step_shows_its_timestamped_stderr(acr: Path, cluster_env: dict[str, str], project: str,
                                                  acr_images: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "fail.cwl").write_text(FAILING_TOOL)
    proc = run_acr(acr, cluster_env, tmp_path, "--local", "--disable-reuse", f"--project-uuid={project}",
                   "fail.cwl")
    assert proc.returncode == 1, explain(proc)
    assert "permanentFail" in proc.stderr
    # a-c-r parses the log's per-line timestamps to merge stdout/stderr/crunch-run into one tail.
    assert re.search(r"error log:\s+\S+Z stderr boom-on-stderr", proc.stderr), explain(proc)
    assert "AttributeError" not in proc.stderr


def test_submit_no_wait_creates_runner_request(acr: Path, cluster_env: dict[str, str], api: Any,
                                               project: str, acr_images: dict[str, str],
                                               tmp_path: Path) -> None:
    """The submission half of a-c-r's default mode: a runner container request on arvados/jobs.

    The runner itself is then cancelled: on this cluster's namespace runtime the image is not run,
    so the runner would need arvados-cwl-runner on the host's default PATH (see
    docs/arvados-cwl-runner.md), which a test must not install system-wide.
    """
    (tmp_path / "wf.cwl").write_text(ECHO_WORKFLOW)
    (tmp_path / "job.yml").write_text(json.dumps({"message": "submitted"}))
    proc = run_acr(acr, cluster_env, tmp_path, "--submit", "--no-wait", "--api=containers",
                   f"--project-uuid={project}", "wf.cwl", "job.yml")
    assert proc.returncode == 0, explain(proc)
    cr_uuid = proc.stdout.strip()
    cr = api.container_requests().get(uuid=cr_uuid).execute()
    try:
        assert cr["owner_uuid"] == project and cr["command"][0] == "arvados-cwl-runner"
        assert cr["container_image"] == acr_images[RUNNER_IMAGE]
        assert cr["runtime_constraints"]["API"] is True
        assert cr["scheduling_parameters"]["supervisor"] is True
        assert cr["mounts"]["/var/lib/cwl/cwl.input.json"]["content"] == {"message": "submitted"}
        assert cr["mounts"]["/var/lib/cwl/workflow.json"]["kind"] == "json"
    finally:
        cancel(api, cr_uuid)
    deadline = time.monotonic() + 60
    while api.container_requests().get(uuid=cr_uuid).execute()["state"] != "Final":
        assert time.monotonic() < deadline, f"{cr_uuid} was not Final 60 s after cancelling it"
        time.sleep(0.05)


SELF_UPDATING = """
import arvados, arvados.collection, arvados.errors
api = arvados.api("v1")
me = api.containers().current().execute()
api.containers().update(uuid=me["uuid"], body={"container": {
    "runtime_status": {"activity": "self-reporting"}, "progress": 0.5}}).execute()
coll = arvados.collection.Collection(api_client=api)
with coll.open("set-by-container.txt", "w") as f:
    f.write("mine")
coll.save_new(name="output made by " + me["uuid"])
api.containers().update(uuid=me["uuid"], body={"container": {"output": coll.portable_data_hash()}}).execute()
try:
    api.containers().update(uuid=me["uuid"], body={"container": {"priority": 1000}}).execute()
    print("priority change accepted")
except arvados.errors.ApiError as e:
    print("priority change refused", e.resp.status)
"""


def test_running_container_updates_itself_like_the_acr_runner(api: Any, project: str,
                                                              acr_images: dict[str, str]) -> None:
    """What a-c-r's runner does from inside its container: report runtime_status, set its output.

    As on Arvados, the container's own token may change its progress attributes while it runs
    (not e.g. its priority), and the dispatcher then keeps that output, as crunch-run does.
    """
    body = {"name": "self-updating", "state": "Committed", "priority": 500, "owner_uuid": project,
            "command": ["python3", "-c", SELF_UPDATING], "container_image": RUNNER_IMAGE,
            "output_path": "/var/spool/cwl", "cwd": "/var/spool/cwl", "environment": {"HOME": "/tmp"},
            "runtime_constraints": {"vcpus": 1, "ram": 256 << 20, "API": True},
            "mounts": {"/var/spool/cwl": {"kind": "tmp", "capacity": 1 << 20},
                       "/tmp": {"kind": "tmp", "capacity": 64 << 20}}}
    cr = api.container_requests().create(body={"container_request": body}).execute()
    deadline = time.monotonic() + 120
    while cr["state"] != "Final":
        assert time.monotonic() < deadline, f"{cr['uuid']} not Final within 120 s"
        time.sleep(0.05)
        cr = api.container_requests().get(uuid=cr["uuid"]).execute()
    c = api.containers().get(uuid=cr["container_uuid"]).execute()
    import arvados.collection

    logs = arvados.collection.CollectionReader(c["log"], api_client=api)
    stderr = logs.open("stderr.txt").read() if "stderr.txt" in logs else ""
    assert (c["state"], c["exit_code"]) == ("Complete", 0), stderr
    assert c["runtime_status"] == {"activity": "self-reporting"}
    output = arvados.collection.CollectionReader(c["output"], api_client=api)
    assert list(output.keys()) == ["set-by-container.txt"]
    assert cr["output_uuid"] and read_keep_file(api, f"keep:{c['output']}/set-by-container.txt") == b"mine"
    stdout = [STAMP.sub("", line) for line in logs.open("stdout.txt").read().splitlines()]
    assert stdout == ["priority change refused 422"], stderr

