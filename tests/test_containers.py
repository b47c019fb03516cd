"""Container requests run by the local cluster's dispatcher, observed through the real SDK.

Covers the life cycle a client sees (Committed -> Final with output/log collections and the
exit code), cancellation, retries after a lost container, unsatisfiable requests, and what the
command sees of its mounts.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import signal
import time

import arvados.collection

from e2e_util import collection_files, container, create_request, get_request, request_body, wait_final, wait_for


def test_completed_request_has_output_logs_and_exit_code(api, project: str, test_image: str) -> None:
    script = ("echo hello > out.txt && mkdir -p d/e && printf 'nested' > d/e/n.txt && "
              "echo 'to stdout' && echo 'to stderr' >&2")
    cr = create_request(api, request_body(["sh", "-c", script], test_image, owner_uuid=project,
                                          name="writes files"))
    assert cr["state"] == "Committed" and cr["container_uuid"]
    cr = wait_final(api, cr["uuid"])
    c = container(api, cr["container_uuid"])
    assert c["state"] == "Complete" and c["exit_code"] == 0
    assert c["started_at"] and c["finished_at"] and c["started_at"] <= c["finished_at"]
    assert cr["output_uuid"] and cr["log_uuid"] and cr["container_count"] == 1

    output = api.collections().get(uuid=cr["output_uuid"]).execute()
    assert output["owner_uuid"] == project and output["portable_data_hash"] == c["output"]
    assert collection_files(api, cr["output_uuid"]) == {"out.txt": b"hello\n", "d/e/n.txt": b"nested"}

    logs = collection_files(api, cr["log_uuid"])
    assert {"crunch-run.txt", "stderr.txt", "stdout.txt"} <= set(logs)
    # crunch-run style: every log line starts with an RFC 3339 timestamp (a-c-r parses it)
    assert re.fullmatch(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z to stdout\n", logs["stdout.txt"])
    assert b"to stderr" in logs["stderr.txt"]
    assert b"exited with code 0" in logs["crunch-run.txt"]
    # As container_request.rb's finalize!: the request's log holds the container's log at its
    # root and under "log for container <uuid>"; a verbatim copy (same PDH) sits beside it.
    assert logs[f"log for container {c['uuid']}/stdout.txt"] == logs["stdout.txt"]
    copies = api.collections().list(filters=[["owner_uuid", "=", project],
                                             ["portable_data_hash", "=", c["log"]]]).execute()["items"]
    assert [x["name"] for x in copies] == [f"Container log for container {c['uuid']}"]


def test_failing_command_reports_its_exit_code(api, project: str, test_image: str) -> None:
    cr = create_request(api, request_body(["sh", "-c", "echo failing >&2; exit 3"], test_image,
                                          owner_uuid=project))
    cr = wait_final(api, cr["uuid"])
    c = container(api, cr["container_uuid"])
    assert (c["state"], c["exit_code"]) == ("Complete", 3)
    assert cr["state"] == "Final" and cr["output_uuid"] is None and cr["container_count"] == 1
    assert b"failing" in collection_files(api, cr["log_uuid"])["stderr.txt"]


def _running(api, cr_uuid: str, timeout: float = 30.0) -> dict:
    def fetch():
        cr = get_request(api, cr_uuid)
        return container(api, cr["container_uuid"]) if cr["container_uuid"] else {"state": None}
    return wait_for(fetch, lambda c: c["state"] == "Running", timeout, f"{cr_uuid}'s container to run")


def test_cancel_a_running_request(api, project: str, test_image: str) -> None:
    cr = create_request(api, request_body(["sleep", "1000"], test_image, owner_uuid=project,
                                          environment={"RUN": secrets.token_hex(6)}))
    c = _running(api, cr["uuid"])
    start = time.monotonic()
    api.container_requests().update(uuid=cr["uuid"], body={"container_request": {"priority": 0}}).execute()
    cr = wait_final(api, cr["uuid"], timeout=15)
    elapsed = time.monotonic() - start
    c = container(api, c["uuid"])
    assert c["state"] == "Cancelled" and cr["state"] == "Final" and cr["priority"] == 0
    assert cr["container_count"] == 1, "a cancelled request is not retried"
    assert elapsed < 5, f"cancelling took {elapsed:.1f}s"
    assert cr["output_uuid"] is None


def _command_pids(marker: str) -> list[int]:
    """Host pids of processes whose environment carries ``KILLME=<marker>``."""
    pids = []
    needle = f"KILLME={marker}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


def _status_field(pid: int, field: str) -> list[str]:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return line.split()[1:]
    return []


def _container_init(marker: str) -> int | None:
    """The runtime's PID 1 of the container whose command has our marker in its environment."""
    for pid in _command_pids(marker):
        try:
            parent = int(_status_field(pid, "PPid")[0])
            if _status_field(parent, "NSpid")[-1:] == ["1"]:
                return parent
        except (OSError, IndexError, ValueError):
            continue
    return None


