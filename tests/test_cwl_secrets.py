"""cwltool:Secrets under ``--batchSystem arvados``: the tool gets the real value, and no record a
user can read through the API (requests, containers, ``logs`` rows, log collections) nor Toil's
log holds it.

Native steps send a secret only as the request's ``secret_mounts`` (see
``toil_arvados.cwl_secrets``); the pure parts are tested first, then whole runs on the session
cluster, searched with the admin token.
"""
from __future__ import annotations

import json
import secrets
import sqlite3
import textwrap
from pathlib import Path
from typing import Any

import pytest
from cwl_utils.errors import WorkflowException
from cwltool.secrets import SecretStore

from e2e_util import collection_files
from toil_arvados.cwl_secrets import refuse_visible_secrets, split_secret_entries
from toil_arvados.cwl_staging import Entry
from toil_arvados.cwl_step_request import StepInvocation, StepSettings, step_request_body
from toil_cli import TOIL_CWL_RUNNER, is_one_line_error, list_all, project_requests, run

# -- pure ------------------------------------------------------------------------------------


def _store_with(value: str) -> tuple[SecretStore, str]:
    store = SecretStore()
    return store, str(store.add(value))


def test_file_literal_with_a_secret_becomes_a_text_secret_mount() -> None:
    store, placeholder = _store_with("hunter2")
    entries = [Entry(f"pw={placeholder}\n", "/var/spool/cwl/pw.txt", "CreateFile"),
               Entry("plain", "/var/spool/cwl/plain.txt", "CreateFile"),
               Entry("keep:abc+1/x", "/var/lib/cwl/stg0/x", "File")]
    staged, mounts = split_secret_entries(entries, store, "tool")
    assert staged == entries[1:]
    assert mounts == {"/var/spool/cwl/pw.txt": {"kind": "text", "content": "pw=hunter2\n"}}


def test_writable_file_literal_with_a_secret_is_refused() -> None:
    store, placeholder = _store_with("hunter2")
    with pytest.raises(WorkflowException, match="writable file /var/spool/cwl/pw.txt"):
        split_secret_entries([Entry(placeholder, "/var/spool/cwl/pw.txt", "CreateWritableFile")], store, "tool")


def test_without_a_secret_store_nothing_is_moved() -> None:
    entries = [Entry("(secret-x)", "/var/spool/cwl/a", "CreateFile")]
    assert split_secret_entries(entries, None, "tool") == (entries, {})


def _body(command: list[str], env: dict[str, str], secret_mounts: dict) -> dict[str, Any]:
    inv = StepInvocation(name="tool", command=command, image="img:1", environment=env, mounts={},
                         secret_mounts=secret_mounts)
    return step_request_body(inv, StepSettings(project_uuid="zzzzz-j7d0g-000000000000000"), step="s", tool="t")


def test_request_body_carries_secret_mounts_only_when_there_are_some() -> None:
    assert "secret_mounts" not in _body(["true"], {}, {})
    body = _body(["cat", "pw.txt"], {}, {"/var/spool/cwl/pw.txt": {"kind": "text", "content": "hunter2"}})
    assert body["secret_mounts"] == {"/var/spool/cwl/pw.txt": {"kind": "text", "content": "hunter2"}}
    assert "hunter2" not in json.dumps({k: v for k, v in body.items() if k != "secret_mounts"})


@pytest.mark.parametrize("command, env, where", [
    (["echo", "{}"], {}, "command line"),
    (["true"], {"PW": "x{}"}, "environment"),
])
def test_secret_on_command_line_or_in_environment_is_refused(command: list[str], env: dict[str, str],
                                                             where: str) -> None:
    store, placeholder = _store_with("hunter2")
    body = _body([a.format(placeholder) for a in command], {k: v.format(placeholder) for k, v in env.items()},
                 {"/p": {"kind": "text", "content": "hunter2"}})
    with pytest.raises(WorkflowException, match=f"in its {where}") as e:
        refuse_visible_secrets(store, "tool", body)
    assert "hunter2" not in str(e.value) and placeholder not in str(e.value)
    refuse_visible_secrets(store, "tool", _body(["true"], {}, {"/p": {"kind": "text", "content": placeholder}}))


