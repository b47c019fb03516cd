"""Projects and collections through the real SDK (``arvados.api('v1')``) against the local cluster.

These check what a client relies on: CRUD, list parameters, unique names, and the error statuses
and messages Arvados gives (401/403/404/422), including that one user cannot see another's
private project.
"""
from __future__ import annotations

import json
import secrets

import arvados
import arvados.errors
import pytest


def _status(exc: arvados.errors.ApiError) -> int:
    return int(exc.resp.status)


def _errors(exc: arvados.errors.ApiError) -> list[str]:
    """The ``errors`` list of an Arvados error body (the SDK keeps the raw body in ``content``)."""
    body = json.loads(exc.content)
    assert isinstance(body.get("errors"), list) and body["errors"], body
    assert "error_token" in body, body
    return body["errors"]


def _raises(call, status: int | tuple[int, ...]) -> arvados.errors.ApiError:
    statuses = (status,) if isinstance(status, int) else status
    with pytest.raises(arvados.errors.ApiError) as info:
        call.execute()
    assert _status(info.value) in statuses, info.value
    return info.value


def _client(host: str, token: str):
    return arvados.api("v1", host=host, token=token, insecure=True, num_retries=0)


# -- projects -----------------------------------------------------------------------------------

def test_project_crud(api) -> None:
    me = api.users().current().execute()["uuid"]
    name = f"proj-{secrets.token_hex(4)}"
    p = api.groups().create(body={"group": {"name": name, "group_class": "project",
                                            "description": "first"}}).execute()
    assert p["kind"] == "arvados#group" and p["group_class"] == "project"
    assert p["uuid"].split("-")[1] == "j7d0g" and p["owner_uuid"] == me
    got = api.groups().get(uuid=p["uuid"]).execute()
    assert (got["name"], got["description"]) == (name, "first")

    upd = api.groups().update(uuid=p["uuid"], body={"group": {"description": "second",
                                                                 "properties": {"k": "v"}}}).execute()
    assert upd["description"] == "second" and upd["properties"] == {"k": "v"}
    assert upd["modified_at"] >= p["modified_at"]
    assert api.groups().get(uuid=p["uuid"]).execute()["description"] == "second"

    child = api.groups().create(body={"group": {"name": "child", "group_class": "project",
                                                "owner_uuid": p["uuid"]}}).execute()
    contents = api.groups().contents(uuid=p["uuid"]).execute()
    assert [i["uuid"] for i in contents["items"]] == [child["uuid"]]

    # Arvados' delete puts a project in the trash: gone from get/list, visible with include_trash.
    deleted = api.groups().delete(uuid=p["uuid"]).execute()
    assert deleted["uuid"] == p["uuid"] and deleted["is_trashed"] is True and deleted["trash_at"]
    _raises(api.groups().get(uuid=p["uuid"]), 404)
    assert api.groups().list(filters=[["uuid", "=", p["uuid"]]]).execute()["items"] == []
    trashed = api.groups().list(filters=[["uuid", "=", p["uuid"]]], include_trash=True).execute()["items"]
    assert [t["uuid"] for t in trashed] == [p["uuid"]] and trashed[0]["is_trashed"] is True
    assert api.groups().untrash(uuid=p["uuid"]).execute()["is_trashed"] is False
    assert api.groups().get(uuid=p["uuid"]).execute()["name"] == name


def test_group_class_is_checked(api) -> None:
    err = _raises(api.groups().create(body={"group": {"name": "x", "group_class": "nonsense"}}), 422)
    assert "group_class" in " ".join(_errors(err))


# -- collections --------------------------------------------------------------------------------

def test_collection_crud(api, project: str) -> None:
    c = api.collections().create(body={"collection": {
        "name": "empty", "owner_uuid": project, "properties": {"a": 1}}}).execute()
    assert c["kind"] == "arvados#collection" and c["uuid"].split("-")[1] == "4zz18"
    assert c["portable_data_hash"] == "d41d8cd98f00b204e9800998ecf8427e+0"
    assert (c["owner_uuid"], c["properties"], c["manifest_text"]) == (project, {"a": 1}, "")

    got = api.collections().get(uuid=c["uuid"]).execute()
    assert got["name"] == "empty" and got["file_count"] == 0

    upd = api.collections().update(uuid=c["uuid"], body={"collection": {
        "name": "renamed", "properties": {"a": 2, "b": "x"}}}).execute()
    assert upd["name"] == "renamed" and upd["properties"] == {"a": 2, "b": "x"}

    deleted = api.collections().delete(uuid=c["uuid"]).execute()
    assert deleted["is_trashed"] is True and deleted["trash_at"] and deleted["delete_at"]
    _raises(api.collections().get(uuid=c["uuid"]), 404)
    assert api.collections().list(filters=[["uuid", "=", c["uuid"]]]).execute()["items"] == []
    assert api.collections().get(uuid=c["uuid"], include_trash=True).execute()["is_trashed"] is True
    # The trashed collection's name no longer blocks a new one.
    api.collections().create(body={"collection": {"name": "renamed", "owner_uuid": project}}).execute()


