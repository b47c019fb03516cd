"""Container reuse as a client sees it: identical requests share a container, any change does not.

Every test's command carries a fresh marker so requests of other tests never match by chance.
"""
from __future__ import annotations

import secrets

import pytest

from e2e_util import container, create_request, request_body, wait_final


@pytest.fixture(scope="module")
def second_image(cluster, test_image: str) -> str:
    from conftest import PYTHON_IMAGE

    return PYTHON_IMAGE  # stored in every test cluster, another image than test_image


def _base(image: str, project: str) -> dict:
    marker = secrets.token_hex(6)
    return request_body(["sh", "-c", f"echo {marker} > out.txt"], image, owner_uuid=project,
                        environment={"A": "1"})


def _submit(api, body: dict) -> dict:
    return create_request(api, body)


def test_identical_requests_share_one_container(api, project: str, test_image: str) -> None:
    body = _base(test_image, project)
    first = _submit(api, body)
    second = _submit(api, dict(body, name="second", priority=100))  # name/priority do not matter
    assert second["container_uuid"] == first["container_uuid"]
    first, second = wait_final(api, first["uuid"]), wait_final(api, second["uuid"])
    assert container(api, first["container_uuid"])["state"] == "Complete"
    # A third one after completion reuses the finished container and is Final at once.
    third = _submit(api, body)
    assert third["container_uuid"] == first["container_uuid"]
    third = wait_final(api, third["uuid"], timeout=5)
    assert third["output_uuid"] and third["output_uuid"] != first["output_uuid"]
    outputs = {api.collections().get(uuid=cr["output_uuid"]).execute()["portable_data_hash"]
               for cr in (first, second, third)}
    assert len(outputs) == 1


CHANGES = {
    "command": lambda b: {"command": b["command"] + ["extra-arg"]},
    "environment": lambda b: {"environment": {"A": "2"}},
    "mounts": lambda b: {"mounts": dict(b["mounts"], **{"/tmp": {"kind": "tmp", "capacity": 1 << 20}})},
    "runtime_constraints": lambda b: {"runtime_constraints": dict(b["runtime_constraints"], ram=256 << 20)},
    # output_path must be a mount key (Arvados), so the other output dir is mounted too.
    "output_path": lambda b: {"output_path": "/tmp", "cwd": "/tmp",
                              "mounts": dict(b["mounts"], **{"/tmp": {"kind": "tmp", "capacity": 1 << 20}})},
    "cwd": lambda b: {"cwd": "/tmp", "mounts": dict(b["mounts"], **{"/tmp": {"kind": "tmp", "capacity": 1 << 20}})},
}


@pytest.mark.parametrize("what", sorted(CHANGES) + ["container_image"])
def test_any_change_gives_a_new_container(api, project: str, test_image: str, second_image: str,
                                          what: str) -> None:
    body = _base(test_image, project)
    original = _submit(api, body)
    changed = dict(body, **(CHANGES[what](body) if what in CHANGES else {"container_image": second_image}))
    other = _submit(api, changed)
    assert other["container_uuid"] != original["container_uuid"], what
    # ...while resubmitting the original still finds the original's container.
    again = _submit(api, body)
    assert again["container_uuid"] == original["container_uuid"]
    for cr in (original, other, again):
        wait_final(api, cr["uuid"])
    c_orig, c_other = container(api, original["container_uuid"]), container(api, other["container_uuid"])
    if what == "container_image":
        assert c_orig["container_image"] != c_other["container_image"]


def test_use_existing_false_never_reuses(api, project: str, test_image: str) -> None:
    body = _base(test_image, project)
    first = wait_final(api, _submit(api, body)["uuid"])
    fresh = _submit(api, dict(body, use_existing=False))
    assert fresh["container_uuid"] != first["container_uuid"]
    running_twice = _submit(api, dict(body, use_existing=False))
    assert running_twice["container_uuid"] not in (first["container_uuid"], fresh["container_uuid"])
    for cr in (fresh, running_twice):
        cr = wait_final(api, cr["uuid"])
        assert container(api, cr["container_uuid"])["exit_code"] == 0
    # A request that does allow reuse may still pick any of the identical finished containers.
    later = _submit(api, body)
    assert later["container_uuid"] in (first["container_uuid"], fresh["container_uuid"],
                                       running_twice["container_uuid"])
    wait_final(api, later["uuid"])
