"""Shared fixtures: one real local cluster per test session, talked to through the real SDK."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from toil_arvados.localcluster import control
from toil_arvados.localcluster.config import ClusterConfig

# Toil's shipped unittest-style suites (batch system, job store) need Toil's own fixtures.
pytest_plugins = ["toil.test.conftest"]

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterConfig]:
    """A cluster in a temp dir on free loopback ports, stopped at the end of the session."""
    state = tmp_path_factory.mktemp("cluster")
    cfg = control.up(state, cores=2, ram=4 << 30)
    try:
        yield cfg
    finally:
        control.down(state)


@pytest.fixture(scope="session")
def cluster_env(cluster: ClusterConfig) -> Iterator[dict[str, str]]:
    """The SDK's environment variables for the session's cluster, set in os.environ."""
    import arvados.config

    env = control.client_env(cluster)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    # The SDK reads its settings once (at import); re-read them so the settings it consults
    # later (e.g. ARVADOS_API_HOST_INSECURE for the websocket client) are this cluster's.
    arvados.config.initialize()
    try:
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        arvados.config.initialize()


@pytest.fixture(scope="session")
def api(cluster_env: dict[str, str]):
    import arvados

    return arvados.api("v1", host=cluster_env["ARVADOS_API_HOST"], token=cluster_env["ARVADOS_API_TOKEN"],
                       insecure=True, num_retries=2)


@pytest.fixture(scope="session")
def stand_in_image(cluster_env: dict[str, str]) -> str:
    """An image name containers can use: a stand-in registered in Keep (no registry here)."""
    from toil_arvados.localcluster.images import register_stand_in

    name = "debian:stable-slim"
    register_stand_in(cluster_env, name)
    return name


@pytest.fixture
def project(api, request: pytest.FixtureRequest) -> str:
    """A fresh project owned by the admin, named after the test, for the test's objects."""
    group = api.groups().create(body={"group": {"name": request.node.name[:200], "group_class": "project"}},
                                ensure_unique_name=True).execute()
    return group["uuid"]


@pytest.fixture
def env(cluster_env: dict[str, str]) -> dict[str, str]:
    """The environment a user's shell would have for running Toil against the test cluster."""
    from toil_cli import toil_env

    return toil_env(cluster_env)


@pytest.fixture
def clean_project(api, project):
    """The test's project; whatever the test leaves running there is cancelled afterwards."""
    from toil_cli import cancel_all

    yield project
    cancel_all(api, project)