def test_list_filters_order_limit_offset_select_count(api, project: str) -> None:
    made = [api.collections().create(body={"collection": {
        "name": f"item{i}", "owner_uuid": project, "properties": {"i": i, "even": i % 2 == 0}}}).execute()
        for i in range(6)]
    mine = [["owner_uuid", "=", project]]

    everything = api.collections().list(filters=mine).execute()
    assert everything["kind"] == "arvados#collectionList"
    assert everything["items_available"] == 6 and len(everything["items"]) == 6
    assert "manifest_text" not in everything["items"][0]  # lists leave manifests out unless selected

    page = api.collections().list(filters=mine, order=["name desc"], limit=2, offset=1).execute()
    assert [i["name"] for i in page["items"]] == ["item4", "item3"]
    assert (page["items_available"], page["limit"], page["offset"]) == (6, 2, 1)

    asc = api.collections().list(filters=mine, order=["name asc"]).execute()
    assert [i["name"] for i in asc["items"]] == [f"item{i}" for i in range(6)]

    props = api.collections().list(filters=mine + [["properties.i", ">=", 4]], order=["name"]).execute()
    assert [i["name"] for i in props["items"]] == ["item4", "item5"]
    evens = api.collections().list(filters=mine + [["properties.even", "=", True]]).execute()
    assert sorted(i["name"] for i in evens["items"]) == ["item0", "item2", "item4"]
    some = api.collections().list(filters=[["uuid", "in", [made[1]["uuid"], made[2]["uuid"]]]]).execute()
    assert sorted(i["name"] for i in some["items"]) == ["item1", "item2"]
    like = api.collections().list(filters=mine + [["name", "like", "item_"], ["name", "!=", "item0"]]).execute()
    assert like["items_available"] == 5

    selected = api.collections().list(filters=mine, select=["uuid", "name"], order=["name"], limit=1).execute()
    assert set(selected["items"][0]) <= {"uuid", "name", "kind"}
    assert selected["items"][0]["name"] == "item0"
    with_manifest = api.collections().list(filters=mine, select=["uuid", "manifest_text"], limit=1).execute()
    assert "manifest_text" in with_manifest["items"][0]

    uncounted = api.collections().list(filters=mine, count="none").execute()
    assert "items_available" not in uncounted and len(uncounted["items"]) == 6
    counted = api.collections().list(filters=mine, count="exact", limit=0).execute()
    assert counted["items_available"] == 6 and counted["items"] == []


def test_name_collision_and_ensure_unique_name(api, project: str) -> None:
    api.collections().create(body={"collection": {"name": "dup", "owner_uuid": project}}).execute()
    err = _raises(api.collections().create(body={"collection": {"name": "dup", "owner_uuid": project}}), 422)
    assert "dup" in " ".join(_errors(err))
    second = api.collections().create(body={"collection": {"name": "dup", "owner_uuid": project}},
                                      ensure_unique_name=True).execute()
    assert second["name"] != "dup" and second["name"].startswith("dup ")
    names = [i["name"] for i in api.collections().list(filters=[["owner_uuid", "=", project]]).execute()["items"]]
    assert sorted(names) == sorted(["dup", second["name"]])

    # Renaming onto a taken name collides too.
    other = api.collections().create(body={"collection": {"name": "other", "owner_uuid": project}}).execute()
    _raises(api.collections().update(uuid=other["uuid"], body={"collection": {"name": "dup"}}), 422)

    # The same name under another owner is fine; projects follow the same rule.
    api.collections().create(body={"collection": {"name": "dup"}}, ensure_unique_name=True).execute()
    sub = {"group": {"name": "sub", "group_class": "project", "owner_uuid": project}}
    api.groups().create(body=sub).execute()
    _raises(api.groups().create(body=sub), 422)
    assert api.groups().create(body=sub, ensure_unique_name=True).execute()["name"].startswith("sub ")


# -- errors -------------------------------------------------------------------------------------

def test_bad_token_is_401_without_the_token(cluster_env: dict[str, str]) -> None:
    real = cluster_env["ARVADOS_API_TOKEN"]
    uuid = real.split("/")[1]
    bad_secret = "x" * 40 + secrets.token_hex(5)
    for token in (f"v2/{uuid}/{bad_secret}", bad_secret):
        bad = _client(cluster_env["ARVADOS_API_HOST"], token)
        for call in (bad.users().current(), bad.collections().list()):
            err = _raises(call, 401)
            messages = _errors(err)
            assert any(m.startswith("Not logged in") for m in messages), messages
            assert bad_secret not in str(err) and bad_secret not in err.content.decode()
            assert real.split("/")[2] not in err.content.decode()


