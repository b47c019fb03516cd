"""A running workflow rides out the Arvados API (and Keep) going away and coming back.

The cluster is stopped for ~20 s while a small CWL scatter runs with ``--batchSystem arvados``,
then started again on the same address. The leader (reconciler, event bus, job store) and every
step process must wait it out with backoff and finish the workflow; nothing is submitted twice
(a create whose answer was lost is looked up, not repeated), and no step is run again by Toil.

Its own cluster (the ``own_cluster`` fixture): the session cluster must not be stopped under the
other tests.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from toil_arvados.arvados_client import PROPERTY_SUBMISSION
from toil_arvados.localcluster import control

from e2e_util import admin_client
from toil_cli import TOIL_CWL_RUNNER, Background, containers_by_uuid, poll_until, project_requests, toil_env

OUTAGE_SECONDS = 20  # how long the cluster is down: the thing under test, not a readiness wait

SCATTER = """\
cwlVersion: v1.2
class: Workflow
requirements:
  ScatterFeatureRequirement: {}
inputs:
  words: {type: 'string[]', default: [alpha, beta, gamma]}
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


def test_workflow_rides_out_a_cluster_outage(own_cluster, built_images, tmp_path: Path) -> None:
    from conftest import store_images

    state, cfg = own_cluster
    store_images(cfg, [built_images["worker"]])  # the steps run in the default (worker) image
    api = admin_client(cfg)
    project = api.groups().create(body={"group": {"name": "outage", "group_class": "project"}},
                                  ensure_unique_name=True).execute()["uuid"]
    wf = tmp_path / "scatter.cwl"
    wf.write_text(SCATTER)
    env = toil_env(control.client_env(cfg))
    args = [TOIL_CWL_RUNNER, "--batchSystem", "arvados", "--arvadosProject", project, "--retryCount", "0",
            "--arvadosPollInterval", "2", "--jobStore", f"arvados:{project}/outage",
            "--outdir", str(tmp_path / "out"), str(wf)]
    leader = Background(args, env, tmp_path, "leader")
    try:
        def steps_running() -> bool:
            if leader.proc.poll() is not None:
                return True
            crs = [cr for cr in project_requests(api, project) if cr["properties"].get("toil_step")]
            containers = containers_by_uuid(api, crs)
            return any(c["state"] == "Running" for c in containers.values())

        poll_until(steps_running, bool, timeout=240, what="a scatter step's container running")
        assert leader.proc.poll() is None, f"the leader exited early:\n{leader.stderr()[-3000:]}"

        assert control.down(state) is True
        assert not control.answers(cfg, timeout=1.0)
        time.sleep(OUTAGE_SECONDS)
        assert leader.proc.poll() is None, f"the leader gave up during the outage:\n{leader.stderr()[-3000:]}"
        cfg2 = _up_on_same_port(state, cfg.api_port)
        assert cfg2.api_port == cfg.api_port and cfg2.keep_port == cfg.keep_port

        done = leader.wait(timeout=420)
    finally:
        leader.kill()
    assert done.returncode == 0, done.describe()
    outputs = json.loads(done.stdout)["out"]
    assert sorted(Path(o["path"]).read_text() for o in outputs) == ["alpha-done\n", "beta-done\n", "gamma-done\n"]

    api = admin_client(cfg2)
    crs = project_requests(api, project)
    steps = [cr for cr in crs if cr["properties"].get("toil_step")]
    # One request per scatter element: no create repeated after a lost answer, no step re-run by
    # Toil (--retryCount 0 would have failed the run). Arvados itself may have given a request a
    # new container for one that was running when the cluster stopped: that is its own retry.
    assert len(steps) == 3, [(cr["name"], cr["state"]) for cr in steps]
    submissions = [cr["properties"].get(PROPERTY_SUBMISSION) for cr in crs]
    assert None not in submissions and len(set(submissions)) == len(submissions)
    assert {cr["state"] for cr in steps} == {"Final"}