def test_killed_container_is_retried_up_to_the_max(api, project: str, test_image: str) -> None:
    marker = secrets.token_hex(8)
    cr = create_request(api, request_body(["sleep", "1000"], test_image, owner_uuid=project,
                                          environment={"KILLME": marker}, container_count_max=2))
    killed: list[str] = []
    deadline = time.monotonic() + 60
    while True:
        cr = get_request(api, cr["uuid"])
        if cr["state"] == "Final":
            break
        assert time.monotonic() < deadline, f"request not Final after killing {killed}"
        c = container(api, cr["container_uuid"])
        if c["state"] == "Running" and c["uuid"] not in killed:
            init = _container_init(marker)
            if init is not None:
                os.kill(init, signal.SIGKILL)
                killed.append(c["uuid"])
        time.sleep(0.02)
    assert len(killed) == 2 and len(set(killed)) == 2
    assert cr["container_count"] == cr["container_count_max"] == 2
    assert cr["container_uuid"] == killed[-1]
    for uuid in killed:
        c = container(api, uuid)
        assert c["state"] == "Cancelled" and "lost" in c["runtime_status"].get("error", "")
    assert cr["output_uuid"] is None
    assert _command_pids(marker) == []
    assert b"lost" in collection_files(api, cr["log_uuid"])["crunch-run.txt"]


def test_unsatisfiable_request_is_cancelled_with_a_message(api, project: str, test_image: str) -> None:
    cr = create_request(api, request_body(["true"], test_image, owner_uuid=project,
                                          runtime_constraints={"vcpus": 64, "ram": 128 << 20}))
    cr = wait_final(api, cr["uuid"], timeout=30)
    c = container(api, cr["container_uuid"])
    assert c["state"] == "Cancelled" and cr["output_uuid"] is None
    # As dispatch-cloud: runtime_status.error, no crunch-run (so no log); the detail lists the types.
    assert c["runtime_status"]["error"] == "constraints not satisfiable by any configured instance type"
    assert "Type 'local': 2 VCPUs" in c["runtime_status"]["errorDetail"]
    assert c["log"] is None


