"""A run's output collection and its intermediates, end to end on the local cluster.

What a user sees after ``toil-cwl-runner --batchSystem arvados``: one output collection in the
run's project (name, properties, content, ``keep:`` locations in the printed output object), and
nothing else new but what Arvados needs to reuse the steps, so that a rerun is reused and adds
only its own output collection. Collections are counted at the server, before and after.
"""
from __future__ import annotations

import json
import secrets
import textwrap
from pathlib import Path

from e2e_util import collection_files
from toil_cli import TOIL_CWL_RUNNER, containers_by_uuid, list_all, project_requests, run, upload_text, workflow_id

WORKFLOW = textwrap.dedent("""\
    cwlVersion: v1.2
    class: Workflow
    label: tiny pipeline
    $namespaces: {arv: "http://arvados.org/cwl#"}
    hints:
      arv:OutputCollectionProperties:
        outputProperties:
          sample: $(inputs.sample)
    inputs:
      sample: string
      data: File
    outputs:
      counted: {type: File, outputSource: count/counted}
      tagged: {type: File, outputSource: tag/tagged}
    steps:
      tag:
        in: {sample: sample, data: data}
        out: [tagged]
        run:
          class: CommandLineTool
          inputs: {sample: string, data: File}
          baseCommand: [sh, -c, 'echo "$0"; cat "$1"']
          arguments: [$(inputs.sample), $(inputs.data.path)]
          stdout: tagged.txt
          outputs: {tagged: {type: File, outputBinding: {glob: tagged.txt}}}
      count:
        in: {text: tag/tagged}
        out: [counted]
        run:
          class: CommandLineTool
          inputs: {text: File}
          baseCommand: [wc, -c]
          stdin: $(inputs.text.path)
          stdout: counted.txt
          outputs: {counted: {type: File, outputBinding: {glob: counted.txt}}}
    """)


def _live_collections(api, project: str) -> dict[str, dict]:
    return {c["uuid"]: c for c in list_all(api.collections(), [["owner_uuid", "=", project]],
                                           ["uuid", "name", "portable_data_hash", "properties", "trash_at"])}


def _all_containers(api) -> set[str]:
    return {c["uuid"] for c in list_all(api.containers(), [], ["uuid"])}


def _run(api, project: str, env, where: Path, inputs: Path, store: str, *extra: str):
    done = run([TOIL_CWL_RUNNER, "--batchSystem", "arvados", "--arvadosProject", project,
                "--jobStore", f"arvados:{project}/{store}", "--retryCount", "0", *extra,
                str(where / "wf.cwl"), str(inputs)], env, where, timeout=600)
    assert done.returncode == 0, done.describe()
    wf = workflow_id(done.stderr)
    steps = [cr for cr in project_requests(api, project)
             if cr["properties"].get("toil_workflow_id") == wf and "toil_step" in cr["properties"]]
    return done, steps


def _setup(api, project: str, tmp_path: Path) -> tuple[Path, str, str]:
    (tmp_path / "wf.cwl").write_text(WORKFLOW)
    sample = f"sample-{secrets.token_hex(4)}"  # unique: no earlier test's steps to reuse
    data = upload_text(api, project, "data.txt", f"data of {sample}\n".encode(), "input data")
    inputs = tmp_path / "inputs.json"
    inputs.write_text(json.dumps({"sample": sample, "data": {"class": "File", "location": data}}))
    return inputs, sample, data


def _check_output_collection(api, done, new: dict, sample: str) -> dict:
    """The output collection: default name, properties from the workflow and the command line,
    the outputs and cwl.output.json in it, keep: locations printed."""
    out = json.loads(done.stdout)
    (final,) = [c for c in new.values() if c["name"] == "Output from workflow tiny pipeline"]
    assert final["properties"] == {"sample": sample, "batch": "7", "note": "a=b"}
    pdh = final["portable_data_hash"]
    assert f"Final output collection {pdh}" in done.stderr and final["uuid"] in done.stderr
    files = collection_files(api, pdh)
    expected = {"tagged.txt": f"{sample}\ndata of {sample}\n".encode()}
    expected["counted.txt"] = f"{len(expected['tagged.txt'])}\n".encode()
    assert {k: v for k, v in files.items() if k != "cwl.output.json"} == expected
    assert out["tagged"]["location"] == f"keep:{pdh}/tagged.txt" and "path" not in out["tagged"]
    assert out["counted"]["location"] == f"keep:{pdh}/counted.txt"
    assert out["counted"]["size"] == len(expected["counted.txt"]) and out["counted"]["checksum"].startswith("sha1$")
    assert json.loads(files["cwl.output.json"])["counted"]["location"] == "counted.txt"
    return final