# -- on the cluster --------------------------------------------------------------------------

def test_not_even_an_admin_reads_a_containers_secret_mounts(api, project: str, test_image: str) -> None:
    from arvados.errors import ApiError
    from e2e_util import create_request, request_body, wait_container_state

    secret = f"s3cr3t-{secrets.token_hex(8)}"
    cr = create_request(api, request_body(["sleep", "60"], test_image, owner_uuid=project, secret_mounts={
        "/var/spool/cwl/pw.txt": {"kind": "text", "content": secret}}))
    try:
        wait_container_state(api, cr["container_uuid"], "Running")
        with pytest.raises(ApiError) as e:  # as on Arvados: only the container's own token may
            api.containers().secret_mounts(uuid=cr["container_uuid"]).execute()
        assert e.value.resp.status == 403 and secret not in str(e.value)
    finally:
        api.container_requests().update(uuid=cr["uuid"], body={"container_request": {"priority": 0}}).execute()


SECRET_TOOL = textwrap.dedent("""\
    cwlVersion: v1.2
    class: CommandLineTool
    $namespaces: {cwltool: "http://commonwl.org/cwltool#"}
    hints:
      cwltool:Secrets:
        secrets: [pw]
    requirements:
      InitialWorkDirRequirement:
        listing:
          - entryname: pw.txt
            entry: "the password is $(inputs.pw)"
    inputs:
      pw: string
    baseCommand: [cat, pw.txt]
    stdout: out.txt
    outputs:
      out: {type: File, outputBinding: {glob: out.txt}}
    """)

SECRET_ON_COMMAND_LINE = textwrap.dedent("""\
    cwlVersion: v1.2
    class: CommandLineTool
    $namespaces: {cwltool: "http://commonwl.org/cwltool#"}
    hints:
      cwltool:Secrets:
        secrets: [pw]
    inputs:
      pw: {type: string, inputBinding: {position: 1}}
    baseCommand: echo
    outputs: []
    """)


def _run_tool(tmp_path: Path, env: dict[str, str], project: str, store: str, text: str, secret: str,
              *extra: str):
    tool = tmp_path / f"{store}.cwl"
    tool.write_text(text)
    inputs = tmp_path / f"{store}.json"
    inputs.write_text(json.dumps({"pw": secret}))
    return run([TOIL_CWL_RUNNER, "--batchSystem", "arvados", "--arvadosProject", project, *extra,
                "--jobStore", f"arvados:{project}/{store}", "--retryCount", "0", "--logDebug",
                "--outdir", str(tmp_path / store), str(tool), str(inputs)], env, tmp_path, timeout=300)


def _api_holders(api: Any, secret: str) -> list[str]:
    """Every request, container and logs row (admin's view) that holds ``secret``, and every file
    of every request's and container's log collection that does."""
    holders: list[str] = []
    requests = list_all(api.container_requests(), [])
    containers = list_all(api.containers(), [])
    for rec in requests + containers + list_all(api.logs(), []):
        if secret in json.dumps(rec):
            holders.append(rec["uuid"])
    # Every log collection, the containers' own (trashed once they end, as crunch-run leaves them)
    # included: read through the admin's list with include_trash.
    log_pdhs = {c["log"] for c in containers if c.get("log")}
    logs = {cr["log_uuid"] for cr in requests if cr.get("log_uuid")}
    logs |= {coll["uuid"] for coll in api.collections().list(
        filters=[["portable_data_hash", "in", sorted(log_pdhs)]], include_trash=True, limit=1000,
        select=["uuid"]).execute()["items"]} if log_pdhs else set()
    for log in sorted(logs):
        manifest = api.collections().get(uuid=log, include_trash=True).execute()["manifest_text"]
        holders += [f"{log}/{name}" for name, data in collection_files(api, manifest).items()
                    if secret.encode() in data]
    return holders


