"""Arvados' request rules, instance fitting and log ownership, end to end through the real SDK.

Every refusal is checked for its status and for a message naming the bad attribute; the
rules themselves are unit-tested in test_validation.py. docs/fidelity.md maps each to its source.
"""
from __future__ import annotations

import json

import arvados
import arvados.collection
import arvados.errors
import pytest
from e2e_util import container, create_request, request_body, wait_final, wait_for
from test_api import second_user  # noqa: F401 - fixture: a non-admin user and their client


@pytest.fixture
def image(test_image: str) -> str:
    """The plain Debian test image."""
    return test_image


def _refused(call, status: int = 422) -> str:
    with pytest.raises(arvados.errors.ApiError) as info:
        call.execute()
    assert int(info.value.resp.status) == status, info.value.content
    return " ".join(json.loads(info.value.content)["errors"])


def _create(api, body: dict):
    return api.container_requests().create(body={"container_request": body})


@pytest.mark.parametrize("rc, named", [
    ({"vcpus": 0, "ram": 1 << 20}, "[vcpus]=0"),
    ({"vcpus": 1, "ram": "lots"}, "[ram]="),
    ({"vcpus": 1, "ram": 1 << 20, "API": "yes"}, "[API]="),
    ({"vcpus": 1, "ram": 1 << 20, "keep_cache_ram": -1}, "[keep_cache_ram]="),
    ({"vcpus": 1, "ram": 1 << 20, "gpu": {"device_count": 1, "stack": "cuda", "driver_version": "",
                                          "hardware_target": ["8.6"], "vram": 0}}, "[gpu.driver_version]="),
    ({"vcpus": 1, "ram": 1 << 20, "gpu": {"device_count": 1, "stack": "cuda", "driver_version": "11.0",
                                          "hardware_target": "8.6"}}, "[gpu.hardware_target]="),
    ({"vcpus": 1, "ram": 1 << 20, "gpu": {"stack": "metal"}}, "[gpu.stack]="),
    ({"vcpus": 1, "ram": 1 << 20, "cuda": {"device_count": 1, "driver_version": "x",
                                           "hardware_capability": "8.6"}}, "[cuda.driver_version]="),
    ({"vcpus": 1, "ram": 1 << 20, "disk": 5}, "unexpected keys ['disk']"),
])
def test_bad_runtime_constraints_are_422(api, project: str, image: str, rc: dict, named: str) -> None:
    errors = _refused(_create(api, request_body(["true"], image, owner_uuid=project,
                                                runtime_constraints=rc)))
    assert "Runtime constraints" in errors and named in errors, errors


@pytest.mark.parametrize("sp, named", [
    ({"preemptible": True}, "preemptible instances are not configured in InstanceTypes"),
    ({"partitions": "fast"}, "partitions must be an array of strings"),
    ({"max_run_time": -5}, "max_run_time must be positive integer"),
    ({"supervisor": "true"}, "supervisor="),
])
def test_bad_scheduling_parameters_are_422(api, project: str, image: str, sp: dict, named: str) -> None:
    errors = _refused(_create(api, request_body(["true"], image, owner_uuid=project,
                                                scheduling_parameters=sp)))
    assert "Scheduling parameters" in errors and named in errors, errors


def test_preemptible_is_fine_while_uncommitted(api, project: str, image: str) -> None:
    cr = _create(api, request_body(["true"], image, owner_uuid=project, state="Uncommitted",
                                   scheduling_parameters={"preemptible": True})).execute()
    assert cr["scheduling_parameters"]["preemptible"] is True
    errors = _refused(api.container_requests().update(uuid=cr["uuid"], body={"container_request": {
        "state": "Committed"}}))
    assert "preemptible instances are not configured" in errors


def test_output_path_must_be_a_mount_key(api, project: str, image: str) -> None:
    errors = _refused(_create(api, request_body(["true"], image, owner_uuid=project,
                                                output_path="/var/spool/cwl/sub")))
    assert "Output path" in errors and "must be a mount target" in errors


