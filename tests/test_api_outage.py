"""A running workflow rides out the Arvados API (and Keep) going away and coming back.

The cluster is stopped twice while a small workflow runs with ``--batchSystem arvados`` — a CWL
scatter (native steps) or a Toil Python workflow whose jobs run as worker containers, its script in
a temp dir outside the image — for 20 s, then for 2 min, each time with a step finished and
another running, and started again on the same address. The leader
(reconciler, event bus, Keep job store, the step engine) and the workers must wait it out with backoff and
finish the workflow with the right outputs; nothing is submitted twice (a create whose answer was
lost is looked up, not repeated), no step is run again by Toil (``--retryCount 0``), and a step
that had finished before the outage keeps its one container.

The outage is ``down --keep-containers``: the API server, Keep, the websocket and the dispatcher
stop, and a container running at that moment keeps running, as on a real cluster whose services
go away while its compute nodes do not. The cluster adopts it when it is back (finished meanwhile
or still running) so every step runs in exactly one container.

Its own cluster (the ``own_cluster`` fixture): the session cluster must not be stopped under the
other tests.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from toil_arvados.arvados_client import PROPERTY_SUBMISSION
from toil_arvados.container_request import PROPERTY_JOB_STORE_ID
from toil_arvados.cwl_step_request import PROPERTY_STEP, PROPERTY_STEP_JOB_STORE_ID
from toil_arvados.localcluster import control

from e2e_util import admin_client
from toil_cli import TOIL_CWL_RUNNER, Background, Finished, containers_by_uuid, poll_until, project_requests, toil_env

# Both outages in one run of each workflow (CI time: each run costs a cluster, a leader's start and
# a minute or more of backoff after the cluster is back): a short one, then one of 2 minutes, which
# outlasts the SDK's own retries (~30 s) so only the gateway's patience carries the run.
OUTAGES = (20, 120)

SCATTER = """\
cwlVersion: v1.2
class: Workflow
requirements:
  ScatterFeatureRequirement: {}
inputs:
  words: {type: 'string[]', default: [alpha, beta, gamma, delta]}
outputs:
  out: {type: 'File[]', outputSource: shout/out}
steps:
  shout:
    scatter: word
    in: {word: words}
    out: [out]
    run:
      class: CommandLineTool
      baseCommand: [sh, -c]
      arguments: ['sleep 8; echo $(inputs.word)-done']
      inputs: {word: string}
      stdout: out.txt
      outputs: {out: stdout}
