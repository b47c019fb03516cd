"""Arvados' trash sweep: what stays in the trash past its ``delete_at`` is deleted for good.

As ``services/api/lib/sweep_trashed_objects.rb`` does (the controller runs it every
``Collections.TrashSweepInterval``, and an admin's ``POST sys/trash_sweep`` runs it at once):

* collections whose ``delete_at`` has passed are deleted; those whose ``trash_at`` has passed are
  marked ``is_trashed`` (reads already treat them as trashed, see :mod:`.auth`);
* projects (and other groups) whose ``delete_at`` has passed are deleted with everything they
  own, subprojects first; those past ``trash_at`` are marked ``is_trashed``;
* expired API tokens are deleted.

Without it a trashed collection could be untrashed, and its blocks read, forever. Runs on the
event loop, as every read-then-write of the store does (see :class:`.store.Store`).
"""
from __future__ import annotations

import logging
from typing import Any

from ..timestamps import parse_timestamp
from .uuids import RESOURCE_KINDS

logger = logging.getLogger(__name__)

#: Tables whose records a deleted project takes with it (Arvados skips groups and users: a
#: subproject goes through its own deletion, a user is never owned by a project).
_OWNED_TABLES = tuple(t for t in RESOURCE_KINDS if t not in ("groups", "users", "logs"))


def _passed(value: Any, now: float) -> bool:
    return bool(value) and parse_timestamp(str(value)) <= now


def sweep(store: Any, now: float) -> dict[str, int]:
    """One sweep at time ``now`` (seconds since the epoch); returns what it did, by kind."""
    done = {"collections deleted": 0, "projects deleted": 0, "trashed": 0, "tokens deleted": 0}
    for table in ("collections", "groups"):
        for rec in store.records(table):
            if store.get(rec["uuid"]) is None:  # went with a project deleted earlier in this sweep
                continue
            if _passed(rec.get("delete_at"), now):
                if table == "collections":
                    store.delete(rec["uuid"])
                    done["collections deleted"] += 1
                else:  # a role group goes alone (it owns nothing)
                    done["projects deleted"] += rec.get("group_class") == "project"
                    done["collections deleted"] += _delete_project(store, rec["uuid"])
            elif not rec.get("is_trashed") and _passed(rec.get("trash_at"), now):
                store.update(rec["uuid"], {"is_trashed": True})
                done["trashed"] += 1
    for token in store.records("api_client_authorizations"):
        if _passed(token.get("expires_at"), now):
            store.delete(token["uuid"])
            done["tokens deleted"] += 1
    if any(done.values()):
        logger.info("trash sweep: %s", ", ".join(f"{n} {what}" for what, n in done.items() if n))
    return done


def _delete_project(store: Any, uuid: str) -> int:
    """Delete a project, its subprojects and everything they own; returns the collections deleted."""
    collections = 0
    for sub in store.records("groups"):
        if sub.get("owner_uuid") == uuid and sub.get("group_class") == "project":
            collections += _delete_project(store, sub["uuid"])
    for table in _OWNED_TABLES:
        for rec in store.records(table):
            if rec.get("owner_uuid") == uuid:
                store.delete(rec["uuid"])
                collections += table == "collections"
    store.delete(uuid)
    return collections