def test_committed_request_changes_only_what_arvados_allows(api, project: str, image: str) -> None:
    cr = _create(api, request_body(["sleep", "30"], image, owner_uuid=project, priority=1)).execute()
    try:
        for attrs in ({"output_name": "x"}, {"output_ttl": 60}, {"output_properties": {"a": "b"}},
                      {"output_storage_classes": ["fast"]}, {"cwd": "/tmp"}):
            errors = _refused(api.container_requests().update(uuid=cr["uuid"], body={"container_request": attrs}))
            assert next(iter(attrs)) in errors, errors
        # Bare constraints equal to the stored ones once the implied zeros are filled: no change.
        api.container_requests().update(uuid=cr["uuid"], body={"container_request": {
            "runtime_constraints": {"vcpus": 1, "ram": 128 << 20}, "scheduling_parameters": {}}}).execute()
        other = api.groups().create(body={"group": {"name": "moved here", "group_class": "project"}},
                                    ensure_unique_name=True).execute()
        moved = api.container_requests().update(uuid=cr["uuid"], body={"container_request": {
            "owner_uuid": other["uuid"], "name": "renamed", "container_count_max": 1}}).execute()
        assert (moved["owner_uuid"], moved["name"]) == (other["uuid"], "renamed")
    finally:
        api.container_requests().update(uuid=cr["uuid"], body={"container_request": {"priority": 0}}).execute()


def test_names_over_255_characters_are_refused(api, project: str, image: str) -> None:
    errors = _refused(_create(api, request_body(["true"], image, owner_uuid=project, name="n" * 256)))
    assert "name" in errors and "255" in errors
    errors = _refused(api.collections().create(body={"collection": {"owner_uuid": project, "name": "c" * 300}}))
    assert "name" in errors and "255" in errors
    ok = api.collections().create(body={"collection": {"owner_uuid": project, "name": "c" * 255}}).execute()
    assert len(ok["name"]) == 255
    # ensure_unique_name renames as add_uuid_to_name: 237 characters + " (<uuid tail>)"
    again = api.collections().create(body={"collection": {"owner_uuid": project, "name": "c" * 255}},
                                     ensure_unique_name=True).execute()
    assert again["name"] == "c" * 237 + f" ({again['uuid'][-15:]})"


def test_owner_must_be_a_user_or_project(api, project: str, image: str) -> None:
    for group_class, props in (("filter", {"properties": {"filters": []}}), ("role", {})):
        group = api.groups().create(body={"group": {"name": f"a {group_class} group", "group_class": group_class,
                                                    **props}}, ensure_unique_name=True).execute()
        errors = _refused(api.collections().create(body={"collection": {"owner_uuid": group["uuid"]}}), 403)
        assert "Owner uuid must be a project" in errors
        errors = _refused(_create(api, request_body(["true"], image, owner_uuid=group["uuid"])), 403)
        assert "Owner uuid must be a project" in errors


def test_config_exports_what_clients_need_to_size_requests(api) -> None:
    config = api.configs().get().execute()
    assert config["Containers"]["ReserveExtraRAM"] == 550 << 20
    (name, it), = config["InstanceTypes"].items()
    assert it["Preemptible"] is False and it["VCPUs"] == 2 and it["RAM"] == 4 << 30
    # As Arvados exports it: Scratch and Name are computed by readers, never exported.
    assert "Scratch" not in it and "Name" not in it and it["IncludedScratch"] > 0 and it["AddedScratch"] == 0


def test_malformed_exists_filters_are_422_with_arvados_message_not_500(api) -> None:
    # Arvados binds the operand into jsonb_exists_inline_op(properties, ?): a list spreads into
    # several arguments (no such function), a hash into unquotable pairs (record_filters.rb).
    message = _refused(api.collections().list(filters=[["properties", "exists", ["a", "b"]]]))
    assert "function jsonb_exists_inline_op(jsonb, unknown, unknown) does not exist" in message
    assert "can't quote Array" in _refused(api.container_requests().list(filters=[["properties", "exists", {"a": 1}]]))
    assert "(jsonb, integer)" in _refused(api.groups().list(filters=[["properties", "exists", 3]]))
    # A one-string list is bound as that string: Arvados answers it.
    assert api.collections().list(filters=[["properties", "exists", ["type"]]]).execute()["items"] is not None