"""

# Files and promises across the outage: children write files to the (Keep) job store, a follow-on
# reads them back. The sleep leaves a window in which a job is running.
PYTHON_WORKFLOW = '''
import sys
import time
from toil.common import Toil
from toil.job import Job

SMALL = dict(memory="100M", cores=1, disk="10M")


def write(job, text):
    time.sleep(5)
    path = job.fileStore.getLocalTempFile()
    with open(path, "w") as f:
        f.write(text)
    return job.fileStore.writeGlobalFile(path)


def combine(job, ids):
    texts = []
    for fid in ids:
        with open(job.fileStore.readGlobalFile(fid)) as f:
            texts.append(f.read())
    return "+".join(texts)


def root(job):
    ids = [job.addChildJobFn(write, f"part{i}", **SMALL).rv() for i in range(2)]
    return job.addFollowOnJobFn(combine, ids, **SMALL).rv()


if __name__ == "__main__":
    options = Job.Runner.getDefaultArgumentParser().parse_args()
    with Toil(options) as toil:
        result = toil.start(Job.wrapJobFn(root, **SMALL))
    print(f"workflow-result {result}")
    sys.exit(0 if result == "part0+part1" else 1)
'''


@dataclass(frozen=True)
class Kind:
    """A kind of workflow: how to start it, which requests are its steps, what it must output."""

    command: Callable[[Path, str], list[str]]
    step_key: str  # the property naming the Toil job a request runs: one request per step
    steps: int
    check_output: Callable[[Finished, Path], None]
    is_step: Callable[[dict], bool]


def _cwl_command(tmp_path: Path, project: str) -> list[str]:
    wf = tmp_path / "scatter.cwl"
    wf.write_text(SCATTER)
    return [TOIL_CWL_RUNNER, "--batchSystem", "arvados", "--arvadosProject", project, "--retryCount", "0",
            "--arvadosPollInterval", "2", "--jobStore", f"arvados:{project}/outage",
            "--outdir", str(tmp_path / "out"), str(wf)]


def _cwl_output(done: Finished, tmp_path: Path) -> None:
    outputs = json.loads(done.stdout)["out"]
    assert sorted(Path(o["path"]).read_text() for o in outputs) == ["alpha-done\n", "beta-done\n", "delta-done\n",
                                                                        "gamma-done\n"]


def _python_command(tmp_path: Path, project: str) -> list[str]:
    # In no image: Toil ships the script's whole directory to the workers through the job store,
    # so it gets one of its own (not tmp_path, which holds the cluster's state).
    script = tmp_path / "workflow" / "outage_wf.py"
    script.parent.mkdir()
    script.write_text(PYTHON_WORKFLOW)
    return [sys.executable, str(script), f"arvados:{project}/outage", "--batchSystem", "arvados",
            "--arvadosProject", project, "--retryCount", "0", "--arvadosPollInterval", "2"]


def _python_output(done: Finished, tmp_path: Path) -> None:
    assert "workflow-result part0+part1" in done.stdout, done.describe()


KINDS = {
    # the scatter's 4 steps, each its own request (native steps): enough that, whatever order the
    # dispatcher runs them in, a step not yet interrupted is running with two done
    "cwl": Kind(_cwl_command, PROPERTY_STEP_JOB_STORE_ID, 4, _cwl_output,
                lambda cr: bool(cr["properties"].get(PROPERTY_STEP))),
    # root, 2 writers, the combining follow-on: each a worker container
    "python": Kind(_python_command, PROPERTY_JOB_STORE_ID, 4, _python_output,
                   lambda cr: bool(cr["properties"].get(PROPERTY_JOB_STORE_ID))),
}


def _up_on_same_port(state: Path, port: int):
    """Start the cluster again on its old address. Until ``up`` can reuse a port at once (lifecycle
    branch), the old server's connections may hold it in TIME_WAIT for about a minute."""
    deadline = time.monotonic() + 75
    while True:
        try:
            return control.up(state, port=port)
        except control.ClusterError as e:
            if time.monotonic() > deadline:
                pytest.xfail(f"needs stable address from lifecycle branch: {e}")
            time.sleep(1)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_workflow_rides_out_cluster_outages(own_cluster, built_images, tmp_path: Path, kind: str) -> None:
    from conftest import store_images

    spec = KINDS[kind]
    state, cfg = own_cluster
    store_images(cfg, [built_images["worker"]])  # steps and Toil workers run in the worker image
    api = admin_client(cfg)
    project = api.groups().create(body={"group": {"name": "outage", "group_class": "project"}},
                                  ensure_unique_name=True).execute()["uuid"]
    leader = Background(spec.command(tmp_path, project), toil_env(control.client_env(cfg)), tmp_path, "leader")
    finished: dict[str, tuple[str, int]] = {}  # request -> (container, count) of steps done before an outage
    try:
        def steps() -> list[dict]:
            return [cr for cr in project_requests(api, project) if spec.is_step(cr)]

        def progress() -> tuple[int, int] | None:
            """(steps finished, steps running); None once the leader exited."""
            if leader.proc.poll() is not None:
                return None
            crs = steps()
            containers = containers_by_uuid(api, crs)
            states = [(containers[cr["container_uuid"]]["state"], cr["container_count"])
                      for cr in crs if cr.get("container_uuid") in containers]
            return (sum(state == "Complete" for state, _ in states),
                    sum(state == "Running" and count == 1 for state, count in states))

        for n, outage_seconds in enumerate(OUTAGES, start=1):
            # Stop the cluster with n steps finished and another one running.
            poll_until(progress, lambda p: p is None or (p[0] >= n and p[1] > 0), timeout=300,
                       what=f"{n} step(s) finished and another running")
            assert leader.proc.poll() is None, f"the leader exited early:\n{leader.stderr()[-3000:]}"
            finished.update({cr["uuid"]: (cr["container_uuid"], cr["container_count"])
                             for cr in steps() if cr["state"] == "Final"})

            assert control.down(state, keep_containers=True) is True
            assert not control.answers(cfg, timeout=1.0)
            time.sleep(outage_seconds)  # the outage itself: the thing under test, not a readiness wait
            assert leader.proc.poll() is None, \
                f"the leader gave up during the {outage_seconds} s outage:\n{leader.stderr()[-3000:]}"
            again = _up_on_same_port(state, cfg.api_port)
            assert (again.api_port, again.keep_port) == (cfg.api_port, cfg.keep_port)
            cfg, api = again, admin_client(again)

        done = leader.wait(timeout=600)
    finally:
        leader.kill()
    assert done.returncode == 0, done.describe()
    spec.check_output(done, tmp_path)

    crs = project_requests(api, project)
    step_crs = [cr for cr in crs if spec.is_step(cr)]
    # One request per step: no create repeated after a lost answer, no step re-run by Toil
    # (--retryCount 0 would have failed the run).
    per_step = [cr["properties"][spec.step_key] for cr in step_crs]
    assert len(step_crs) == spec.steps and len(set(per_step)) == spec.steps, \
        [(cr["name"], cr["state"]) for cr in step_crs]
    submissions = [cr["properties"].get(PROPERTY_SUBMISSION) for cr in crs]
    assert None not in submissions and len(set(submissions)) == len(submissions)
    assert {cr["state"] for cr in step_crs} == {"Final"}
    # No container created twice for a step: those running at an outage outlived it, and were
    # adopted and finished by the cluster when it was back.
    assert [cr["container_count"] for cr in step_crs] == [1] * spec.steps, \
        [(cr["name"], cr["container_count"]) for cr in step_crs]
    assert {c["state"] for c in containers_by_uuid(api, step_crs).values()} == {"Complete"}
    # A step done before an outage was not run again: same request, same container, no new one.
    assert len(finished) >= len(OUTAGES), finished
    now = {cr["uuid"]: cr for cr in step_crs}
    for uuid, seen in finished.items():
        assert (now[uuid]["container_uuid"], now[uuid]["container_count"]) == seen, now[uuid]
