"""The Docker runtime: containers with real images run in Docker, as crunch-run runs them.

End-to-end tests use their own cluster (not the session's), started with ``--docker-host``, whose
``debian:stable-slim`` is the image ``toil-arvados images build --upload`` builds from Debian
packages (the same archive the namespace runtime runs). They need a Docker engine (``.ci/start-docker`` provides one in CI, as
``TOIL_ARVADOS_DOCKER_HOST``) and are skipped, saying so, when none answers. The mapping tests at the top need nothing.
"""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from e2e_util import collection_files, container, create_request, request_body, wait_container_state, wait_final, wait_for
from toil_arvados.localcluster import control
from toil_arvados.localcluster.config import ClusterConfig
from toil_arvados.localcluster.runtime.docker import (MIN_DOCKER_RAM, container_name, create_args,
                                                       placeholders)
from toil_arvados.localcluster.runtime.selection import (RuntimeSelector, engine_answers,
                                                       resolve_docker_host)

REPO = Path(__file__).resolve().parent.parent
# .ci/start-docker's engine, else the one a cluster would use ($DOCKER_HOST, Docker's default socket).
DOCKER_HOST = os.environ.get("TOIL_ARVADOS_DOCKER_HOST") or resolve_docker_host()
ENGINE = engine_answers(DOCKER_HOST)
needs_engine = pytest.mark.skipif(
    not ENGINE, reason=f"no Docker engine reachable at {DOCKER_HOST} (CI starts one with .ci/start-docker)")
IMAGE = "debian:stable-slim"


# --------------------------------------------------------------------------- pure mapping

def _spec(**over: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "container_uuid": "zzzzz-dz642-000000000000001", "command": ["echo", "a b"],
        "cwd": "/var/spool/cwl", "environment": {"TOKEN": "secret-value", "DOCKER_X": "1"},
        "mounts": [{"path": "/var/spool/cwl", "source": "/h/out", "writable": True},
                   {"path": "/keep/a,b", "source": "/h/keep", "writable": False}],
        "stdin": None, "vcpus": 2, "ram": 256 << 20, "api": False,
    }
    spec.update(over)
    return spec


def test_create_args_map_limits_mounts_network_and_command() -> None:
    args, env = create_args(_spec(), "f" * 64, owner="/state", host_cpus=8)
    assert args[:3] == ["create", "--name", container_name("zzzzz-dz642-000000000000001")]
    assert args[args.index("--network") + 1] == "none"
    assert args[args.index("--cpus") + 1] == "2"
    assert args[args.index("--memory") + 1] == str(256 << 20)
    assert args[args.index("--memory-swap") + 1] == str(256 << 20)
    assert args[args.index("--workdir") + 1] == "/var/spool/cwl"
    mounts = [args[i + 1] for i, a in enumerate(args) if a == "--mount"]
    # Docker reads --mount as a CSV line: a comma in a path is quoted.
    assert mounts == ["type=bind,source=/h/out,target=/var/spool/cwl",
                      'type=bind,source=/h/keep,"target=/keep/a,b",readonly']
    # The command follows the image unchanged; no secret value is on the command line.
    assert args[-3:] == ["sha256:" + "f" * 64, "echo", "a b"]
    assert "secret-value" not in " ".join(args) and env == {"TOKEN": "secret-value"}
    assert "TOKEN" in args and "DOCKER_X=1" in args  # DOCKER_* would reconfigure the CLI itself
    assert "--interactive" not in args


def test_create_args_api_means_host_network_and_limits_are_clamped() -> None:
    args, _ = create_args(_spec(api=True, vcpus=16, ram=1, cwd=".", stdin="/h/in"), "f" * 64,
                          owner="/s", host_cpus=2)
    assert args[args.index("--network") + 1] == "host"
    assert args[args.index("--cpus") + 1] == "2"  # Docker refuses more CPUs than the host has
    assert args[args.index("--memory") + 1] == str(MIN_DOCKER_RAM)
    assert "--workdir" not in args and "--interactive" in args


def test_placeholders_are_the_nested_mount_points_docker_creates(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "exists").mkdir(parents=True)
    (tmp_path / "f.json").write_text("{}")
    mounts = [{"path": "/var/spool/cwl", "source": str(out), "writable": True},
              {"path": "/var/spool/cwl/sub/cwl.input.json", "source": str(tmp_path / "f.json")},
              {"path": "/var/spool/cwl/exists", "source": str(tmp_path)}]
    assert placeholders(mounts) == [(str(out / "sub"), True), (str(out / "sub" / "cwl.input.json"), False)]


