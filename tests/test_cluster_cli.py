"""``toil-arvados cluster ...``: a stable address, one process per state directory, which cluster a
command targets, and quick one-line failures.

Each test runs the real command line (a subprocess, as a user's shell would) against its own
cluster in a fresh state directory, with a private registry of known clusters.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import arvados
import pytest

from toil_arvados.localcluster import control

from conftest import TEST_IMAGE, store_images
from e2e_util import container, create_request, request_body, wait_final


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A user's environment without any ARVADOS_* settings, its cluster registry in tmp_path."""
    registry = str(tmp_path / "clusters.json")
    monkeypatch.setenv("TOIL_ARVADOS_CLUSTER_REGISTRY", registry)  # control.up in this process too
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARVADOS_")}
    env.update(TOIL_ARVADOS_CLUSTER_REGISTRY=registry, TOIL_ARVADOS_CLUSTER_DIR=str(tmp_path / "default"))
    return env


@pytest.fixture
def state(tmp_path: Path):
    state = tmp_path / "cli-cluster"
    yield state
    control.down(state)


def cli(env: dict[str, str], *args: str, timeout: float = 120, group: str = "cluster") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "toil_arvados.cli", group, *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def one_line(proc: subprocess.CompletedProcess) -> str:
    """The error a failed command printed: exactly one line, no traceback."""
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_down_up_keeps_the_address_at_once(cli_env, state: Path, built_images) -> None:
    """A restarted cluster listens on the ports it had, right after ``down`` (TIME_WAIT
    connections do not block them), and a client made before the restart keeps working."""
    assert cli(cli_env, "up", "--state-dir", str(state), "--cores", "1", "--ram", "1G").returncode == 0
    cfg = control.ClusterConfig.load(state)
    api = arvados.api("v1", host=cfg.api_host, token=cfg.root_token, insecure=True, num_retries=3)
    store_images(cfg, [built_images[TEST_IMAGE]])
    done = wait_final(api, create_request(api, request_body(["true"], TEST_IMAGE))["uuid"])  # leaves connections
    assert container(api, done["container_uuid"])["exit_code"] == 0

    assert cli(cli_env, "down", "--state-dir", str(state)).returncode == 0
    started = time.monotonic()
    proc = cli(cli_env, "up", "--state-dir", str(state), "--port", str(cfg.api_port))
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started < 30
    after = control.ClusterConfig.load(state)
    assert (after.api_port, after.keep_port) == (cfg.api_port, cfg.keep_port)
    assert f"https://{cfg.api_host}" in proc.stdout
    assert api.users().current().execute()["uuid"] == cfg.admin_user_uuid  # the old client


def test_second_up_or_server_on_a_running_state_dir_is_refused(cli_env, state: Path) -> None:
    cfg = control.up(state, cores=1, ram=1 << 30)
    pid = int((state / "server.pid").read_text())
    line = one_line(cli(cli_env, "up", "--state-dir", str(state)))
    assert "already running" in line and str(state) in line
    server = subprocess.run([sys.executable, "-m", "toil_arvados.localcluster.server", "--state-dir", str(state)],
                            env=cli_env, capture_output=True, text=True, timeout=60)
    assert server.returncode == 1
    line = one_line(server)
    assert "in use by process" in line and str(pid) in line
    assert control.answers(cfg) and int((state / "server.pid").read_text()) == pid  # untouched


def test_upload_to_a_stopped_cluster_fails_fast(cli_env, state: Path) -> None:
    """`images build --upload` against a cluster that does not answer: one line, in seconds,
    before any building."""
    cfg = control.up(state, cores=1, ram=1 << 30)
    control.down(state)
    started = time.monotonic()
    env = dict(cli_env, **control.client_env(cfg))
    line = one_line(cli(env, "build", TEST_IMAGE, "--upload", "--cache-dir", str(state / "no-cache"),
                        group="images", timeout=60))
    assert time.monotonic() - started < 15
    assert cfg.api_host in line and "does not answer" in line
    assert cfg.root_token_secret not in line
    assert not (state / "no-cache").exists()  # nothing was built


def test_commands_target_the_cluster_arvados_api_host_names(cli_env, state: Path, tmp_path: Path) -> None:
    """Without --state-dir, the cluster whose address ARVADOS_API_HOST holds (as ``cluster env``
    exported it) is the one a command acts on; an address no local cluster has is an error."""
    cfg = control.up(state, cores=1, ram=1 << 30)
    env = dict(cli_env, **control.client_env(cfg))
    status = cli(env, "status")
    assert status.returncode == 0 and str(state) in status.stdout
    assert f"ARVADOS_API_HOST={cfg.api_host}" in cli(env, "env").stdout

    assert cli(env, "down").returncode == 0
    assert not control.is_running(state)
    stopped = cli(env, "status")
    assert stopped.returncode == 3 and str(state) in stopped.stdout
    assert cli(env, "up").returncode == 0 and control.answers(cfg)

    elsewhere = dict(cli_env, ARVADOS_API_HOST="127.0.0.1:1", ARVADOS_API_TOKEN="x")
    line = one_line(cli(elsewhere, "status"))
    assert "ARVADOS_API_HOST=127.0.0.1:1" in line and "--state-dir" in line
    assert not (tmp_path / "default").exists()  # never fell back to the default cluster


def test_a_held_state_dir_that_does_not_answer(cli_env, state: Path) -> None:
    """A process holds the state directory (a cluster starting, or hung) but nothing answers:
    `status` says so, and `up` refuses in one line rather than start a second server on it."""
    from toil_arvados.localcluster import statelock
    from toil_arvados.localcluster.config import ClusterConfig

    ClusterConfig.load_or_create(state).save()
    lock = statelock.acquire(state)  # this test process plays the hung cluster
    try:
        status = cli(cli_env, "status", "--state-dir", str(state))
        assert status.returncode == 4 and "does not answer" in status.stdout
        line = one_line(cli(cli_env, "up", "--state-dir", str(state)))
        assert f"held by process {os.getpid()}" in line and "does not answer" in line
    finally:
        os.close(lock)
    assert cli(cli_env, "status", "--state-dir", str(state)).returncode == 3  # the lock went with it
