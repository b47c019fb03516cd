"""Native CWL steps on the local cluster: each CommandLineTool is its own container request, so
Arvados reuses finished steps across workflow runs and re-runs only what an input change touches.

Containers are counted at the server: a step that Arvados reused points at a container that
existed before the run; a step that ran created one.
"""
from __future__ import annotations

import json
import secrets
import textwrap
from pathlib import Path

from toil_cli import TOIL_CWL_RUNNER, is_one_line_error, last_line, project_requests, run, upload_text, workflow_id

DEMO = Path(__file__).resolve().parent.parent / "toil_arvados" / "demo"
# Unique to this test session: steps other tests ran with the same inputs would be reused here.
WORDS = [f"{w}-{secrets.token_hex(3)}" for w in ("alpha", "beta", "gamma")]


def _container_uuids(api) -> set[str]:
    items, offset = [], 0
    while True:
        page = api.containers().list(select=["uuid"], limit=1000, offset=offset, order=["uuid"]).execute()["items"]
        items += page
        offset += len(page)
        if len(page) < 1000:
            return {c["uuid"] for c in items}


def _run_demo(api, project: str, env, where: Path, header_location: str, store: str) -> tuple[dict, list[dict]]:
    inputs = where / f"{store}.json"
    inputs.write_text(json.dumps({"words": WORDS, "header": {"class": "File", "location": header_location}}))
    done = run([TOIL_CWL_RUNNER, "--batchSystem", "arvados", "--arvadosProject", project,
                "--jobStore", f"arvados:{project}/{store}", "--retryCount", "0", "--outdir", str(where / store),
                str(DEMO / "workflow.cwl"), str(inputs)], env, where, timeout=600)
    assert done.returncode == 0, done.describe()
    wf = workflow_id(done.stderr)
    steps = [cr for cr in project_requests(api, project)
             if cr["properties"].get("toil_workflow_id") == wf and "toil_step" in cr["properties"]]
    return json.loads(done.stdout), steps


def test_second_run_reuses_every_step_and_a_new_input_reruns_only_its_dependents(api, clean_project, env,
                                                                                  tmp_path: Path) -> None:
    project = clean_project
    header = upload_text(api, project, "header.txt", b"word bytes\n", "native header")
    before = _container_uuids(api)
    out1, steps1 = _run_demo(api, project, env, tmp_path, header, "run1")
    after1 = _container_uuids(api)
    assert len(steps1) == 2 * len(WORDS) + 1
    assert {cr["container_uuid"] for cr in steps1} <= after1 - before  # every step ran: nothing to reuse yet

    out2, steps2 = _run_demo(api, project, env, tmp_path, header, "run2")
    after2 = _container_uuids(api)
    assert after2 == after1, "the second run created containers"
    assert len(steps2) == len(steps1)  # every step was submitted again ...
    assert {cr["container_uuid"] for cr in steps2} == {cr["container_uuid"] for cr in steps1}  # ... and reused
    assert Path(out2["report"]["path"]).read_bytes() == Path(out1["report"]["path"]).read_bytes()

    # A new header: only the step that reads it (merge) runs again.
    header2 = upload_text(api, project, "header.txt", b"WORD BYTES\n", "native header 2")
    out3, steps3 = _run_demo(api, project, env, tmp_path, header2, "run3")
    new = _container_uuids(api) - after2
    rerun = sorted(cr["name"] for cr in steps3 if cr["container_uuid"] in new)
    assert len(new) == 1 and len(rerun) == 1 and ".merge" in rerun[0], rerun
    report = Path(out3["report"]["path"]).read_text()
    assert report.startswith("WORD BYTES\n") and report.splitlines()[1:] == \
        Path(out1["report"]["path"]).read_text().splitlines()[1:]


TOOL_FEATURES = textwrap.dedent("""\
    cwlVersion: v1.2
    class: CommandLineTool
    requirements:
      InitialWorkDirRequirement:
        listing:
          - entryname: greeting.txt
            entry: "hello from $(inputs.name)"
      EnvVarRequirement:
        envDef: {WHO: $(inputs.name)}
      ShellCommandRequirement: {}
    inputs:
      name: string
      data: File
    arguments:
      - {valueFrom: 'cat greeting.txt; echo; echo "env $WHO"; wc -c; echo oops >&2', shellQuote: false}
    stdin: $(inputs.data.path)
    stdout: out.txt
    stderr: err.txt
    outputs:
      out: {type: File, outputBinding: {glob: out.txt}}
      err: {type: File, outputBinding: {glob: err.txt, loadContents: true}}
      greeting: {type: File, outputBinding: {glob: greeting.txt}}
    """)


def test_stdin_stdout_stderr_initial_workdir_and_environment(api, clean_project, env, tmp_path: Path) -> None:
    project = clean_project
    tool = tmp_path / "features.cwl"
    tool.write_text(TOOL_FEATURES)
    data = upload_text(api, project, "data.txt", b"12345", "native data")
    inputs = tmp_path / "inputs.json"
    inputs.write_text(json.dumps({"name": "toil", "data": {"class": "File", "location": data}}))
    done = run([TOIL_CWL_RUNNER, "--batchSystem", "arvados", "--arvadosProject", project,
                "--jobStore", f"arvados:{project}/features", "--retryCount", "0", "--outdir", str(tmp_path / "out"),
                str(tool), str(inputs)], env, tmp_path, timeout=300)
    assert done.returncode == 0, done.describe()
    out = json.loads(done.stdout)
    assert Path(out["out"]["path"]).read_text() == "hello from toil\nenv toil\n5\n"
    assert Path(out["err"]["path"]).read_text() == "oops\n"
    assert Path(out["greeting"]["path"]).read_text() == "hello from toil"
    (cr,) = [cr for cr in project_requests(api, project) if "toil_step" in cr["properties"]]
    assert cr["mounts"]["stdin"]["kind"] == "collection"  # the Keep input, mounted, not copied
    assert cr["mounts"]["stdout"] == {"kind": "file", "path": "/var/spool/cwl/out.txt"}
    assert cr["environment"]["WHO"] == "toil" and cr["environment"]["HOME"] == "/var/spool/cwl"


MISSING_IMAGE = textwrap.dedent("""\
    cwlVersion: v1.2
    class: Workflow
    inputs: []
    outputs: []
    steps:
      fine:
        run: {class: CommandLineTool, baseCommand: "true", inputs: [], outputs: []}
        in: []
        out: []
      needs_image:
        run:
          class: CommandLineTool
          requirements: {DockerRequirement: {dockerPull: "example.org/no-such/tool:2.1"}}
          baseCommand: "true"
          inputs: []
          outputs: []
        in: []
        out: []
    """)


def test_missing_image_stops_the_run_before_any_step(api, clean_project, env, tmp_path: Path) -> None:
    wf = tmp_path / "missing.cwl"
    wf.write_text(MISSING_IMAGE)
    done = run([TOIL_CWL_RUNNER, "--batchSystem", "arvados", "--arvadosProject", clean_project,
                "--jobStore", f"arvados:{clean_project}/missing", str(wf)], env, tmp_path, timeout=120)
    assert done.returncode != 0, done.describe()
    assert "Traceback" not in done.stderr, done.describe()
    line = last_line(done.stderr)
    assert is_one_line_error(line), done.describe()
    assert "example.org/no-such/tool:2.1" in line and "arv-keepdocker example.org/no-such/tool 2.1" in line, line
    assert project_requests(api, clean_project) == []  # not even the step that needs no image started
