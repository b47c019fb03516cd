"""End to end on the local cluster: real ``toil-cwl-runner`` and a real Toil Python workflow, run
as the user runs them, with ``--batchSystem arvados`` and the Keep job store.

Why each check: identical outputs to ``single_machine`` prove the plugin changes where jobs run,
not what they compute; counting container requests proves every tool run went to Arvados (none ran
on the leader by mistake) and carries the properties a restarted leader needs to find its work.
"""
from __future__ import annotations

import json
import re
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from toil_cli import (
    TOIL_CWL_RUNNER,
    Background,
    containers_by_uuid,
    project_requests,
    run,
    upload_text,
    workflow_id,
)

DEMO = Path(__file__).resolve().parent.parent / "toil_arvados" / "demo"


def _expected_report(words: list[str], header: bytes) -> bytes:
    # shout: WORD + newline; measure: "<word> <bytes>"; merge: header then every line, in order.
    return header + "".join(f"{w} {len(w) + 1}\n" for w in words).encode()


def test_demo_workflow_same_outputs_as_single_machine(api, clean_project, env, tmp_path: Path) -> None:
    project = clean_project
    words = yaml.safe_load((DEMO / "inputs.yml").read_text())["words"]
    assert len(words) == 20
    header_bytes = (DEMO / "header.txt").read_bytes()
    header = upload_text(api, project, "header.txt", header_bytes, "e2e demo header")
    inputs = tmp_path / "inputs.json"
    inputs.write_text(json.dumps({"words": words, "header": {"class": "File", "location": header}}))

    # Both runs at once: the arvados leader mostly waits on the cluster, so the local run fits in.
    # No file cache for the local run: its free-space bookkeeping counts each CWL job's default 2 GiB
    # against the disk the cluster shares, and fails on a small CI disk (CacheUnbalancedError).
    local = Background([TOIL_CWL_RUNNER, "--batchSystem", "single_machine", "--disableCaching",
                        "--jobStore", f"file:{tmp_path / 'js-local'}",
                        "--outdir", str(tmp_path / "out-local"), str(DEMO / "workflow.cwl"), str(inputs)],
                       env, tmp_path, "local")
    try:
        remote = run([TOIL_CWL_RUNNER, "--batchSystem", "arvados", "--arvadosProject", project,
                      "--jobStore", f"arvados:{project}/e2e-demo", "--retryCount", "0",
                      "--outdir", str(tmp_path / "out-arvados"), str(DEMO / "workflow.cwl"), str(inputs)],
                     env, tmp_path, timeout=900)
        local_run = local.wait(timeout=600)
    finally:
        local.kill()
    assert local_run.returncode == 0, local_run.describe()
    assert remote.returncode == 0, remote.describe()
    assert "Traceback" not in remote.stderr, remote.describe()

    reports = {}
    for name, finished in (("local", local_run), ("arvados", remote)):
        out = json.loads(finished.stdout)
        reports[name] = Path(out["report"]["path"]).read_bytes()
        assert out["report"]["basename"] == "report.txt"
    assert reports["arvados"] == reports["local"]
    assert reports["arvados"] == _expected_report(words, header_bytes)

    # Every CommandLineTool run (20 shout + 20 measure + 1 merge) was its own container request,
    # running the tool's own command (not a Toil worker), under one request standing for the run.
    crs = project_requests(api, project)
    wf = workflow_id(remote.stderr)
    parents = [cr for cr in crs if cr["properties"].get("type") == "workflow"]
    assert len(parents) == 1 and parents[0]["properties"]["toil_workflow_id"] == wf, parents
    steps = [cr for cr in crs if "toil_step" in cr["properties"]]
    assert len(crs) == len(steps) + 1
    names = sorted(cr["name"] for cr in steps)
    assert len(steps) == 41, names
    for step, count in (("shout", 20), ("measure", 20), ("merge", 1)):
        assert sum(1 for n in names if f".{step}." in n or n.endswith(f".{step}")) == count, (step, names)
    assert {cr["properties"]["toil_workflow_id"] for cr in steps} == {wf}
    assert {cr["properties"]["toil_parent_request"] for cr in steps} == {parents[0]["uuid"]}
    assert not [cr["command"] for cr in steps if "toil_arvados.worker" in " ".join(cr["command"])]
    job_ids = [cr["properties"].get("toil_step_job_store_id") for cr in steps]
    assert all(job_ids) and len(set(job_ids)) == 41, job_ids
    assert {cr["state"] for cr in steps} == {"Final"}
    containers = containers_by_uuid(api, steps)
    assert [(c["state"], c["exit_code"]) for c in containers.values()] == [("Complete", 0)] * 41


