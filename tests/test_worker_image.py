"""The Toil worker image, and workers that run only in it.

The worker image is built from Debian packages (cached under ~/.cache/toil-arvados) and stored in
the session cluster's Keep by the ``cluster`` fixture, exactly as ``toil-arvados images
build-worker --upload`` stores it.  A Toil workflow that lives only in a temp dir on the leader
runs: its script reaches the workers through the job store (Toil's auto-deployment), and no
container request carries a path of the leader's machine.
"""
from __future__ import annotations

import json
import os
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from toil_arvados.batch_system import _is_file_job_store, _portable_argv
from toil_arvados.images import worker
from toil_cli import TOIL_CWL_RUNNER, is_one_line_error, last_line, project_requests, run

REPO = Path(__file__).resolve().parent.parent

WORKFLOW = '''
import sys
from toil.common import Toil
from toil.job import Job

SMALL = dict(memory="100M", cores=1, disk="10M")


def write(job, text):
    path = job.fileStore.getLocalTempFile()
    with open(path, "w") as f:
        f.write(text)
    return job.fileStore.writeGlobalFile(path)


def flaky(job, fid):
    # Fails on its first try (Toil then retries it: --retryCount 1), succeeds on the second.
    if job.description.remainingTryCount > 1:  # retryCount + 1 before the first try
        raise RuntimeError("deliberate first failure")
    with open(job.fileStore.readGlobalFile(fid)) as f:
        return f.read().upper()


def combine(job, texts):
    return "+".join(texts)


def root(job):
    ids = [job.addChildJobFn(write, f"part{i}", **SMALL).rv() for i in range(3)]
    upper = job.addFollowOnJobFn(flaky_all, ids, **SMALL)
    return upper.rv()


def flaky_all(job, ids):
    parts = [job.addChildJobFn(flaky, fid, **SMALL).rv() for fid in ids]
    return job.addFollowOnJobFn(combine, parts, **SMALL).rv()


if __name__ == "__main__":
    options = Job.Runner.getDefaultArgumentParser().parse_args()
    with Toil(options) as toil:
        result = toil.start(Job.wrapJobFn(root, **SMALL))
    print(f"workflow-result {result}")
    sys.exit(0 if result == "PART0+PART1+PART2" else 1)
'''

TOOL = """cwlVersion: v1.2
class: CommandLineTool
baseCommand: [sh, -c, 'echo "hello $0" > out.txt']
arguments: [$(inputs.who)]
inputs:
  who: string
outputs:
  out: {type: File, outputBinding: {glob: out.txt}}
"""


def leader_paths(*extra: Path) -> list[str]:
    """Paths of this machine a container request must never carry."""
    return [str(p) for p in (Path(sys.prefix), REPO, Path.home(), *extra)] + [os.environ.get("PATH", "")]


def assert_no_leader_path(requests: list[dict], *extra: Path) -> None:
    for cr in requests:
        text = json.dumps(cr)
        for path in leader_paths(*extra):
            assert path not in text, f"{cr['uuid']} ({cr['name']}) carries leader path {path}"


# --------------------------------------------------------------------------- pure parts

def test_default_image_name_carries_the_package_version() -> None:
    assert worker.default_image_name() == f"toil-arvados/worker:{worker.package_version()}"
    assert not worker.default_image_name().endswith(":latest")


def test_missing_image_errors_name_a_command_that_exists() -> None:
    """The hint in "image not found" errors is a real ``toil-arvados`` subcommand."""
    from toil_arvados import cli
    from toil_arvados.images import upload_hint

    worker_hint = upload_hint(worker.default_image_name())
    suite_hint = upload_hint("docker.io/bash:4.4")
    assert worker_hint == "toil-arvados images build-worker --upload"
    assert suite_hint == "toil-arvados images build bash:4.4 --upload"
    assert upload_hint("example.org/tool:1") == ""
    for hint in (worker_hint, suite_hint):
        args = cli.build_parser().parse_args(hint.split()[1:])  # exits (code 2) on an unknown command
        assert args.upload


def test_requirements_are_pinned_to_the_leaders_versions() -> None:
    import importlib.metadata

    pins = worker.pinned_requirements()
    assert f"toil[cwl]=={importlib.metadata.version('toil')}" in pins
    assert f"arvados-python-client=={importlib.metadata.version('arvados-python-client')}" in pins


def test_version_mismatch_says_which_version_differs() -> None:
    props = dict(worker.versions())
    assert worker.version_mismatch(props) is None
    assert "toil 8.0.0" in (worker.version_mismatch({**props, worker.TOIL_VERSION: "8.0.0"}) or "")
    other = worker.version_mismatch({**props, worker.PACKAGE_VERSION: "0.0.1"})
    assert other is not None and "toil-arvados 0.0.1" in other
    assert "records no toil version" in (worker.version_mismatch({}) or "")


def test_package_layer_holds_the_package_and_its_startup_hook(tmp_path: Path) -> None:
    layer = worker.package_layer(tmp_path)
    with tarfile.open(layer.path) as tar:
        names = set(tar.getnames())
    site = worker.SITE_PACKAGES.lstrip("/")
    for name in ("toil_arvados/worker.py", "toil_batch_system_arvados.py", "toil_url_access_keep.py",
                 "toil_arvados.pth", "toil_arvados/__pycache__/worker.cpython-311.pyc"):
        assert f"{site}/{name}" in names, name
    assert not any(n.endswith(".pyc") and "__pycache__" not in n for n in names)
    assert worker.package_layer(tmp_path) == layer  # cached, by content