def _check_only_reuse_needs_left(api, project: str, steps: list[dict], new: dict, final: dict) -> None:
    """Besides the output collection, per step one collection with its output and one with its log."""
    containers = containers_by_uuid(api, steps)
    needed = {containers[cr["container_uuid"]][k] for cr in steps for k in ("output", "log")}
    assert {c["portable_data_hash"] for u, c in new.items() if u != final["uuid"]} == needed
    assert len(new) == 1 + 2 * len(steps), sorted(c["name"] for c in new.values())
    trashed = [api.collections().get(uuid=cr["log_uuid"], include_trash=True).execute() for cr in steps]
    assert all(c["is_trashed"] for c in trashed)  # the requests' merged logs are not needed for reuse
    staging = api.collections().list(filters=[["owner_uuid", "=", project], ["name", "like", "Inputs of %"]],
                                     include_trash=True, select=["uuid", "is_trashed"]).execute()["items"]
    assert len(staging) == 2 and all(c["is_trashed"] for c in staging)
    assert not list_all(api.groups(), [["owner_uuid", "=", project]], ["uuid"])  # job store removed


def test_output_collection_intermediates_trashed_and_rerun_reused(api, clean_project, env, tmp_path: Path) -> None:
    project = clean_project
    inputs, sample, _data = _setup(api, project, tmp_path)
    before = _live_collections(api, project)
    containers_before = _all_containers(api)
    done, steps = _run(api, project, env, tmp_path, inputs, "run1", "--arvadosOutputProperties", "batch=7",
                       "--arvadosOutputProperties", "note=a=b")
    assert len(steps) == 2
    after = _live_collections(api, project)
    new = {u: c for u, c in after.items() if u not in before}
    final = _check_output_collection(api, done, new, sample)
    _check_only_reuse_needs_left(api, project, steps, new, final)

    # A rerun is reused by Arvados and leaves only its own output collection.
    containers_run1 = _all_containers(api)
    assert {cr["container_uuid"] for cr in steps} <= containers_run1 - containers_before
    done2, steps2 = _run(api, project, env, tmp_path, inputs, "run2", "--arvadosOutputName", "second/output")
    assert _all_containers(api) == containers_run1, "the rerun ran containers instead of reusing them"
    assert {cr["container_uuid"] for cr in steps2} == {cr["container_uuid"] for cr in steps}
    after2 = _live_collections(api, project)
    (second,) = [c for u, c in after2.items() if u not in after]
    assert second["name"] == "second output" and set(after) <= set(after2)
    assert json.loads(done2.stdout)["tagged"]["location"] == f"keep:{second['portable_data_hash']}/tagged.txt"

    # What was kept is what reuse needs: without the tag step's output, Arvados runs that step again.
    (tag_request,) = [cr for cr in steps if "tag" in cr["properties"]["toil_step"]]
    tag_output = containers_by_uuid(api, [tag_request])[tag_request["container_uuid"]]["output"]
    for c in after2.values():
        if c["portable_data_hash"] == tag_output:
            api.collections().delete(uuid=c["uuid"]).execute()
    _run(api, project, env, tmp_path, inputs, "run3")
    assert len(_all_containers(api) - containers_run1) == 1  # the tag step ran; the count step was reused


def test_keep_intermediates_ttl_and_outdir(api, clean_project, env, tmp_path: Path) -> None:
    project = clean_project
    inputs, sample, _data = _setup(api, project, tmp_path)
    before = _live_collections(api, project)
    done, steps = _run(api, project, env, tmp_path, inputs, "kept", "--noArvadosTrashIntermediate",
                       "--arvadosIntermediateOutputTTL", "3600", "--outdir", str(tmp_path / "out"))
    out = json.loads(done.stdout)
    assert Path(out["tagged"]["path"]).read_text() == f"{sample}\ndata of {sample}\n"  # --outdir: local files
    new = {u: c for u, c in _live_collections(api, project).items() if u not in before}
    (final,) = [c for c in new.values() if c["name"] == "Output from workflow tiny pipeline"]
    assert collection_files(api, final["uuid"])["tagged.txt"] == f"{sample}\ndata of {sample}\n".encode()
    assert all(cr["output_ttl"] == 3600 for cr in steps)
    for cr in steps:  # Arvados will trash the step outputs itself, in an hour
        assert new[cr["output_uuid"]]["trash_at"] is not None
        assert cr["log_uuid"] in new
    assert len([c for c in new.values() if c["name"].startswith("Inputs of")]) == 2  # staging kept


