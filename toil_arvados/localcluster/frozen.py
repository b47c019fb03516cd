"""Frozen projects, as Arvados has them (``groups.frozen_by_uuid``).

A project is frozen by setting ``frozen_by_uuid`` to one's own user uuid. From then on the
project, every project below it and everything they own is read-only for everyone, admins
included: nothing is created in it, moved in or out, changed, trashed or deleted (``User.can?``
answers no to ``write`` when the target or its owner is in ``frozen_groups``). Only unfreezing is
allowed, to whoever could manage it (``can?(unfreeze:)``, manage level; ``API.UnfreezeProjectRequiresAdmin``
is false by default). Mirrors ``services/api/app/models/group.rb`` (``check_frozen_state_change_allowed``,
``update_frozen``, ``update_trash``) and ``user.rb`` ``can?``.
"""
from __future__ import annotations

from typing import Any

from .store import groups_above
from .uuids import table_of

#: Container request states a project can be frozen with (``update_frozen``).
_SETTLED_REQUESTS = ("Uncommitted", "Final")


def frozen_project_of(store: Any, record: dict) -> str | None:
    """The frozen project that makes ``record`` read-only (itself, or a project above it), else None."""
    if table_of(record.get("uuid") or "") == "groups" and record.get("frozen_by_uuid"):
        return record["uuid"]
    return next((group["uuid"] for group in groups_above(store, record) if group.get("frozen_by_uuid")), None)


def subtree(store: Any, project_uuid: str) -> list[str]:
    """The project and every project below it, top down."""
    out, seen = [project_uuid], {project_uuid}
    for uuid in out:  # grows as it goes: breadth first
        for g in store.lookup("groups", "owner_uuid", uuid):
            if g.get("group_class") == "project" and g["uuid"] not in seen:
                seen.add(g["uuid"])
                out.append(g["uuid"])
    return out


def state_change_error(caller_uuid: str, old: dict | None, merged: dict, trashed: bool) -> str | None:
    """Why ``frozen_by_uuid`` cannot change from ``old`` (None: a new group) to ``merged``'s, or None.

    The caller's permission to manage the project is checked apart (a 403, not a 422).
    """
    value = merged.get("frozen_by_uuid")
    if value == (old or {}).get("frozen_by_uuid") or (old is None and not value):
        return None
    if merged.get("group_class") != "project":
        return "frozen_by_uuid cannot be modified on a non-project group"
    if value and value != caller_uuid:
        return "frozen_by_uuid can only be set to the current user's UUID"
    if value and trashed:
        return "frozen_by_uuid cannot be set on a trashed project"
    return None


def active_request_error(store: Any, project_uuid: str) -> str | None:
    """Why the project cannot be frozen now: a container request in it (or below) is still going."""
    for owner in subtree(store, project_uuid):
        for cr in store.lookup("container_requests", "owner_uuid", owner):
            if cr.get("state") not in _SETTLED_REQUESTS:
                return f"cannot freeze project containing container request {cr['uuid']} with state = {cr['state']}"
    return None


def trash_error(store: Any, project_uuid: str) -> str | None:
    """Why the project cannot be trashed: it holds a frozen project (``update_trash``)."""
    for uuid in subtree(store, project_uuid)[1:]:
        group = store.get(uuid)
        if group and group.get("frozen_by_uuid"):
            return f"cannot trash project containing frozen project {uuid}"
    return None
