"""Small helpers the end-to-end tests share: container request bodies and deadline polling.

Why a module rather than fixtures: these are plain functions over an SDK client, used with
clients the tests build themselves too (a second user, a restarted cluster).
"""
from __future__ import annotations

import json
import secrets
import time
from typing import Any, Callable, TypeVar

T = TypeVar("T")

POLL = 0.02  # seconds between two polls; the deadline, not this, bounds a wait


def wait_for(fetch: Callable[[], T], done: Callable[[T], bool], timeout: float = 30.0,
             what: str = "condition") -> T:
    """Call ``fetch`` until ``done`` holds for its value; fail with the last value at the deadline."""
    deadline = time.monotonic() + timeout
    value = fetch()
    while not done(value):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last value: {value!r}")
        time.sleep(POLL)
        value = fetch()
    return value


def request_body(command: list[str], image: str, **overrides: Any) -> dict:
    """A committed container request with an output dir: the smallest one a cluster runs."""
    body: dict[str, Any] = {
        "name": "e2e", "state": "Committed", "priority": 500, "command": command,
        "container_image": image, "output_path": "/var/spool/cwl", "cwd": "/var/spool/cwl",
        "runtime_constraints": {"vcpus": 1, "ram": 128 << 20},
        "mounts": {"/var/spool/cwl": {"kind": "tmp", "capacity": 64 << 20}},
    }
    body.update(overrides)
    return body


def create_request(api: Any, body: dict, **params: Any) -> dict:
    return api.container_requests().create(body={"container_request": body}, **params).execute()


def get_request(api: Any, uuid: str) -> dict:
    return api.container_requests().get(uuid=uuid).execute()


def wait_final(api: Any, uuid: str, timeout: float = 60.0) -> dict:
    """The container request once it is Final."""
    return wait_for(lambda: get_request(api, uuid), lambda cr: cr["state"] == "Final", timeout,
                    f"container request {uuid} to be Final")


def container(api: Any, uuid: str) -> dict:
    return api.containers().get(uuid=uuid).execute()


def wait_container_state(api: Any, uuid: str, state: str, timeout: float = 30.0) -> dict:
    return wait_for(lambda: container(api, uuid), lambda c: c["state"] == state, timeout,
                    f"container {uuid} to be {state}")


def collection_files(api: Any, locator: str) -> dict[str, bytes]:
    """Every file of a collection (uuid, portable data hash or manifest text): path -> bytes."""
    import arvados.collection

    reader = arvados.collection.CollectionReader(locator, api_client=api)
    out: dict[str, bytes] = {}

    def walk(node: Any, prefix: str) -> None:
        for name in node.keys():
            item = node[name]
            if isinstance(item, arvados.collection.RichCollectionBase):
                walk(item, f"{prefix}{name}/")
            else:
                with node.open(name, "rb") as f:
                    out[prefix + name] = f.read()

    walk(reader, "")
    return out


def admin_client(cfg: Any) -> Any:
    """An SDK client for a cluster config's cluster, with its admin token (private clusters)."""
    import arvados

    return arvados.api("v1", host=cfg.api_host, token=cfg.root_token, insecure=True, num_retries=2)


def refused(call: Any, statuses: tuple[int, ...]) -> str:
    """Run an SDK request that must fail with one of ``statuses``; the error text."""
    import arvados.errors
    import pytest

    with pytest.raises(arvados.errors.ApiError) as info:
        call.execute()
    assert int(info.value.resp.status) in statuses, info.value
    return " ".join(json.loads(info.value.content)["errors"])


def user_client(cluster_env: dict[str, str], token: str) -> Any:
    """An SDK client of the cluster in ``cluster_env`` with ``token`` (TLS verified)."""
    import arvados

    return arvados.api("v1", host=cluster_env["ARVADOS_API_HOST"], token=token, num_retries=0)


def make_user(api: Any, cluster_env: dict[str, str], name: str) -> tuple[dict, Any]:
    """A non-admin user the admin made (through the API, as on Arvados) and a client with their token."""
    tag = secrets.token_hex(4)
    user = api.users().create(body={"user": {
        "first_name": name, "last_name": tag, "email": f"{name}-{tag}@localhost",
        "username": f"{name}{tag}", "is_active": True}}).execute()
    assert user["is_admin"] is False
    token = api.api_client_authorizations().create(body={"api_client_authorization": {
        "owner_uuid": user["uuid"]}}).execute()
    return user, user_client(cluster_env, token["api_token"])


def grant(client: Any, tail: str, head: str, level: str = "can_read") -> dict:
    """A permission link ``tail`` -> ``head`` made by ``client``."""
    return client.links().create(body={"link": {"link_class": "permission", "name": level,
                                                "tail_uuid": tail, "head_uuid": head}}).execute()