class _Fake:
    def __init__(self) -> None:
        self.started: list[dict] = []

    async def start(self, spec: dict) -> str:
        self.started.append(spec)
        return "started"


class _FakeDocker(_Fake):
    docker_host = "unix:///nonexistent/docker.sock"

    async def remove_leftovers(self) -> int:
        return 0


def test_selector_uses_docker_when_an_engine_answers(tmp_path: Path) -> None:
    ns, dk = _Fake(), _FakeDocker()
    sel = RuntimeSelector(ns, dk)  # type: ignore[arg-type]
    sel.docker_available = lambda: True  # type: ignore[method-assign]
    log = tmp_path / "crunch-run.txt"
    base = {"image": "abc+1", "crunch_log": str(log), "image_tarball": "/x/" + "a" * 64 + ".tar"}
    asyncio.run(sel.start(base))
    assert len(ns.started) == 0 and len(dk.started) == 1
    # No engine answering: the namespace runtime runs the same image, and the log says why.
    sel.docker_available = lambda: False  # type: ignore[method-assign]
    asyncio.run(sel.start(base))
    assert len(ns.started) == 1
    assert "runtime: namespace (no Docker engine answers at unix:///nonexistent" in log.read_text()


def test_engine_probe_says_no_for_a_missing_socket(tmp_path: Path) -> None:
    assert engine_answers(f"unix://{tmp_path}/none.sock") is False
    assert engine_answers("ssh://somewhere") is False


# --------------------------------------------------------------------------- end to end

def docker(*args: str, check: bool = True) -> str:
    p = subprocess.run(["docker", *args], capture_output=True, text=True,
                       env={**os.environ, "DOCKER_HOST": DOCKER_HOST})
    if check and p.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {p.stderr.strip()}")
    return p.stdout.strip()


@pytest.fixture(scope="module")
def dcluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterConfig]:
    state = tmp_path_factory.mktemp("docker-cluster")
    cfg = control.up(state, cores=2, ram=4 << 30, docker_host=DOCKER_HOST)
    try:
        yield cfg
    finally:
        control.down(state)


@pytest.fixture(scope="module")
def dapi(dcluster: ClusterConfig) -> Any:
    import arvados

    env = control.client_env(dcluster)
    return arvados.api("v1", host=env["ARVADOS_API_HOST"], token=env["ARVADOS_API_TOKEN"], insecure=True,
                       num_retries=2)


