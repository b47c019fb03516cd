"""First-start objects every Arvados cluster has: the system user, an admin, its token, Keep."""
from __future__ import annotations

from typing import Any

from .store import Store


def bootstrap(store: Store, config: Any) -> None:
    """Create what is missing; idempotent, so every start can call it (ports may have moved)."""
    sysuser = config.system_user_uuid
    if store.get(sysuser) is None:
        store.create("users", _user("root", "System", "user", admin=True, owner=sysuser), by=sysuser, uuid=sysuser)
    admin = config.admin_user_uuid
    if store.get(admin) is None:
        store.create("users", _user("admin", "Local", "Admin", admin=True, owner=sysuser), by=sysuser, uuid=admin)
    if store.get(config.root_token_uuid) is None:
        store.create("api_client_authorizations", {
            "owner_uuid": admin, "api_token": config.root_token_secret, "scopes": ["all"],
            "expires_at": None, "created_by_ip_address": None, "last_used_at": None,
            "last_used_by_ip_address": None, "refreshes_at": None,
        }, by=sysuser, uuid=config.root_token_uuid)
    keep = {
        "service_host": config.host, "service_port": config.keep_port, "service_ssl_flag": False,
        "service_type": "disk", "read_only": False, "owner_uuid": sysuser,
    }
    existing = next(iter(store.records("keep_services")), None)
    if existing is None:
        store.create("keep_services", keep, by=sysuser)
    elif any(existing.get(k) != v for k, v in keep.items()):
        store.update(existing["uuid"], keep, by=sysuser)


def _user(username: str, first: str, last: str, *, admin: bool, owner: str) -> dict:
    return {
        "owner_uuid": owner, "email": f"{username}@localhost", "username": username,
        "first_name": first, "last_name": last, "full_name": f"{first} {last}",
        "identity_url": None, "is_active": True, "is_admin": admin, "is_invited": True,
        "prefs": {"profile": {}}, "writable_by": [owner],
    }


def all_users_group_uuid(cluster_id: str) -> str:
    """Arvados' "All users" role group: every active user is a member (users.rb)."""
    return f"{cluster_id}-j7d0g-fffffffffffffff"


def ensure_all_users_member(store: Store, user_uuid: str) -> None:
    """Make *user_uuid* a member of "All users" (a ``can_write`` link to the group, as Arvados'
    ``add_to_all_users_group`` does), so what is shared with everyone is readable to them."""
    group = all_users_group_uuid(store.cluster_id)
    if not any(l.get("link_class") == "permission" and l.get("tail_uuid") == user_uuid
               and l.get("head_uuid") == group for l in store.lookup("links", "tail_uuid", user_uuid)):
        _grant(store, user_uuid, group, "can_write")


def bootstrap_sharing(store: Store) -> None:
    """Create "All users" and enrol the existing users (idempotent).

    Image names resolve only among links and collections the requester can read (as on
    Arvados): an administrator shares the images they store with this group.
    """
    sysuser = store.system_user_uuid
    group = all_users_group_uuid(store.cluster_id)
    if store.get(group) is None:
        store.create("groups", {"name": "All users", "group_class": "role", "owner_uuid": sysuser,
                                "description": None, "properties": {}, "is_trashed": False,
                                "trash_at": None, "delete_at": None}, by=sysuser, uuid=group)
    for user in store.records("users"):
        if user["uuid"] != sysuser and user.get("is_active", True):
            ensure_all_users_member(store, user["uuid"])


def _grant(store: Store, tail: str, head: str, level: str) -> None:
    store.create("links", {"link_class": "permission", "name": level, "tail_uuid": tail, "head_uuid": head,
                           "owner_uuid": store.system_user_uuid, "properties": {}},
                 by=store.system_user_uuid)
