"""Placement and retries of native CWL steps on the local cluster: each Arvados hint and option
reaches the container request the cluster received (read back through the SDK); bad values stop
the run in one line before anything is submitted; a step out of memory is retried with more RAM.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from toil_cli import TOIL_CWL_RUNNER, containers_by_uuid, is_one_line_error, last_line, project_requests, run

CWL = Path(__file__).resolve().parent / "cwl"
MIB = 1 << 20


def _run(project: str, env, where: Path, store: str, *args: str, timeout: float = 300):
    return run([TOIL_CWL_RUNNER, "--batchSystem", "arvados", "--arvadosProject", project,
                "--arvadosDefaultImage", "debian:stable-slim", "--jobStore", f"arvados:{project}/{store}",
                "--outdir", str(where / store), *args], env, where, timeout=timeout)


def _steps(api, project: str) -> dict[str, list[dict]]:
    """The project's step requests by the tool they ran, oldest first."""
    out: dict[str, list[dict]] = {}
    for cr in sorted(project_requests(api, project), key=lambda cr: cr["created_at"]):
        if "toil_step" in cr["properties"]:
            step = cr["properties"]["toil_step"]  # e.g. placement.cwl.hinted._:<uuid of the embedded tool>
            out.setdefault(step.split("._:")[0].rsplit(".", 1)[-1], []).append(cr)
    return out


def test_hints_and_options_reach_the_request_body(api, clean_project, env, tmp_path: Path) -> None:
    done = _run(clean_project, env, tmp_path, "placement", "--retryCount", "0",
                "--arvadosPartition", "cpu,big", "--arvadosIntermediateStorageClasses", "archive",
                "--defaultWalltime", "600", str(CWL / "placement.cwl"))
    assert done.returncode == 0, done.describe()
    assert "Unknown hint" not in done.stderr
    steps = _steps(api, clean_project)
    assert set(steps) == {"hinted", "plain"}, {cr[0]["properties"]["toil_step"] for cr in steps.values()}
    (hinted,), (plain,) = steps["hinted"], steps["plain"]
    # the tool's own hints
    assert hinted["scheduling_parameters"]["partitions"] == ["fast-nodes"]
    assert hinted["scheduling_parameters"]["max_run_time"] == 100  # ToolTimeLimit wins over --defaultWalltime
    assert hinted["output_storage_classes"] == ["default"]
    assert hinted["runtime_constraints"]["keep_cache_ram"] == 300 * MIB
    assert hinted["runtime_constraints"]["API"] is True
    assert hinted["use_existing"] is False
    assert hinted["properties"]["sample"] == "sample-1" and hinted["properties"]["pipeline"] == "placement-test"
    # the options, for a tool that says nothing
    assert plain["scheduling_parameters"]["partitions"] == ["cpu", "big"]
    assert plain["scheduling_parameters"]["max_run_time"] == 600
    assert plain["output_storage_classes"] == ["archive"]
    assert plain["runtime_constraints"]["API"] is False and plain["use_existing"] is True
    output = api.collections().get(uuid=plain["output_uuid"]).execute()
    assert output["storage_classes_desired"] == ["archive"]  # Arvados saves the output so


@pytest.mark.parametrize("args, message", [
    (["--arvadosIntermediateStorageClasses", "cold"], "--arvadosIntermediateStorageClasses: the cluster has no storage class 'cold'"),
    (["--arvadosPartition", "a b"], "--arvadosPartition: 'a b' is not a valid name"),
])
def test_bad_options_are_one_line_errors_before_anything_runs(api, clean_project, env, tmp_path: Path,
                                                              args: list[str], message: str) -> None:
    done = _run(clean_project, env, tmp_path, "badopt", *args, str(CWL / "placement.cwl"), timeout=120)
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.describe()
    line = last_line(done.stderr)
    assert is_one_line_error(line) and message in line, done.describe()
    assert [cr for cr in project_requests(api, clean_project) if "toil_step" in cr["properties"]] == []


@pytest.mark.parametrize("old, new, message", [
    ("intermediateStorageClass: default", "intermediateStorageClass: cold",
     "arv:OutputStorageClass intermediateStorageClass: the cluster has no storage class 'cold'"),
    ("partition: [fast-nodes]", "partition: ['fast,nodes']", "'fast,nodes' is not a valid name"),
    ("keep_cache: 300", "keep_cache: -1", "keep_cache must be a positive number of MiB"),
    ("keep_cache: 300", "keep_cache: lots", "keep_cache"),
])
def test_bad_hint_values_are_one_line_errors_before_anything_is_submitted(api, clean_project, env, tmp_path: Path,
                                                                          old: str, new: str, message: str) -> None:
    wf = tmp_path / "bad.cwl"
    wf.write_text((CWL / "placement.cwl").read_text().replace(old, new))
    done = _run(clean_project, env, tmp_path, "badhint", str(wf), timeout=120)
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.describe()
    assert message in done.stderr, done.describe()
    assert project_requests(api, clean_project) == []  # not even the run's record