def test_mounts_are_visible_to_the_command(api, project: str, test_image: str) -> None:
    assert not os.path.exists("/keep"), "/keep exists on the host before the test: cannot check it stays absent"
    assert not os.path.exists("/var/spool/cwl")
    inputs = arvados.collection.Collection(api_client=api)
    with inputs.open("dir/input.txt", "w") as f:
        f.write("input data\n")
    inputs.save_new(name="mount inputs", owner_uuid=project)
    pdh = inputs.portable_data_hash()
    script = f"""set -e
cat /keep/{pdh}/dir/input.txt > copied.txt
cat /var/spool/cwl/cwl.input.json > json.txt
cat /etc/note.txt > text.txt
cat /single/input.txt > single.txt
echo tmp-ok > /tmp/probe && cat /tmp/probe > tmp.txt
touch /keep/{pdh}/dir/forbidden 2>/dev/null && echo writable > keep-writable.txt || true
pwd > pwd.txt
"""
    mounts = {
        "/var/spool/cwl": {"kind": "tmp", "capacity": 64 << 20},
        "/tmp": {"kind": "tmp", "capacity": 64 << 20},
        f"/keep/{pdh}": {"kind": "collection", "portable_data_hash": pdh},
        "/single/input.txt": {"kind": "collection", "uuid": inputs.manifest_locator(), "path": "dir/input.txt"},
        "/var/spool/cwl/cwl.input.json": {"kind": "json", "content": {"x": [1, {"y": "z"}]}},
        "/etc/note.txt": {"kind": "text", "content": "a text mount\n"},
    }
    cr = create_request(api, request_body(["sh", "-c", script], test_image, owner_uuid=project, mounts=mounts))
    cr = wait_final(api, cr["uuid"])
    c = container(api, cr["container_uuid"])
    logs = collection_files(api, cr["log_uuid"])
    assert c["exit_code"] == 0, logs.get("stderr.txt", b"").decode()[-2000:]
    # The uuid-named collection mount was resolved to its hash on the container.
    assert c["mounts"]["/single/input.txt"]["portable_data_hash"] == pdh
    out = collection_files(api, cr["output_uuid"])
    assert out["copied.txt"] == b"input data\n"
    assert json.loads(out["json.txt"]) == {"x": [1, {"y": "z"}]}
    assert out["text.txt"] == b"a text mount\n"
    assert out["single.txt"] == b"input data\n"
    assert out["tmp.txt"] == b"tmp-ok\n"
    assert out["pwd.txt"] == b"/var/spool/cwl\n"
    assert "keep-writable.txt" not in out, "a read-only collection mount was writable"
    assert not os.path.exists("/keep"), "/keep was created on the host"
    assert not os.path.exists("/var/spool/cwl"), "/var/spool/cwl was created on the host"


# --------------------------------------------------------------------------- what a CWL runner needs

def _inputs(api, project: str, files: dict[str, str]) -> str:
    """A saved collection holding *files* (path -> text); its portable data hash."""
    coll = arvados.collection.Collection(api_client=api)
    for path, text in files.items():
        with coll.open(path, "w") as f:
            f.write(text)
    coll.save_new(name=f"inputs {secrets.token_hex(4)}", owner_uuid=project)
    return coll.portable_data_hash()


def _run_ok(api, body: dict) -> tuple[dict, dict, dict[str, bytes]]:
    """Run a request that must succeed: (request, container, output files)."""
    cr = wait_final(api, create_request(api, body)["uuid"])
    c = container(api, cr["container_uuid"])
    logs = collection_files(api, cr["log_uuid"])
    assert (c["state"], c["exit_code"]) == ("Complete", 0), (logs.get("stderr.txt", b"") +
                                                            logs.get("crunch-run.txt", b"")).decode()[-3000:]
    return cr, c, collection_files(api, cr["output_uuid"])


def test_stdin_stdout_and_stderr_mounts_carry_the_streams(api, project: str, test_image: str) -> None:
    # As a-c-r submits a CommandLineTool with stdin/stdout/stderr: the streams are files, not logs.
    script = "tr a-z A-Z; echo 'to stderr' >&2; echo 'more stderr' >&2"
    mounts = {"/var/spool/cwl": {"kind": "tmp", "capacity": 64 << 20},
              "stdin": {"kind": "json", "content": "from stdin"},
              "stdout": {"kind": "file", "path": "/var/spool/cwl/out.txt"},
              "stderr": {"kind": "file", "path": "/var/spool/cwl/logs/err.txt"}}
    cr, _, out = _run_ok(api, request_body(["sh", "-c", script], test_image, owner_uuid=project,
                                           mounts=mounts))
    assert out == {"out.txt": b'"FROM STDIN"', "logs/err.txt": b"to stderr\nmore stderr\n"}
    logs = collection_files(api, cr["log_uuid"])
    assert b"to stderr" not in logs.get("stderr.txt", b"") and b"FROM STDIN" not in logs.get("stdout.txt", b"")


def test_stdout_and_stderr_mounts_may_share_a_file(api, project: str, test_image: str) -> None:
    mounts = {"/var/spool/cwl": {"kind": "tmp", "capacity": 64 << 20},
              "stdout": {"kind": "file", "path": "/var/spool/cwl/all.txt"},
              "stderr": {"kind": "file", "path": "/var/spool/cwl/all.txt"}}
    _, _, out = _run_ok(api, request_body(["sh", "-c", "echo one; echo two >&2; echo three"], test_image,
                                          owner_uuid=project, mounts=mounts))
    assert out == {"all.txt": b"one\ntwo\nthree\n"}


