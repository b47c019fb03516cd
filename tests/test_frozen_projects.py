"""Frozen projects as in Arvados (``frozen_by_uuid``): read-only for everyone, admins included,
below and inside too; frozen only by its manager, as themself, with nothing running in it; only
unfrozen by whoever can manage it. Each rule is tried through the SDK as a non-admin user."""
from __future__ import annotations

import pytest

from conftest import TEST_IMAGE
from e2e_util import create_request, get_request, grant, refused, request_body, wait_final


def _project(client, name: str, owner: str | None = None) -> dict:
    body = {"name": name, "group_class": "project", **({"owner_uuid": owner} if owner else {})}
    return client.groups().create(body={"group": body}, ensure_unique_name=True).execute()


def _collection(client, owner: str, name: str) -> dict:
    return client.collections().create(body={"collection": {"owner_uuid": owner, "name": name,
                                                            "manifest_text": ""}}).execute()


def _freeze(client, project: dict, by: str | None):
    return client.groups().update(uuid=project["uuid"], body={"group": {"frozen_by_uuid": by}})


def test_a_frozen_project_and_all_below_it_are_read_only_for_everyone(api, alice) -> None:
    user, client = alice
    top = _project(client, "to freeze")
    below = _project(client, "below", top["uuid"])
    outer, inner = _collection(client, top["uuid"], "outer"), _collection(client, below["uuid"], "inner")
    assert _freeze(client, top, user["uuid"]).execute()["frozen_by_uuid"] == user["uuid"]

    for who in (client, api):  # the admin too
        assert "frozen" in refused(who.collections().update(uuid=outer["uuid"], body={"collection": {"name": "x"}}), (403,))
        refused(who.collections().update(uuid=inner["uuid"], body={"collection": {"name": "x"}}), (403,))
        assert "frozen" in refused(who.collections().create(body={"collection": {
            "owner_uuid": below["uuid"], "name": "new", "manifest_text": ""}}), (403,))
        refused(who.collections().delete(uuid=inner["uuid"]), (403,))
        refused(who.collections().trash(uuid=outer["uuid"]), (403,))
        refused(who.groups().update(uuid=top["uuid"], body={"group": {"name": "renamed"}}), (403,))
        refused(who.groups().delete(uuid=below["uuid"]), (403,))
    # Nothing moves out of it, nor into it.
    refused(client.collections().update(uuid=outer["uuid"], body={"collection": {"owner_uuid": user["uuid"]}}), (403,))
    mine = _collection(client, user["uuid"], "mine")
    refused(client.collections().update(uuid=mine["uuid"], body={"collection": {"owner_uuid": top["uuid"]}}), (403,))
    # Still readable, unchanged.
    assert client.collections().get(uuid=outer["uuid"]).execute()["name"] == "outer"
    assert not client.collections().get(uuid=inner["uuid"]).execute()["is_trashed"]

    assert _freeze(client, top, None).execute()["frozen_by_uuid"] is None
    assert client.collections().update(uuid=inner["uuid"], body={"collection": {"name": "thawed"}}).execute()["name"] == "thawed"


def test_who_may_freeze_and_unfreeze(api, alice, mallory) -> None:
    user, client = alice
    other, other_client = mallory
    project = _project(client, "shared")
    grant(client, other["uuid"], project["uuid"], "can_write")
    assert "current user" in refused(_freeze(client, project, other["uuid"]), (422,))
    refused(_freeze(other_client, project, other["uuid"]), (403,))  # write is not manage
    role = client.groups().create(body={"group": {"name": "a role", "group_class": "role"}},
                                  ensure_unique_name=True).execute()
    assert "non-project" in refused(_freeze(client, role, user["uuid"]), (422,))
    _freeze(client, project, user["uuid"]).execute()
    refused(_freeze(other_client, project, None), (403,))
    assert client.groups().get(uuid=project["uuid"]).execute()["frozen_by_uuid"] == user["uuid"]
    _freeze(client, project, "").execute()  # "" means unfrozen, as Arvados takes it
    assert client.groups().get(uuid=project["uuid"]).execute()["frozen_by_uuid"] is None


def test_a_trashed_project_cannot_be_frozen_nor_one_holding_a_frozen_project_trashed(alice) -> None:
    user, client = alice
    trashed = _project(client, "trashed")
    client.groups().trash(uuid=trashed["uuid"]).execute()
    assert "trashed" in refused(_freeze(client, trashed, user["uuid"]), (422,))
    top = _project(client, "holds a frozen one")
    below = _project(client, "frozen below", top["uuid"])
    _freeze(client, below, user["uuid"]).execute()
    assert below["uuid"] in refused(client.groups().trash(uuid=top["uuid"]), (422,))
    assert below["uuid"] in refused(client.groups().update(uuid=top["uuid"], body={"group": {
        "trash_at": "2030-01-01T00:00:00Z"}}), (422,))
    assert client.groups().get(uuid=top["uuid"]).execute()["trash_at"] is None


def test_a_project_with_a_running_request_cannot_be_frozen(alice) -> None:
    user, client = alice
    project = _project(client, "busy")
    cr = create_request(client, request_body(["sleep", "60"], TEST_IMAGE, owner_uuid=project["uuid"],
                                             use_existing=False))
    assert cr["uuid"] in refused(_freeze(client, project, user["uuid"]), (422,))
    client.container_requests().update(uuid=cr["uuid"], body={"container_request": {"priority": 0}}).execute()
    wait_final(client, cr["uuid"])
    assert _freeze(client, project, user["uuid"]).execute()["frozen_by_uuid"] == user["uuid"]
    # A request already Final stays as it is, and none can start there.
    assert get_request(client, cr["uuid"])["state"] == "Final"
    refused(client.container_requests().create(body={"container_request": request_body(
        ["true"], TEST_IMAGE, owner_uuid=project["uuid"])}), (403,))



def test_trash_inside_a_frozen_project_is_hidden_from_non_admins(api, alice) -> None:
    user, client = alice
    project = _project(client, "frozen with trash")
    trashed = _collection(client, project["uuid"], "binned")
    client.collections().trash(uuid=trashed["uuid"]).execute()
    assert client.collections().get(uuid=trashed["uuid"], include_trash=True).execute()["is_trashed"]
    _freeze(client, project, user["uuid"]).execute()
    refused(client.collections().get(uuid=trashed["uuid"], include_trash=True), (404,))
    listed = client.collections().list(filters=[["owner_uuid", "=", project["uuid"]]], include_trash=True).execute()
    assert listed["items"] == []
    assert api.collections().get(uuid=trashed["uuid"], include_trash=True).execute()["is_trashed"]
