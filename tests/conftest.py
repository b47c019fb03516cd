"""Shared fixtures: one real local cluster per test session, talked to through the real SDK."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Iterator

import pytest

from toil_arvados.localcluster import control
from toil_arvados.localcluster.config import ClusterConfig

# Toil's shipped unittest-style suites (batch system, job store) need Toil's own fixtures.
pytest_plugins = ["toil.test.conftest"]

REPO = Path(__file__).resolve().parent.parent
#: Images every test cluster has (see built_images): a plain Debian one and one with Python.
TEST_IMAGE = "debian:stable-slim"
PYTHON_IMAGE = "python:3-slim"
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def built_images() -> dict[str, Any]:
    """The images the tests run in, built from Debian packages (cached across runs under
    ~/.cache/toil-arvados): the Toil worker image and the CWL suite's plain Debian image."""
    from toil_arvados.images.build import SUITE_RECIPES, build_image
    from toil_arvados.images.worker import build_worker_image

    return {"worker": build_worker_image(),
            TEST_IMAGE: build_image(SUITE_RECIPES[TEST_IMAGE]),
            PYTHON_IMAGE: build_image(SUITE_RECIPES[PYTHON_IMAGE])}


def store_images(cfg: ClusterConfig, images: Iterable[Any]) -> None:
    """Store built images in a cluster's Keep as an administrator does for everyone: with
    ``arv-keepdocker`` (here ``store_image``) into a project shared with "All users"."""
    import arvados

    from toil_arvados.images.keep import store_image
    from toil_arvados.localcluster.bootstrap import all_users_group_uuid

    api = arvados.api("v1", host=cfg.api_host, token=cfg.root_token, insecure=True, num_retries=2)
    project = api.groups().create(body={"group": {"name": "Shared images", "group_class": "project"}},
                                  ensure_unique_name=True).execute()["uuid"]
    api.links().create(body={"link": {"link_class": "permission", "name": "can_read", "head_uuid": project,
                                      "tail_uuid": all_users_group_uuid(cfg.cluster_id)}}).execute()
    for built in images:
        store_image(api, built.tarball, built.image_id, built.names, owner_uuid=project,
                    properties=built.properties)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory, built_images: dict[str, Any]) -> Iterator[ClusterConfig]:
    """A cluster in a temp dir on free loopback ports, with the worker and test images in its
    Keep (as an administrator would have stored them), stopped at the end of the session."""
    state = tmp_path_factory.mktemp("cluster")
    # Two storage classes, as a site with an archive tier declares them (StorageClasses).
    cfg = control.up(state, cores=2, ram=4 << 30, storage_classes=["default", "archive"])
    try:
        store_images(cfg, built_images.values())
        yield cfg
    finally:
        control.down(state)


@pytest.fixture(scope="session")
def cluster_env(cluster: ClusterConfig) -> Iterator[dict[str, str]]:
    """The SDK's environment variables for the session's cluster, set in os.environ."""
    import arvados.config

    env = control.client_env(cluster)
    # Verification on, as against a real cluster: the bundle in SSL_CERT_FILE, never "insecure".
    saved = {k: os.environ.get(k) for k in [*env, "ARVADOS_API_HOST_INSECURE"]}
    os.environ.pop("ARVADOS_API_HOST_INSECURE", None)
    os.environ.update(env)
    # The SDK reads its settings once (at import); re-read them so the settings it consults
    # later (e.g. for the websocket client) are this cluster's.
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
                       num_retries=2)


@pytest.fixture(scope="session")
def test_image(cluster: ClusterConfig) -> str:
    """A plain Debian image (sh, coreutils) stored in the session cluster's Keep."""
    return TEST_IMAGE


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


@pytest.fixture
def own_cluster(tmp_path: Path):
    """A private cluster (1 core, 1 GiB) on a fresh state dir, for tests that stop and start it:
    the session cluster must not be stopped under the other tests. Yields (state dir, config)."""
    state = tmp_path / "own-cluster"
    cfg = control.up(state, cores=1, ram=1 << 30)
    try:
        yield state, cfg
    finally:
        control.down(state)



@pytest.fixture(scope="module")
def alice(api, cluster_env):
    """A non-admin user of the session's cluster (fresh per module) and their SDK client."""
    from e2e_util import make_user

    return make_user(api, cluster_env, "alice")


@pytest.fixture(scope="module")
def mallory(api, cluster_env):
    """A second non-admin user, to try what one user must not do to another."""
    from e2e_util import make_user

    return make_user(api, cluster_env, "mallory")