def test_bad_stream_mounts_are_refused_naming_the_mount(api, project: str, test_image: str) -> None:
    import arvados.errors
    import pytest

    tmp = {"/var/spool/cwl": {"kind": "tmp", "capacity": 64 << 20}}
    bad = [("stderr", {"kind": "tmp"}, "kind must be 'file'"),
           ("stdout", {"kind": "file", "path": "out.txt"}, "must be an absolute path"),
           ("stderr", {"kind": "file"}, "must be an absolute path"),
           ("stdin", {"kind": "tmp"}, "kind must be one of collection"),
           ("stdin", {"kind": "text", "content": "x"}, "kind must be one of collection, json")]
    for name, mount, message in bad:
        body = request_body(["true"], test_image, owner_uuid=project, mounts={**tmp, name: mount})
        with pytest.raises(arvados.errors.ApiError) as info:
            create_request(api, body)
        assert int(info.value.resp.status) == 422
        errors = " ".join(json.loads(info.value.content)["errors"])
        assert f"mounts['{name}']" in errors and message in errors, errors


def test_mounts_under_output_path_prepopulate_the_output(api, project: str, test_image: str) -> None:
    pdh = _inputs(api, project, {"dir/input.txt": "input data\n", "dir/other.txt": "other\n",
                                 "top.txt": "top\n"})
    script = """set -e
cat inputs/a.txt > seen.txt
if (echo x > ro_dir/input.txt) 2>/dev/null; then echo ro-writable; exit 9; fi
rm -rf inputs 2>/dev/null || true
echo changed > rw_dir/other.txt && rm rw_dir/input.txt && echo new > rw_dir/new.txt
echo appended >> rw_file.txt
cat secret.txt > /tmp/secret-seen
echo own > own.txt
"""
    mounts = {
        "/var/spool/cwl": {"kind": "tmp", "capacity": 64 << 20},
        "/tmp": {"kind": "tmp", "capacity": 64 << 20},
        "/var/spool/cwl/inputs/a.txt": {"kind": "collection", "portable_data_hash": pdh, "path": "dir/input.txt"},
        "/var/spool/cwl/ro_dir": {"kind": "collection", "portable_data_hash": pdh, "path": "dir"},
        "/var/spool/cwl/rw_dir": {"kind": "collection", "portable_data_hash": pdh, "path": "/dir",
                                  "writable": True},
        "/var/spool/cwl/rw_file.txt": {"kind": "collection", "portable_data_hash": pdh, "path": "top.txt",
                                       "writable": True},
        "/var/spool/cwl/lit/note.txt": {"kind": "text", "content": "a note\n"},
        "/var/spool/cwl/cwl.input.json": {"kind": "json", "content": {"x": 1}},
        "/var/spool/cwl/ignored": {"kind": "collection", "portable_data_hash": pdh, "exclude_from_output": True},
    }
    secret = {"/var/spool/cwl/secret.txt": {"kind": "text", "content": "s3cret"}}
    _, _, out = _run_ok(api, request_body(["sh", "-c", script], test_image, owner_uuid=project,
                                          mounts=mounts, secret_mounts=secret))
    assert out == {
        "seen.txt": b"input data\n", "own.txt": b"own\n",
        "inputs/a.txt": b"input data\n",                                  # read-only file mount
        "ro_dir/input.txt": b"input data\n", "ro_dir/other.txt": b"other\n",  # read-only directory
        "rw_dir/other.txt": b"changed\n", "rw_dir/new.txt": b"new\n",     # the copy as the command left it
        "rw_file.txt": b"top\nappended\n",
        "lit/note.txt": b"a note\n", "cwl.input.json": b'{"x": 1}',
    }  # neither the secret nor the excluded mount, nor empty mount points