def test_container_too_big_with_overhead_is_unsatisfiable(api, project: str, image: str) -> None:
    # 3.5 GiB fits the 4 GiB machine's raw RAM, but not with ReserveExtraRAM and the 5% discount.
    cr = create_request(api, request_body(["true"], image, owner_uuid=project, container_count_max=1,
                                          runtime_constraints={"vcpus": 1, "ram": 3584 << 20}))
    cr = wait_final(api, cr["uuid"], timeout=30)
    c = container(api, cr["container_uuid"])
    assert c["state"] == "Cancelled"
    assert c["runtime_status"]["error"] == "constraints not satisfiable by any configured instance type"


def test_writable_collection_by_pdh_outside_output_path_cancels_in_crunch_run(
        api, project: str, image: str) -> None:
    pdh = api.collections().create(body={"collection": {"owner_uuid": project, "name": "w",
                                                        "manifest_text": ""}}).execute()["portable_data_hash"]
    mounts = {"/var/spool/cwl": {"kind": "tmp", "capacity": 1 << 20},
              "/data": {"kind": "collection", "portable_data_hash": pdh, "writable": True}}
    cr = create_request(api, request_body(["true"], image, owner_uuid=project, mounts=mounts,
                                          container_count_max=1))
    cr = wait_final(api, cr["uuid"])
    c = container(api, cr["container_uuid"])
    assert c["state"] == "Cancelled" and c["started_at"] is None
    text = arvados.collection.CollectionReader(cr["log_uuid"], api_client=api).open("crunch-run.txt").read()
    assert "While setting up mounts: can never write to a collection specified by portable data hash" in text


def test_container_log_is_unreadable_by_the_user_only_the_request_copy(
        api, image: str, second_user) -> None:  # noqa: F811
    user, other = second_user
    cr = create_request(other, request_body(["sh", "-c", "echo started; sleep 60"], image,
                                            container_count_max=1))
    wait_for(lambda: container(other, cr["container_uuid"]), lambda c: c["state"] == "Running",
             what="the container to run")
    other.container_requests().update(uuid=cr["uuid"], body={"container_request": {"priority": 0}}).execute()
    cr = wait_final(other, cr["uuid"])
    c = container(other, cr["container_uuid"])
    assert c["state"] == "Cancelled" and c["log"]
    with pytest.raises(arvados.errors.ApiError) as info:
        other.collections().get(uuid=c["log"]).execute()
    assert int(info.value.resp.status) == 404
    own = other.collections().get(uuid=cr["log_uuid"]).execute()
    assert own["owner_uuid"] == user["uuid"] and own["portable_data_hash"] != c["log"]
    assert f"./log\\040for\\040container\\040{c['uuid']} " in own["manifest_text"]
    # the dispatcher's own copy is trashed, as crunch-run leaves it
    trashed = [x for x in api.collections().list(filters=[["portable_data_hash", "=", c["log"]]],
                                                 include_trash=True).execute()["items"]]
    assert trashed and all(x["is_trashed"] for x in trashed)



def test_cluster_with_a_preemptible_instance_type_accepts_preemptible_requests(tmp_path) -> None:
    """``control.up(preemptible_instances=True)`` adds a Preemptible InstanceType; Arvados then
    accepts ``preemptible: true`` and dispatch-cloud fits it to that type only."""
    from toil_arvados.localcluster import control

    cfg = control.up(tmp_path / "preemptible", cores=1, ram=2 << 30, preemptible_instances=True)
    try:
        env = control.client_env(cfg)
        client = arvados.api("v1", host=env["ARVADOS_API_HOST"], token=env["ARVADOS_API_TOKEN"], insecure=True,
                             num_retries=2)
        types = client.configs().get().execute()["InstanceTypes"]
        assert sorted((name, t["Preemptible"]) for name, t in types.items()) == [
            ("local", False), ("local-preemptible", True)]
        # Any collection resolves as an image by its PDH; the request is cancelled before it runs.
        image = client.collections().create(body={"collection": {"name": "img"}}).execute()["portable_data_hash"]
        body = request_body(["true"], image, priority=0, scheduling_parameters={"preemptible": True})
        cr = _create(client, body).execute()
        assert cr["container_uuid"] and cr["scheduling_parameters"]["preemptible"] is True
    finally:
        control.down(tmp_path / "preemptible")