def _memory_run(api, project: str, env, where: Path, tool: str | Path, *args: str) -> tuple[list[dict], str]:
    done = _run(project, env, where, "oom", *args, str(CWL / tool), timeout=400)
    assert done.returncode == 0, done.describe()
    out = json.loads(done.stdout)
    (requests,) = _steps(api, project).values()
    assert len(requests) > 1, done.describe()
    return requests, Path(out["length"]["path"]).read_text()


def test_a_step_out_of_memory_is_retried_with_the_hints_multiplier(api, clean_project, env, tmp_path: Path) -> None:
    requests, length = _memory_run(api, clean_project, env, tmp_path, "out_of_memory.cwl", "--retryCount", "0")
    assert length == "60000000\n"
    assert [cr["runtime_constraints"]["ram"] for cr in requests] == [64 * MIB, 256 * MIB]
    first, retry = requests
    containers = containers_by_uuid(api, requests)
    assert containers[first["container_uuid"]]["exit_code"] == 137
    assert first["properties"]["arv:failed_container_resubmitted"] == retry["uuid"]
    assert retry["properties"]["toil_memory_retry"] == 1


def test_double_mem_doubles_a_steps_ram_once_per_allowed_retry(api, clean_project, env, tmp_path: Path) -> None:
    requests, length = _memory_run(api, clean_project, env, tmp_path, "out_of_memory_plain.cwl",
                                   "--doubleMem", "true", "--retryCount", "3")
    assert length == "100000000\n"
    # about 200 MB: 64 and 128 MiB are too little, 256 MiB is enough
    assert [cr["runtime_constraints"]["ram"] for cr in requests] == [64 * MIB, 128 * MIB, 256 * MIB]
    containers = containers_by_uuid(api, requests)
    assert [containers[cr["container_uuid"]]["exit_code"] for cr in requests] == [137, 137, 0]
    assert [cr["properties"].get("toil_memory_retry") for cr in requests] == [None, 1, 2]


def test_memory_retries_stop_at_the_allowed_number(api, clean_project, env, tmp_path: Path) -> None:
    tool = tmp_path / "too_big.cwl"  # 1.5 x 64 MiB cannot hold 100 MB either: one retry, then the step fails
    tool.write_text((CWL / "out_of_memory.cwl").read_text().replace("60000000", "100000000")
                    .replace("memoryRetryMultiplier: 4", "memoryRetryMultiplier: 1.5"))
    done = _run(clean_project, env, tmp_path, "oom", "--retryCount", "0", str(tool), timeout=300)
    assert done.returncode != 0, done.describe()
    (requests,) = _steps(api, clean_project).values()
    assert [cr["runtime_constraints"]["ram"] for cr in requests] == [64 * MIB, 96 * MIB]


def test_without_a_hint_or_double_mem_a_step_out_of_memory_fails(api, clean_project, env, tmp_path: Path) -> None:
    done = _run(clean_project, env, tmp_path, "oom", "--retryCount", "0", str(CWL / "out_of_memory_plain.cwl"),
                timeout=300)
    assert done.returncode != 0, done.describe()
    (requests,) = _steps(api, clean_project).values()
    assert len(requests) == 1 and requests[0]["runtime_constraints"]["ram"] == 64 * MIB


def _max_in_flight(api, requests: list[dict]) -> int:
    """The most requests that were in flight at once, from the server's timestamps: a request is
    in flight from its creation until its container finished."""
    containers = containers_by_uuid(api, requests)
    events = []
    for cr in requests:
        finished = containers[cr["container_uuid"]]["finished_at"]
        events += [(cr["created_at"], 1), (finished, -1)]
    most = now = 0
    for _, change in sorted(events, key=lambda e: (e[0], e[1])):  # an end before a start at the same time
        now += change
        most = max(most, now)
    return most


@pytest.mark.parametrize("mode, width", [("native steps", 6), ("worker containers", 4)])
def test_max_jobs_bounds_container_requests_in_flight(api, clean_project, env, tmp_path: Path,
                                                      mode: str, width: int) -> None:
    import secrets

    inputs = tmp_path / "words.json"
    inputs.write_text(json.dumps({"words": [f"w{i}-{secrets.token_hex(3)}" for i in range(width)]}))
    extra = ["--noArvadosNativeSteps"] if mode == "worker containers" else []
    done = _run(clean_project, env, tmp_path, "maxjobs", "--retryCount", "0", "--maxJobs", "2", *extra,
                str(CWL / "scatter_sleep.cwl"), str(inputs), timeout=600)
    assert done.returncode == 0, done.describe()
    requests = [cr for cr in project_requests(api, clean_project) if cr["state"] == "Final"]
    assert len(requests) >= width
    assert _max_in_flight(api, requests) == 2