def test_output_glob_applies_to_mounts_under_output_path(api, project: str, test_image: str) -> None:
    pdh = _inputs(api, project, {"dir/input.txt": "input data\n", "dir/other.txt": "other\n"})
    mounts = {"/var/spool/cwl": {"kind": "tmp", "capacity": 64 << 20},
              "/var/spool/cwl/ro": {"kind": "collection", "portable_data_hash": pdh, "path": "dir"},
              "/var/spool/cwl/deep/note.txt": {"kind": "text", "content": "note\n"}}
    _, _, out = _run_ok(api, request_body(["sh", "-c", "echo a > a.out; echo b > b.tmp"], test_image,
                                          owner_uuid=project, mounts=mounts,
                                          output_glob=["*.out", "ro/input.txt", "deep/**"]))
    assert out == {"a.out": b"a\n", "ro/input.txt": b"input data\n", "deep/note.txt": b"note\n"}


def test_collection_mounts_of_a_file_or_a_subdirectory(api, project: str, test_image: str) -> None:
    pdh = _inputs(api, project, {"dir/input.txt": "input data\n", "dir/sub/deep.txt": "deep\n"})
    script = """set -e
cat /var/lib/cwl/stg1/input.txt > file.txt
test -f /var/lib/cwl/stg1/input.txt
ls /var/lib/cwl/stg2 | tr '\\n' ' ' > listing.txt
cat /var/lib/cwl/stg2/sub/deep.txt > deep.txt
cat /var/lib/cwl/stg3.txt > slash.txt
"""
    mounts = {"/var/spool/cwl": {"kind": "tmp", "capacity": 64 << 20},
              "/var/lib/cwl/stg1/input.txt": {"kind": "collection", "portable_data_hash": pdh, "path": "dir/input.txt"},
              "/var/lib/cwl/stg2": {"kind": "collection", "portable_data_hash": pdh, "path": "dir"},
              "/var/lib/cwl/stg3.txt": {"kind": "collection", "portable_data_hash": pdh, "path": "/dir/sub/deep.txt"}}
    _, _, out = _run_ok(api, request_body(["sh", "-c", script], test_image, owner_uuid=project, mounts=mounts))
    assert out == {"file.txt": b"input data\n", "listing.txt": b"input.txt sub ", "deep.txt": b"deep\n",
                   "slash.txt": b"deep\n"}


def test_max_run_time_stops_the_container(api, project: str, test_image: str) -> None:
    body = request_body(["sleep", "1000"], test_image, owner_uuid=project, container_count_max=1,
                        scheduling_parameters={"max_run_time": 1}, environment={"RUN": secrets.token_hex(6)})
    started = time.monotonic()
    cr = wait_final(api, create_request(api, body)["uuid"], timeout=30)
    elapsed = time.monotonic() - started
    c = container(api, cr["container_uuid"])
    assert c["state"] == "Cancelled" and cr["output_uuid"] is None
    assert 1 <= elapsed < 15, f"stopped after {elapsed:.1f}s"
    crunch_log = collection_files(api, cr["log_uuid"])["crunch-run.txt"].decode()
    assert len(re.findall("maximum run time exceeded", crunch_log)) == 1, crunch_log
    assert "maximum run time exceeded" in c["runtime_status"]["error"]


def test_nested_mount_points_are_made_in_the_writable_mount_and_removed(tmp_path) -> None:
    from toil_arvados.localcluster.mount_points import make_mount_points as _make_mount_points, \
        remove_mount_points as _remove_mount_points

    out, cache = tmp_path / "out", tmp_path / "cache"
    (out / "exists").mkdir(parents=True)
    (cache / "d").mkdir(parents=True)
    (tmp_path / "note.txt").write_text("x")
    mounts = [{"path": "/var/spool/cwl", "source": str(out), "writable": True},
              {"path": "/var/spool/cwl/a/b/note.txt", "source": str(tmp_path / "note.txt"), "writable": False},
              {"path": "/var/spool/cwl/exists/dir", "source": str(cache / "d"), "writable": False},
              {"path": "/var/spool/cwl/ro", "source": str(cache), "writable": False},
              {"path": "/var/spool/cwl/ro/inner.txt", "source": str(tmp_path / "note.txt"), "writable": False}]
    created = _make_mount_points(mounts)
    assert (out / "a" / "b" / "note.txt").is_file() and (out / "exists" / "dir").is_dir()
    assert (out / "ro").is_dir() and not (cache / "inner.txt").exists(), "created inside a read-only source"
    (out / "a" / "kept.txt").write_text("the command wrote this")
    _remove_mount_points(created)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["a", "a/kept.txt", "exists"]
