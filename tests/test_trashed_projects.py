"""A trashed project takes its contents with it, as on Arvados (``readable_by``'s trashed_groups):
what it holds, at any depth, is hidden from get and list unless ``include_trash``, and comes back
when the project is untrashed. Checked as a non-admin user, the way a user meets it."""
from __future__ import annotations

import secrets

import arvados
import arvados.collection
import arvados.errors
import pytest


def _user_client(api, cluster_env: dict[str, str]):
    tag = secrets.token_hex(4)
    user = api.users().create(body={"user": {"first_name": "trash", "last_name": tag, "email": f"t-{tag}@localhost",
                                             "username": f"trash{tag}", "is_active": True}}).execute()
    token = api.api_client_authorizations().create(body={"api_client_authorization": {
        "owner_uuid": user["uuid"]}}).execute()
    return arvados.api("v1", host=cluster_env["ARVADOS_API_HOST"], token=token["api_token"], insecure=True,
                       num_retries=0)


def _collection(client, owner: str, text: str) -> dict:
    c = arvados.collection.Collection(api_client=client)
    with c.open("f.txt", "w") as f:
        f.write(text)
    c.save_new(name=text, owner_uuid=owner)
    return c.api_response()


def _missing(call) -> bool:
    with pytest.raises(arvados.errors.ApiError) as info:
        call.execute()
    return int(info.value.resp.status) == 404


def _project(client, name: str, owner: str | None = None) -> dict:
    body = {"name": name, "group_class": "project", **({"owner_uuid": owner} if owner else {})}
    return client.groups().create(body={"group": body}).execute()


def test_contents_of_a_trashed_project_are_hidden_until_it_is_untrashed(api, cluster_env) -> None:
    user = _user_client(api, cluster_env)
    name = f"doomed-{secrets.token_hex(3)}"
    top = _project(user, name)
    sub = _project(user, "inner", top["uuid"])
    shallow = _collection(user, top["uuid"], f"shallow {name}")
    deep = _collection(user, sub["uuid"], f"deep {name}")

    user.groups().delete(uuid=top["uuid"]).execute()
    for c in (shallow, deep):
        assert _missing(user.collections().get(uuid=c["uuid"]))
        assert _missing(user.collections().get(uuid=c["portable_data_hash"]))
        assert _missing(api.collections().get(uuid=c["uuid"]))  # admins too, without include_trash
    assert _missing(user.groups().get(uuid=sub["uuid"]))
    assert user.collections().list(filters=[["owner_uuid", "in", [top["uuid"], sub["uuid"]]]]).execute()["items"] == []
    assert user.groups().list(filters=[["owner_uuid", "=", top["uuid"]]]).execute()["items"] == []
    listed = user.collections().list(filters=[["owner_uuid", "=", top["uuid"]]], include_trash=True).execute()
    assert [c["uuid"] for c in listed["items"]] == [shallow["uuid"]]
    assert user.collections().get(uuid=deep["uuid"], include_trash=True).execute()["uuid"] == deep["uuid"]
    again = _project(user, name)  # the name is free again in the parent
    user.groups().delete(uuid=again["uuid"]).execute()

    user.groups().untrash(uuid=top["uuid"]).execute()
    assert user.collections().get(uuid=deep["uuid"]).execute()["portable_data_hash"] == deep["portable_data_hash"]
    assert user.groups().get(uuid=sub["uuid"]).execute()["uuid"] == sub["uuid"]


def test_a_collection_is_trashed_once_its_trash_at_passes(api, cluster_env) -> None:
    """What an ``output_ttl`` does to a step's output: hidden once ``trash_at`` is past, as
    ``readable_by`` does, without waiting for a sweeper to set ``is_trashed``."""
    from datetime import datetime, timedelta, timezone

    from e2e_util import wait_for

    user = _user_client(api, cluster_env)
    home = user.users().current().execute()["uuid"]
    c = _collection(user, home, f"short-lived {secrets.token_hex(3)}")
    soon = (datetime.now(timezone.utc) + timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    user.collections().update(uuid=c["uuid"], body={"collection": {"trash_at": soon, "delete_at": soon}}).execute()

    def listed() -> list:
        return user.collections().list(filters=[["uuid", "=", c["uuid"]]]).execute()["items"]

    wait_for(listed, lambda items: items == [], timeout=15, what="the collection to leave the listing")
    assert _missing(user.collections().get(uuid=c["uuid"]))
    assert _missing(user.collections().get(uuid=c["portable_data_hash"]))
    assert user.collections().get(uuid=c["uuid"], include_trash=True).execute()["uuid"] == c["uuid"]