@pytest.fixture(scope="module")
def spot_cluster(tmp_path_factory: pytest.TempPathFactory, built_images):
    """A cluster whose InstanceTypes include preemptible ones (Arvados refuses preemptible
    requests elsewhere), with the worker and Debian images; yields (SDK client, environment)."""
    import arvados

    from conftest import TEST_IMAGE, store_images
    from toil_arvados.localcluster import control
    from toil_cli import toil_env

    state = tmp_path_factory.mktemp("spot-cluster")
    cfg = control.up(state, cores=2, ram=2 << 30, preemptible_instances=True)
    try:
        store_images(cfg, [built_images["worker"], built_images[TEST_IMAGE]])
        env = toil_env(control.client_env(cfg))
        yield arvados.api("v1", host=cfg.api_host, token=cfg.root_token, insecure=True, num_retries=2), env
    finally:
        control.down(state)


def test_default_preemptible_applies_to_steps_that_do_not_choose(spot_cluster, tmp_path: Path) -> None:
    api, env = spot_cluster
    project = api.groups().create(body={"group": {"name": "spot", "group_class": "project"}},
                                  ensure_unique_name=True).execute()["uuid"]
    done = _run(project, env, tmp_path, "spot", "--retryCount", "0", "--defaultPreemptible", "--noArvadosStepReuse",
                str(CWL / "preemptible.cwl"))
    assert done.returncode == 0, done.describe()
    steps = _steps(api, project)
    (pinned,), (spot,) = steps["pinned"], steps["spot"]
    assert spot["scheduling_parameters"]["preemptible"] is True
    assert pinned["scheduling_parameters"]["preemptible"] is False  # arv:UsePreemptible wins


@pytest.mark.parametrize("workflow, args", [
    ("placement.cwl", ["--arvadosStorageClasses", "archive"]),  # the option
    ("final_storage.cwl", ["--arvadosStorageClasses", "default"]),  # the workflow's finalStorageClass wins
])
@pytest.mark.parametrize("dest_bucket", [True, False], ids=["destBucket", "run output collection"])
def test_final_output_collection_gets_the_final_storage_classes(api, clean_project, env, tmp_path: Path,
                                                                workflow: str, args: list[str],
                                                                dest_bucket: bool) -> None:
    dest = ["--destBucket", f"keep:{clean_project}/final%20output"] if dest_bucket else []
    done = _run(clean_project, env, tmp_path, "final", "--retryCount", "0", *args, *dest, str(CWL / workflow))
    assert done.returncode == 0, done.describe()
    name = ["name", "=", "final output"] if dest_bucket else ["name", "like", "Output from workflow %"]
    (final,) = api.collections().list(filters=[["owner_uuid", "=", clean_project], name]).execute()["items"]
    assert final["storage_classes_desired"] == ["archive"]


HUNGRY = '''
"""One job that needs more memory than it asks for: 300 MB in a 256 MiB container."""
from toil.common import Toil
from toil.job import Job


def hungry(job):
    data = bytearray(300 << 20)
    data[-1] = 1
    return len(data)


if __name__ == "__main__":
    options = Job.Runner.getDefaultArgumentParser().parse_args()
    with Toil(options) as toil:
        print("hungry-result", toil.start(Job.wrapJobFn(hungry, memory="256M", cores=1, disk="10M")))
'''


def test_double_mem_retries_a_toil_worker_job_killed_for_memory(api, clean_project, env, tmp_path: Path) -> None:
    import sys

    script = tmp_path / "hungry.py"
    script.write_text(HUNGRY)
    # --defaultMemory as low as the job's: Toil raises a failed job's memory to at least the default
    done = run([sys.executable, str(script), f"arvados:{clean_project}/hungry", "--batchSystem", "arvados",
                "--arvadosProject", clean_project, "--doubleMem", "true", "--retryCount", "1",
                "--defaultMemory", "256M"], env, tmp_path, timeout=600)
    assert done.returncode == 0, done.describe()
    assert f"hungry-result {300 << 20}" in done.stdout
    rams = [cr["runtime_constraints"]["ram"] for cr in sorted(project_requests(api, clean_project),
                                                              key=lambda cr: cr["created_at"])]
    assert rams == [256_000_000, 512_000_000]  # Toil: 256M is 256,000,000 bytes; doubled once