def test_bad_output_options_are_one_line_errors(env, tmp_path: Path) -> None:
    (tmp_path / "wf.cwl").write_text(WORKFLOW)
    for flag, value, words in (("--arvadosOutputProperties", "novalue", "KEY=VALUE"),
                               ("--arvadosIntermediateOutputTTL", "-5", "seconds >= 0")):
        done = run([TOIL_CWL_RUNNER, "--batchSystem", "arvados", flag, value, str(tmp_path / "wf.cwl")],
                   env, tmp_path, timeout=120)
        assert done.returncode != 0 and words in done.stderr and "Traceback" not in done.stderr, done.describe()


def test_toil_clean_after_a_failed_run_leaves_only_what_reuse_needs(api, clean_project, env, tmp_path: Path) -> None:
    from toil_cli import VENV_BIN

    project = clean_project
    inputs, _sample, _data = _setup(api, project, tmp_path)
    (tmp_path / "wf.cwl").write_text(WORKFLOW.replace("baseCommand: [wc, -c]", "baseCommand: [sh, -c, 'exit 3']"))
    before = _live_collections(api, project)
    done = run([TOIL_CWL_RUNNER, "--batchSystem", "arvados", "--arvadosProject", project,
                "--jobStore", f"arvados:{project}/failed", "--retryCount", "0",
                str(tmp_path / "wf.cwl"), str(inputs)], env, tmp_path, timeout=600)
    assert done.returncode != 0
    wf = workflow_id(done.stderr)
    steps = [cr for cr in project_requests(api, project)
             if cr["properties"].get("toil_workflow_id") == wf and "toil_step" in cr["properties"]]
    (tag_request,) = [cr for cr in steps if "tag" in cr["properties"]["toil_step"]]
    left = {u: c for u, c in _live_collections(api, project).items() if u not in before}
    assert any(c["name"].startswith("Inputs of") for c in left.values())  # a failed run trashes nothing
    assert list_all(api.groups(), [["owner_uuid", "=", project]], ["uuid"])  # the job store is kept for --restart

    clean = run([str(VENV_BIN / "toil"), "clean", f"arvados:{project}/failed"], env, tmp_path, timeout=300)
    assert clean.returncode == 0, clean.describe()
    assert not list_all(api.groups(), [["owner_uuid", "=", project]], ["uuid"])
    kept = {u: c for u, c in _live_collections(api, project).items() if u not in before}
    tag = containers_by_uuid(api, [tag_request])[tag_request["container_uuid"]]
    assert sorted(c["portable_data_hash"] for c in kept.values()) == sorted([tag["output"], tag["log"]])
    assert len(left) > len(kept) == 2


def test_dest_bucket_still_exports_there(api, clean_project, env, tmp_path: Path) -> None:
    project = clean_project
    inputs, sample, _data = _setup(api, project, tmp_path)
    dest = f"keep:{project}/dest%20out"
    done, _steps = _run(api, project, env, tmp_path, inputs, "dest", "--destBucket", dest)
    assert json.loads(done.stdout)["tagged"]["location"] == f"{dest}/tagged.txt"
    names = [c["name"] for c in _live_collections(api, project).values()]
    assert "dest out" in names and not [n for n in names if n.startswith(("Output from", "Inputs of"))]
    (coll,) = list_all(api.collections(), [["owner_uuid", "=", project], ["name", "=", "dest out"]], ["uuid"])
    assert collection_files(api, coll["uuid"])["tagged.txt"] == f"{sample}\ndata of {sample}\n".encode()


def test_worker_containers_leave_only_the_output_collection(api, clean_project, env, tmp_path: Path) -> None:
    """With --noArvadosNativeSteps every tool runs in a Toil worker container, which Arvados does
    not reuse (--arvadosReuse is off): a successful run leaves nothing but its output collection."""
    project = clean_project
    inputs, sample, _data = _setup(api, project, tmp_path)
    before = _live_collections(api, project)
    done, _steps = _run(api, project, env, tmp_path, inputs, "workers", "--noArvadosNativeSteps")
    (final,) = [c for u, c in _live_collections(api, project).items() if u not in before]
    assert final["name"] == "Output from workflow tiny pipeline" and final["properties"] == {"sample": sample}
    assert json.loads(done.stdout)["tagged"]["location"] == f"keep:{final['portable_data_hash']}/tagged.txt"
    assert collection_files(api, final["uuid"])["tagged.txt"] == f"{sample}\ndata of {sample}\n".encode()
