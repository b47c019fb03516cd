"""Small helpers the end-to-end tests share: container request bodies and deadline polling.

Why a module rather than fixtures: these are plain functions over an SDK client, used with
clients the tests build themselves too (a second user, a restarted cluster).
"""
from __future__ import annotations

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