FANOUT = textwrap.dedent('''
    """A Toil workflow of 52 jobs: a root fans out N children that each write a file to the job
    store; a follow-on reads every file back and checks its content."""
    import sys

    from toil.common import Toil
    from toil.job import Job

    N = 50
    SMALL = dict(memory="100M", cores=1, disk="10M")


    def child(job, i):
        path = job.fileStore.getLocalTempFile()
        with open(path, "w") as f:
            f.write(f"payload {i}\\n" * (i + 1))
        return job.fileStore.writeGlobalFile(path)


    def check(job, ids):
        assert len(ids) == N, len(ids)
        for i, fid in enumerate(ids):
            with open(job.fileStore.readGlobalFile(fid)) as f:
                text = f.read()
            assert text == f"payload {i}\\n" * (i + 1), (i, text[:40])
        job.log(f"fanout-check-ok {len(ids)} files")
        return len(ids)


    def root(job):
        ids = [job.addChildJobFn(child, i, **SMALL).rv() for i in range(N)]
        return job.addFollowOnJobFn(check, ids, **SMALL).rv()


    if __name__ == "__main__":
        options = Job.Runner.getDefaultArgumentParser().parse_args()
        with Toil(options) as toil:
            result = toil.start(Job.wrapJobFn(root, **SMALL))
        print(f"fanout-result {result}")
        sys.exit(0 if result == N else 1)
''')


def test_python_workflow_of_52_jobs_passes_files(api, clean_project, env, tmp_path) -> None:
    project = clean_project
    # The script lives only here, on the leader: Toil ships it to the workers (auto-deployment).
    script = tmp_path / "fanout.py"
    script.write_text(FANOUT)
    done = run([sys.executable, str(script), f"arvados:{project}/e2e-fanout", "--batchSystem", "arvados",
                "--arvadosProject", project, "--retryCount", "0", "--logInfo"], env, tmp_path, timeout=900)
    assert done.returncode == 0, done.describe()
    assert "fanout-result 50" in done.stdout, done.describe()
    assert re.search(r"fanout-check-ok 50 files", done.stderr), done.describe()
    crs = project_requests(api, project)
    assert len(crs) == 52, [cr["name"] for cr in crs]  # root + 50 children + follow-on, none retried
    containers = containers_by_uuid(api, crs)
    assert len(containers) == 52
    assert all(c["state"] == "Complete" and c["exit_code"] == 0 for c in containers.values())


def test_long_batched_list_is_a_list_not_a_create(api, clean_project) -> None:
    """The batch system lists its in-flight requests in one call (``["uuid", "in", [...]]``); past
    ~50 uuids the SDK sends it as ``POST`` + ``X-Http-Method-Override: GET``, which must stay a list."""
    me = api.users().current().execute()["uuid"]

    def uncommitted() -> int:
        return api.container_requests().list(filters=[["owner_uuid", "=", me], ["state", "=", "Uncommitted"]],
                                             limit=0, count="exact").execute()["items_available"]

    before = uncommitted()
    uuids = [f"{clean_project[:5]}-xvhdp-{i:015d}" for i in range(120)]
    page = api.container_requests().list(filters=[["uuid", "in", uuids]], select=["uuid"]).execute()
    assert page["items"] == []
    containers = api.containers().list(filters=[["uuid", "in", [u.replace("xvhdp", "dz642") for u in uuids]]]).execute()
    assert containers["items"] == []
    assert uncommitted() == before  # no request was created by a "list"