def test_the_run_record_keeps_no_leader_path() -> None:
    argv = ["/home/u/.venv/bin/toil-cwl-runner", "--jobStore=file:/home/u/js", "--outdir", "/home/u/out",
            "/home/u/wf/workflow.cwl", "inputs.yml"]
    assert _portable_argv(argv) == ["toil-cwl-runner", "--jobStore=js", "--outdir", "out", "workflow.cwl",
                                    "inputs.yml"]


def test_file_job_stores_are_recognized() -> None:
    assert _is_file_job_store("/tmp/js") and _is_file_job_store("file:/tmp/js")
    assert not _is_file_job_store("arvados:proj/js")


# --------------------------------------------------------------------------- on the cluster

def test_python_workflow_outside_the_image_runs_in_worker_containers(api, clean_project, env,
                                                                    tmp_path: Path) -> None:
    project = clean_project
    script = tmp_path / "only_here.py"  # in no image: shipped through the job store
    script.write_text(WORKFLOW)
    done = run([sys.executable, str(script), f"arvados:{project}/worker-image-wf", "--batchSystem", "arvados",
                "--arvadosProject", project, "--retryCount", "1", "--logInfo"], env, tmp_path, timeout=900)
    assert done.returncode == 0, done.describe()
    assert "workflow-result PART0+PART1+PART2" in done.stdout, done.describe()
    crs = project_requests(api, project)
    # root, 3 writes, flaky_all, 3 flaky x 2 tries, combine
    assert len(crs) == 12, sorted(cr["name"] for cr in crs)
    for cr in crs:
        assert cr["container_image"] == worker.default_image_name()
        assert cr["command"][:3] == ["python3", "-m", "toil_arvados.worker"], cr["command"]
    assert_no_leader_path(crs, tmp_path)


@pytest.mark.parametrize("mode", ["--noArvadosNativeSteps", "--arvadosNativeSteps"])
def test_cwl_keeps_no_leader_path(api, clean_project, env, tmp_path: Path, mode: str) -> None:
    """Worker-container mode (the tool runs inside a Toil worker) and native steps (the tool is its
    own request): either way, with --no-container, in the worker image with its own PATH."""
    project = clean_project
    (tmp_path / "tool.cwl").write_text(TOOL)
    (tmp_path / "job.yml").write_text("who: world\n")
    done = run([TOIL_CWL_RUNNER, "--batchSystem", "arvados", "--arvadosProject", project,
                "--jobStore", f"arvados:{project}/cwl-mode", mode, "--no-container",
                "--outdir", str(tmp_path / "out"), str(tmp_path / "tool.cwl"), str(tmp_path / "job.yml")],
               env, tmp_path, timeout=600)
    assert done.returncode == 0, done.describe()
    assert (tmp_path / "out" / "out.txt").read_text() == "hello world\n"
    assert_no_leader_path(project_requests(api, project), tmp_path)


def test_file_job_store_with_worker_containers_is_one_line(api, clean_project, env, tmp_path: Path) -> None:
    script = tmp_path / "wf.py"
    script.write_text(WORKFLOW)
    done = run([sys.executable, str(script), str(tmp_path / "js"), "--batchSystem", "arvados",
                "--arvadosProject", clean_project], env, tmp_path, timeout=300)
    assert done.returncode != 0
    line = last_line(done.stderr)
    assert "--jobStore arvados:" in line and "Traceback" not in done.stderr, done.describe()
    assert project_requests(api, clean_project) == []


def test_worker_image_of_other_versions_is_refused_in_one_line(api, clean_project, env, tmp_path: Path,
                                                                built_images: dict[str, Any]) -> None:
    from toil_arvados.images.keep import find_image

    from conftest import TEST_IMAGE

    # An image recorded as built for another toil-arvados (its own collection and links).
    image = "toil-arvados/worker-old:1"
    props = {**dict(worker.versions()), worker.PACKAGE_VERSION: "0.0.1"}
    source = api.collections().get(uuid=find_image(api, TEST_IMAGE)["uuid"]).execute()
    coll = api.collections().create(body={"collection": {
        "name": "old worker image", "manifest_text": source["manifest_text"], "properties": props}},
        ensure_unique_name=True).execute()
    for link_class, name in (("docker_image_hash", f"sha256:{'0' * 64}"),
                             ("docker_image_repo+tag", image)):
        api.links().create(body={"link": {"link_class": link_class, "name": name,
                                          "head_uuid": coll["uuid"]}}).execute()
    (tmp_path / "tool.cwl").write_text(TOOL)
    (tmp_path / "job.yml").write_text("who: world\n")
    done = run([TOIL_CWL_RUNNER, "--batchSystem", "arvados", "--arvadosProject", clean_project,
                "--arvadosWorkerImage", image, "--jobStore", f"arvados:{clean_project}/old-image",
                str(tmp_path / "tool.cwl"), str(tmp_path / "job.yml")], env, tmp_path, timeout=300)
    assert done.returncode != 0
    line = last_line(done.stderr)
    assert is_one_line_error(line), done.describe()
    assert image in line and "build-worker" in line, line
    assert project_requests(api, clean_project) == []