def _stored_holders(cluster: Any, secret: str) -> list[str]:
    """Every object the server stores that holds ``secret`` (the database itself, not the API)."""
    db = sqlite3.connect(f"file:{Path(cluster.state_dir) / 'arvados.sqlite3'}?mode=ro", uri=True)
    try:
        return [uuid for uuid, data in db.execute("SELECT uuid, data FROM objects") if secret in data]
    finally:
        db.close()


def test_native_step_gets_the_secret_and_no_record_shows_it(api, cluster, clean_project, env,
                                                           tmp_path: Path) -> None:
    secret = f"s3cr3t-{secrets.token_hex(8)}"
    done = _run_tool(tmp_path, env, clean_project, "run1", SECRET_TOOL, secret)
    assert done.returncode == 0, done.describe()
    out = json.loads(done.stdout)
    assert Path(out["out"]["path"]).read_text() == f"the password is {secret}"
    (step,) = [cr for cr in project_requests(api, clean_project) if "toil_step" in cr["properties"]]
    assert step["state"] == "Final" and "secret_mounts" not in step
    assert "/var/spool/cwl/pw.txt" not in step["mounts"]  # not staged in Keep: a secret mount
    assert secret not in done.stderr
    assert _api_holders(api, secret) == []
    assert _stored_holders(cluster, secret) == []

    # Another secret, same tool: the secret mounts differ (by md5), so the container is not reused.
    other = f"s3cr3t-{secrets.token_hex(8)}"
    done2 = _run_tool(tmp_path, env, clean_project, "run2", SECRET_TOOL, other)
    assert done2.returncode == 0, done2.describe()
    assert Path(json.loads(done2.stdout)["out"]["path"]).read_text() == f"the password is {other}"
    steps = [cr for cr in project_requests(api, clean_project) if "toil_step" in cr["properties"]]
    assert len({cr["container_uuid"] for cr in steps}) == 2

    # The first secret again: its md5 matches the first container's, which Arvados reuses.
    done3 = _run_tool(tmp_path, env, clean_project, "run3", SECRET_TOOL, secret)
    assert done3.returncode == 0, done3.describe()
    assert Path(json.loads(done3.stdout)["out"]["path"]).read_text() == f"the password is {secret}"
    steps3 = [cr for cr in project_requests(api, clean_project) if "toil_step" in cr["properties"]]
    assert [cr["container_uuid"] for cr in steps3][-1] == step["container_uuid"]


def test_secret_on_the_command_line_is_refused_before_any_request(api, clean_project, env,
                                                                  tmp_path: Path) -> None:
    secret = f"s3cr3t-{secrets.token_hex(8)}"
    done = _run_tool(tmp_path, env, clean_project, "cmdline", SECRET_ON_COMMAND_LINE, secret)
    assert done.returncode != 0, done.describe()
    assert secret not in done.stderr + done.stdout
    # The step fails as a failed container would (permanentFail), its reason in one error line.
    reasons = [line for line in done.stderr.splitlines() if "cwltool:Secrets input is in its command line" in line]
    assert reasons and all(is_one_line_error(line.strip()) for line in reasons), done.describe()
    assert [cr for cr in project_requests(api, clean_project) if "toil_step" in cr["properties"]] == []


def test_worker_steps_keep_the_secret_out_of_request_bodies(api, cluster, clean_project, env,
                                                            tmp_path: Path) -> None:
    secret = f"s3cr3t-{secrets.token_hex(8)}"
    done = _run_tool(tmp_path, env, clean_project, "workers", SECRET_TOOL, secret, "--noArvadosNativeSteps")
    assert done.returncode == 0, done.describe()
    assert Path(json.loads(done.stdout)["out"]["path"]).read_text() == f"the password is {secret}"
    assert project_requests(api, clean_project)  # the tool did run in worker containers
    assert secret not in done.stderr
    assert _api_holders(api, secret) == []
    assert _stored_holders(cluster, secret) == []