def test_unknown_uuid_is_404(api) -> None:
    err = _raises(api.collections().get(uuid="local-4zz18-zzzzzzzzzzzzzzz"), 404)
    assert _errors(err)
    _raises(api.groups().get(uuid="local-j7d0g-zzzzzzzzzzzzzzz"), 404)
    _raises(api.collections().update(uuid="local-4zz18-zzzzzzzzzzzzzzz",
                                     body={"collection": {"name": "n"}}), 404)
    _raises(api.groups().delete(uuid="local-j7d0g-zzzzzzzzzzzzzzz"), 404)
    # A uuid of another kind is not found either (not served as if it were a collection).
    me = api.users().current().execute()["uuid"]
    _raises(api.collections().get(uuid=me), 404)


def test_invalid_attribute_and_filter_are_422(api, project: str) -> None:
    err = _raises(api.collections().create(body={"collection": {"no_such_attr": 1}}), 422)
    assert "no_such_attr" in " ".join(_errors(err))
    c = api.collections().create(body={"collection": {"owner_uuid": project}}).execute()
    err = _raises(api.collections().update(uuid=c["uuid"], body={"collection": {"no_such_attr": 1}}), 422)
    assert "no_such_attr" in " ".join(_errors(err))

    err = _raises(api.collections().list(filters=[["name", "no-such-op", "x"]]), 422)
    assert "no-such-op" in " ".join(_errors(err))
    _raises(api.collections().list(filters=[["no_such_attr", "=", "x"]]), 422)
    _raises(api.collections().list(limit=-1), 422)
    _raises(api.collections().create(body={"collection": {"manifest_text": "not a manifest"}}), 422)


# -- permissions --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def second_user(api, cluster_env: dict[str, str]):
    """A non-admin user made by the admin, and a client with that user's token."""
    tag = secrets.token_hex(4)
    user = api.users().create(body={"user": {
        "first_name": "Second", "last_name": tag, "email": f"second-{tag}@localhost",
        "username": f"second{tag}", "is_active": True}}).execute()
    assert user["is_admin"] is False
    token = api.api_client_authorizations().create(body={"api_client_authorization": {
        "owner_uuid": user["uuid"]}}).execute()
    assert token["owner_uuid"] == user["uuid"]
    return user, _client(cluster_env["ARVADOS_API_HOST"], token["api_token"])


def test_second_user_cannot_read_or_write_private_project(api, project: str, second_user) -> None:
    user, other = second_user
    assert other.users().current().execute()["uuid"] == user["uuid"]
    secret_coll = api.collections().create(body={"collection": {"name": "private", "owner_uuid": project}}).execute()

    _raises(other.groups().get(uuid=project), 404)
    _raises(other.collections().get(uuid=secret_coll["uuid"]), 404)
    assert other.groups().list(filters=[["uuid", "=", project]]).execute()["items"] == []
    assert other.collections().list(filters=[["owner_uuid", "=", project]]).execute()["items"] == []
    _raises(other.groups().contents(uuid=project), (403, 404))

    _raises(other.collections().create(body={"collection": {"name": "intruder", "owner_uuid": project}}),
            (403, 404))
    _raises(other.groups().create(body={"group": {"name": "intruder", "group_class": "project",
                                                  "owner_uuid": project}}), (403, 404))
    _raises(other.groups().update(uuid=project, body={"group": {"name": "hacked"}}), (403, 404))
    _raises(other.collections().update(uuid=secret_coll["uuid"], body={"collection": {"name": "hacked"}}),
            (403, 404))
    _raises(other.collections().delete(uuid=secret_coll["uuid"]), (403, 404))
    _raises(other.groups().delete(uuid=project), (403, 404))
    assert api.groups().get(uuid=project).execute()["name"] != "hacked"
    assert api.collections().get(uuid=secret_coll["uuid"]).execute()["is_trashed"] is False
    names = [i["name"] for i in api.collections().list(filters=[["owner_uuid", "=", project]]).execute()["items"]]
    assert names == ["private"]

    # The user's own project works, and the admin's objects stay out of their listings.
    own = other.groups().create(body={"group": {"name": "mine", "group_class": "project"}},
                                ensure_unique_name=True).execute()
    assert own["owner_uuid"] == user["uuid"]
    visible = {g["uuid"] for g in other.groups().list().execute()["items"]}
    assert own["uuid"] in visible and project not in visible


def test_read_permission_link_grants_read_not_write(api, project: str, second_user) -> None:
    user, other = second_user
    coll = api.collections().create(body={"collection": {"name": "shared", "owner_uuid": project}}).execute()
    api.links().create(body={"link": {"link_class": "permission", "name": "can_read",
                                      "tail_uuid": user["uuid"], "head_uuid": project}}).execute()
    assert other.groups().get(uuid=project).execute()["uuid"] == project
    assert other.collections().get(uuid=coll["uuid"]).execute()["name"] == "shared"
    _raises(other.collections().update(uuid=coll["uuid"], body={"collection": {"name": "changed"}}), 403)
    _raises(other.collections().create(body={"collection": {"name": "x", "owner_uuid": project}}), 403)