def _upload_with_cli(cfg: ClusterConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    """``toil-arvados images build IMAGE --upload`` against *cfg* (the SDK's environment)."""
    from toil_arvados import cli

    for key, value in control.client_env(cfg).items():
        monkeypatch.setenv(key, value)
    assert cli.main(["images", "build", IMAGE, "--upload"]) == 0


@pytest.fixture(scope="module")
def image(dcluster: ClusterConfig, dapi: Any) -> dict[str, str]:
    """debian:stable-slim built by the CLI command and stored in Keep; then removed from the
    engine, so the first container must load it from its Keep collection."""
    started = time.monotonic()
    with pytest.MonkeyPatch.context() as mp:
        _upload_with_cli(dcluster, mp)
    print(f"images build {IMAGE} --upload: {time.monotonic() - started:.1f}s")
    links = dapi.links().list(filters=[["link_class", "=", "docker_image_repo+tag"],
                                       ["name", "in", [IMAGE, f"docker.io/{IMAGE}"]]]).execute()["items"]
    assert {link["name"] for link in links} == {IMAGE, f"docker.io/{IMAGE}"}
    coll = dapi.collections().get(uuid=links[0]["head_uuid"]).execute()
    props = coll["properties"]
    assert props["toil_arvados.stand_in_for"] == f"docker.io/{IMAGE}"
    assert "Debian bookworm packages" in props["toil_arvados.built_from"]
    import arvados.collection

    (tar_name,) = list(arvados.collection.CollectionReader(coll["portable_data_hash"], api_client=dapi).keys())
    image_id = tar_name.removesuffix(".tar")
    hashes = dapi.links().list(filters=[["link_class", "=", "docker_image_hash"],
                                        ["head_uuid", "=", coll["uuid"]]]).execute()["items"]
    assert [link["name"] for link in hashes] == [f"sha256:{image_id}"]
    docker("image", "rm", "--force", f"sha256:{image_id}")
    return {"id": image_id, "pdh": coll["portable_data_hash"]}


def _log(api: Any, cr_or_c: dict, name: str = "crunch-run.txt") -> str:
    """A log file of a request or a container, read as a user reads it: through the log collection
    of the (latest) request of the container (its own is trashed once it ends, as on Arvados)."""
    uuid = cr_or_c.get("log_uuid")
    if "log_uuid" not in cr_or_c:  # a container: its request's log, once the request is Final
        crs = api.container_requests().list(filters=[["container_uuid", "=", cr_or_c["uuid"]]],
                                            order=["created_at desc"], limit=1).execute()["items"]
        uuid = wait_final(api, crs[0]["uuid"])["log_uuid"]
    return collection_files(api, uuid).get(name, b"").decode()


def _run(api: Any, command: list[str], image_name: str = IMAGE, timeout: float = 120, **over: Any) -> tuple[dict, dict]:
    cr = create_request(api, request_body(command, image_name, **over), ensure_unique_name=True)
    cr = wait_final(api, cr["uuid"], timeout=timeout)
    return cr, container(api, cr["container_uuid"])


def _docker_state(uuid: str) -> dict | None:
    out = docker("inspect", "--type", "container", container_name(uuid), check=False)
    found = json.loads(out or "[]")  # a missing container: "[]" and an error
    return found[0] if found else None


@needs_engine
def test_real_image_runs_in_docker_loaded_from_its_keep_collection(dapi: Any, image: dict) -> None:
    script = (f"set -e; cat /etc/debian_version > version; if test -e {REPO}; then echo host-fs-visible; "
              "exit 5; fi; echo done")
    cr, c = _run(dapi, ["sh", "-c", script])
    crunch = _log(dapi, c)
    assert c["state"] == "Complete" and c["exit_code"] == 0, crunch + _log(dapi, c, "stderr.txt")
    assert f"runtime: docker (image sha256:{image['id']}" in crunch
    assert f"loading image {image['id']}.tar into Docker" in crunch  # from Keep, not the engine
    assert collection_files(dapi, c["output"])["version"].decode().startswith("12.")
    assert "done" in _log(dapi, c, "stdout.txt")
    # Loaded once: the next container finds the image in the engine.
    _, c2 = _run(dapi, ["true"])
    assert f"image sha256:{image['id']} already loaded" in _log(dapi, c2)
    assert docker("ps", "--all", "--quiet", "--filter", f"name={container_name(c['uuid'])}") == ""


@needs_engine
def test_mounts_are_bind_mounted_at_their_paths(dapi: Any, image: dict) -> None:
    import arvados.collection

    inputs = arvados.collection.Collection(api_client=dapi)
    with inputs.open("data/in.txt", "w") as f:
        f.write("keep data\n")
    with inputs.open("stdin.txt", "w") as f:
        f.write("to upper\n")
    inputs.save_new(name="docker mount inputs", ensure_unique_name=True)
    pdh = inputs.portable_data_hash()
    script = ("set -e; tr a-z A-Z; cp /keep/in/data/in.txt copied.txt; cp cwl.input.json seen.json; "
              "cp /etc/note.txt note.txt; echo t > /tmp/t; cat /tmp/t > tmp-ok; "
              "if touch /keep/in/new 2>/dev/null; then echo keep-writable >&2; exit 9; fi; "
              "if echo x >> cwl.input.json 2>/dev/null; then echo json-writable >&2; exit 9; fi")
    mounts = {
        "/var/spool/cwl": {"kind": "tmp", "capacity": 64 << 20},
        "/var/spool/cwl/cwl.input.json": {"kind": "json", "content": {"x": 1}},
        "/keep/in": {"kind": "collection", "portable_data_hash": pdh},
        "/etc/note.txt": {"kind": "text", "content": "a note\n"},
        "/tmp": {"kind": "tmp", "capacity": 64 << 20},
        "stdin": {"kind": "collection", "portable_data_hash": pdh, "path": "stdin.txt"},
        "stdout": {"kind": "file", "path": "/var/spool/cwl/upper.txt"},
    }
    _, c = _run(dapi, ["sh", "-c", script], mounts=mounts)
    assert c["state"] == "Complete" and c["exit_code"] == 0, _log(dapi, c, "stderr.txt") + _log(dapi, c)
    out = collection_files(dapi, c["output"])
    # The json mount under output_path is output too (pre-populated output), with its content.
    assert out == {"upper.txt": b"TO UPPER\n", "copied.txt": b"keep data\n", "seen.json": b'{"x": 1}',
                   "note.txt": b"a note\n", "tmp-ok": b"t\n", "cwl.input.json": b'{"x": 1}'}


@needs_engine
def test_stream_mounts_file_mounts_and_prepopulated_output(dapi: Any, image: dict) -> None:
    """What arvados-cwl-runner submits for a CommandLineTool: inputs mounted as single files or
    directories of a collection, InitialWorkDir entries as mounts under output_path (read-only
    and writable), and stdout/stderr going to files in the output directory."""
    import arvados.collection

    inputs = arvados.collection.Collection(api_client=dapi)
    for path, text in {"dir/input.txt": "input data\n", "dir/sub/deep.txt": "deep\n", "top.txt": "top\n"}.items():
        with inputs.open(path, "w") as f:
            f.write(text)
    inputs.save_new(name="docker cwl-style inputs", ensure_unique_name=True)
    pdh = inputs.portable_data_hash()
    script = ("set -e; cat /var/lib/cwl/stg1/input.txt; ls /var/lib/cwl/stg2 | tr '\\n' ' ' >&2; "
              "cat /var/lib/cwl/stg2/sub/deep.txt >&2; cat staged/a.txt > seen.txt; "
              "if (echo x > ro_dir/input.txt) 2>/dev/null; then exit 9; fi; "
              "echo changed > rw_dir/input.txt; rm rw_dir/sub/deep.txt; echo appended >> rw_file.txt")
    mounts = {
        "/var/spool/cwl": {"kind": "tmp", "capacity": 64 << 20},
        "/var/lib/cwl/stg1/input.txt": {"kind": "collection", "portable_data_hash": pdh, "path": "dir/input.txt"},
        "/var/lib/cwl/stg2": {"kind": "collection", "portable_data_hash": pdh, "path": "dir"},
        "/var/spool/cwl/staged/a.txt": {"kind": "collection", "portable_data_hash": pdh, "path": "dir/input.txt"},
        "/var/spool/cwl/ro_dir": {"kind": "collection", "portable_data_hash": pdh, "path": "dir/sub"},
        "/var/spool/cwl/rw_dir": {"kind": "collection", "portable_data_hash": pdh, "path": "dir", "writable": True},
        "/var/spool/cwl/rw_file.txt": {"kind": "collection", "portable_data_hash": pdh, "path": "top.txt",
                                       "writable": True},
        "/var/spool/cwl/lit/note.txt": {"kind": "text", "content": "a note\n"},
        "stdout": {"kind": "file", "path": "/var/spool/cwl/out.txt"},
        "stderr": {"kind": "file", "path": "/var/spool/cwl/err.txt"},
    }
    _, c = _run(dapi, ["sh", "-c", script], mounts=mounts)
    assert c["state"] == "Complete" and c["exit_code"] == 0, _log(dapi, c, "stderr.txt") + _log(dapi, c)
    assert collection_files(dapi, c["output"]) == {
        "out.txt": b"input data\n", "err.txt": b"input.txt sub deep\n", "seen.txt": b"input data\n",
        "staged/a.txt": b"input data\n", "ro_dir/deep.txt": b"deep\n",
        "rw_dir/input.txt": b"changed\n", "rw_file.txt": b"top\nappended\n", "lit/note.txt": b"a note\n"}
    assert "deep" not in _log(dapi, c, "stderr.txt")


@needs_engine
def test_max_run_time_stops_a_docker_container(dapi: Any, image: dict) -> None:
    started = time.monotonic()
    _, c = _run(dapi, ["sleep", "300"], container_count_max=1, scheduling_parameters={"max_run_time": 1})
    assert c["state"] == "Cancelled" and time.monotonic() - started < 30
    assert "maximum run time exceeded" in _log(dapi, c)
    assert _docker_state(c["uuid"]) is None


@needs_engine
def test_network_is_off_without_api_access_and_on_with_it(dapi: Any, dcluster: ClusterConfig, image: dict) -> None:
    port = dcluster.api_port
    probe = (f"ls /sys/class/net | tr '\\n' ' '; echo; "
             f"if (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null; then echo api-reachable; fi; "
             'echo "host=${ARVADOS_API_HOST:-unset}"')
    _, c = _run(dapi, ["bash", "-c", probe])
    out = _log(dapi, c, "stdout.txt")
    assert c["exit_code"] == 0, _log(dapi, c)
    assert "lo \n" in out and "api-reachable" not in out and "host=unset" in out, out
    assert "network: none" in _log(dapi, c)
    _, c = _run(dapi, ["bash", "-c", probe], runtime_constraints={"vcpus": 1, "ram": 128 << 20, "API": True})
    out = _log(dapi, c, "stdout.txt")
    assert "api-reachable" in out and f"host={dcluster.api_host}" in out, out
    assert "network: host (the container has API access)" in _log(dapi, c)


@needs_engine
def test_limits_and_cancel(dapi: Any, image: dict) -> None:
    body = request_body(["sleep", "300"], IMAGE, runtime_constraints={"vcpus": 1, "ram": 200 << 20})
    cr = create_request(dapi, body, ensure_unique_name=True)
    uuid = wait_for(lambda: dapi.container_requests().get(uuid=cr["uuid"]).execute()["container_uuid"],
                    bool, 30, "a container")
    state = wait_for(lambda: _docker_state(uuid), lambda s: bool(s and s["State"]["Running"]), 60,
                     "the Docker container to run")
    assert state["HostConfig"]["Memory"] == 200 << 20
    assert state["HostConfig"]["NanoCpus"] == 1_000_000_000
    assert state["HostConfig"]["NetworkMode"] == "none"
    assert state["Config"]["Image"] == f"sha256:{image['id']}"
    mounts = {m["Destination"]: m for m in state["Mounts"]}
    assert mounts["/var/spool/cwl"]["RW"] is True
    started = time.monotonic()
    dapi.container_requests().update(uuid=cr["uuid"], body={"container_request": {"priority": 0}}).execute()
    c = wait_container_state(dapi, uuid, "Cancelled", timeout=30)
    assert time.monotonic() - started < 15
    assert _docker_state(uuid) is None  # killed and removed
    assert "container killed (cancelled)" in _log(dapi, c)


@needs_engine
def test_memory_limit_is_enforced(dapi: Any, image: dict) -> None:
    grow = 'x=$(head -c 100000000 /dev/zero | tr "\\0" a); echo survived ${#x}'
    _, c = _run(dapi, ["bash", "-c", grow], runtime_constraints={"vcpus": 1, "ram": 16 << 20})
    assert (c["state"], c["exit_code"]) == ("Complete", 137), _log(dapi, c)
    assert "survived" not in _log(dapi, c, "stdout.txt")
    assert "Container using over 99% of memory" in _log(dapi, c)
    _, c = _run(dapi, ["bash", "-c", grow], runtime_constraints={"vcpus": 1, "ram": 512 << 20})
    assert c["exit_code"] == 0 and "survived 100000000" in _log(dapi, c, "stdout.txt")


@needs_engine
def test_exit_codes_and_missing_commands(dapi: Any, image: dict) -> None:
    _, c = _run(dapi, ["sh", "-c", "echo bad >&2; exit 3"])
    assert (c["state"], c["exit_code"]) == ("Complete", 3)
    assert "bad" in _log(dapi, c, "stderr.txt")
    _, c = _run(dapi, ["no-such-program-xyz"])
    assert (c["state"], c["exit_code"]) == ("Complete", 127)
    assert "no-such-program-xyz" in _log(dapi, c)


@needs_engine
def test_container_is_lost_when_its_docker_container_disappears(dapi: Any, image: dict) -> None:
    cr = create_request(dapi, request_body(["sleep", "300"], IMAGE, container_count_max=1), ensure_unique_name=True)
    uuid = wait_for(lambda: dapi.container_requests().get(uuid=cr["uuid"]).execute()["container_uuid"],
                    bool, 30, "a container")
    wait_for(lambda: _docker_state(uuid), lambda s: bool(s and s["State"]["Running"]), 60, "the Docker container")
    docker("rm", "--force", container_name(uuid))
    c = wait_container_state(dapi, uuid, "Cancelled", timeout=30)
    assert "lost" in c["runtime_status"]["error"]
    assert f"docker container {container_name(uuid)} disappeared" in _log(dapi, c)
    assert wait_final(dapi, cr["uuid"])["state"] == "Final"


@needs_engine
def test_docker_containers_see_only_their_image(dapi: Any, image: dict) -> None:
    cr = create_request(dapi, request_body(["sh", "-c", f"test -e {REPO} || echo isolated"], IMAGE),
                        ensure_unique_name=True)
    d = container(dapi, wait_final(dapi, cr["uuid"])["container_uuid"])
    assert d["exit_code"] == 0
    assert "isolated" in _log(dapi, d, "stdout.txt") and "runtime: docker" in _log(dapi, d)


@needs_engine
def test_exported_config_reports_where_containers_run(dapi: Any) -> None:
    assert dapi.configs().get().execute()["Containers"]["RuntimeEngine"] == "docker"


@needs_engine
def test_image_upload_is_idempotent(dcluster: ClusterConfig, dapi: Any, image: dict,
                                    capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    _run(dapi, ["true"])  # the image is in the engine again (loaded from Keep), as built
    before = dapi.collections().list(filters=[["name", "like", "Docker image %"]], count="exact").execute()["items_available"]
    _upload_with_cli(dcluster, monkeypatch)
    assert f"as {image['pdh']}" in capsys.readouterr().out
    after = dapi.collections().list(filters=[["name", "like", "Docker image %"]], count="exact").execute()["items_available"]
    assert after == before
