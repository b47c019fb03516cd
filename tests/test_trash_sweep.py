"""Arvados' trash sweep on the local cluster: the trash does not keep things forever."""
from __future__ import annotations

import time

import pytest
from test_api import second_user  # noqa: F401  (the fixture: a non-admin user and a client of theirs)

from toil_arvados.localcluster.store import Store
from toil_arvados.localcluster.trash_sweep import sweep
from toil_arvados.timestamps import timestamp

USER = "local-tpzed-000000000000000"


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "arvados.sqlite3", "local", USER)


def _trashed(store: Store, table: str, attrs: dict, trash_at: float, delete_at: float) -> dict:
    return store.create(table, {**attrs, "is_trashed": trash_at <= time.time(),
                                "trash_at": timestamp(trash_at), "delete_at": timestamp(delete_at)})


def test_past_delete_at_is_deleted_past_trash_at_is_trashed(store) -> None:
    now = time.time()
    kept = store.create("collections", {"name": "live", "manifest_text": ""})
    expired = _trashed(store, "collections", {"name": "expired", "manifest_text": ""}, now - 20, now - 10)
    in_trash = _trashed(store, "collections", {"name": "in the trash", "manifest_text": ""}, now - 20, now + 3600)
    due = store.create("collections", {"name": "due", "manifest_text": "", "is_trashed": False,
                                       "trash_at": timestamp(now - 1), "delete_at": timestamp(now + 3600)})
    token = store.create("api_client_authorizations", {"api_token": "x" * 50, "expires_at": timestamp(now - 1)})
    done = sweep(store, now)
    assert store.get(expired["uuid"]) is None and store.get(token["uuid"]) is None
    assert store.get(kept["uuid"]) is not None and store.get(in_trash["uuid"]) is not None
    assert store.get(due["uuid"])["is_trashed"] is True
    assert done == {"collections deleted": 1, "projects deleted": 0, "trashed": 1, "tokens deleted": 1}
    assert sweep(store, now) == {"collections deleted": 0, "projects deleted": 0, "trashed": 0, "tokens deleted": 0}


def test_an_expired_project_goes_with_everything_it_owns(store) -> None:
    now = time.time()
    project = _trashed(store, "groups", {"name": "p", "group_class": "project", "owner_uuid": USER}, now - 20, now - 10)
    sub = store.create("groups", {"name": "sub", "group_class": "project", "owner_uuid": project["uuid"]})
    inside = [store.create("collections", {"name": "c", "manifest_text": "", "owner_uuid": owner})
              for owner in (project["uuid"], sub["uuid"])]
    request = store.create("container_requests", {"name": "r", "owner_uuid": sub["uuid"]})
    elsewhere = store.create("collections", {"name": "c", "manifest_text": ""})
    done = sweep(store, now)
    for gone in (project, sub, *inside, request):
        assert store.get(gone["uuid"]) is None, gone["uuid"]
    assert store.get(elsewhere["uuid"]) is not None
    assert done["projects deleted"] == 1 and done["collections deleted"] == 2  # the expired one, its subproject with it


def test_sys_trash_sweep_is_for_admins(api, second_user) -> None:  # noqa: F811
    import arvados.errors

    assert api.sys().get().execute() == {}  # the SDK calls sys/trash_sweep "get"
    with pytest.raises(arvados.errors.ApiError) as refused:
        second_user[1].sys().get().execute()
    assert refused.value.resp.status == 403
