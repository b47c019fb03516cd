"""The plain resources: users, tokens, projects, links, logs, Keep services, workflows.

Collections and the container life cycle have modules of their own; these need little beyond the
generic CRUD in :mod:`api`, plus the few extra methods the SDK and its tools call.
"""
from __future__ import annotations

import secrets
import string

from . import frozen, indexes
from .api import ApiError, Request, Resource, Trashable, list_filters, not_found, unprocessable
from .auth import trashed_now
from .filters import FilterError, apply_list
from .uuids import table_of


def new_token_secret() -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(50))


class Users(Resource):
    table = "users"

    async def current(self, req: Request) -> dict:
        return self._shape(req, req.user.user)

    async def system(self, req: Request) -> dict:
        return self._shape(req, self.store.get(self.store.system_user_uuid))

    def visible(self, req: Request, record: dict) -> bool:
        return True  # Arvados lists users to everyone who is logged in (names only matter here)

    def prepare_create(self, req: Request, attrs: dict) -> dict:
        if not req.user.is_admin:
            raise ApiError(403, "Forbidden: only an admin can create users")
        attrs["owner_uuid"] = self.store.system_user_uuid
        first, last = attrs.get("first_name") or "", attrs.get("last_name") or ""
        attrs["full_name"] = f"{first} {last}".strip()
        return attrs

    def after_write(self, req: Request, record: dict, old: dict | None) -> None:
        if record.get("is_active", True):  # Arvados enrols activated users in "All users"
            from .bootstrap import ensure_all_users_member

            ensure_all_users_member(self.store, record["uuid"])

    def prepare_update(self, req: Request, old: dict, changes: dict) -> dict:
        if not req.user.is_admin and {"is_admin", "is_active", "owner_uuid"} & set(changes):
            raise ApiError(403, "Forbidden: only an admin can change is_admin or is_active")
        return changes


class ApiClientAuthorizations(Resource):
    table = "api_client_authorizations"

    async def current(self, req: Request) -> dict:
        return self.present(req, dict(req.user.token))

    def visible(self, req: Request, record: dict) -> bool:
        """A token is its owner's alone (and admins'): see :meth:`Authorizer.level`."""
        return req.user.is_admin or record.get("owner_uuid") == req.user.uuid

    def prepare_update(self, req: Request, old: dict, changes: dict) -> dict:
        """Arvados: only an admin may give a token to another user (permission_to_update)."""
        if "owner_uuid" in changes and changes["owner_uuid"] != old.get("owner_uuid") and not req.user.is_admin:
            raise ApiError(403, "Forbidden: only an admin can change the owner_uuid of a token")
        return changes

    def present(self, req: Request, record: dict) -> dict:
        # v2 form, as Arvados returns it to the token's owner.
        record["api_token"] = f"v2/{record['uuid']}/{record['api_token']}"
        return record

    def prepare_create(self, req: Request, attrs: dict) -> dict:
        owner = attrs.get("owner_uuid") or req.user.uuid
        if owner != req.user.uuid and not req.user.is_admin:
            raise ApiError(403, "Forbidden: cannot create a token for another user")
        attrs["owner_uuid"] = owner
        attrs["api_token"] = new_token_secret()
        attrs.setdefault("scopes", ["all"])
        return attrs


class Groups(Trashable):
    table = "groups"

    def prepare_create(self, req: Request, attrs: dict) -> dict:
        if attrs.get("group_class") not in ("project", "role", "filter"):
            raise unprocessable(
                f"Invalid group_class {attrs.get('group_class')!r}: must be one of project, role, filter")
        if attrs.get("frozen_by_uuid") == "":
            attrs["frozen_by_uuid"] = None
        self._check_freeze(req, None, attrs)
        return attrs

    def prepare_update(self, req: Request, old: dict, changes: dict) -> dict:
        if changes.get("frozen_by_uuid") == "":
            changes["frozen_by_uuid"] = None
        self._check_freeze(req, old, dict(old, **changes))
        if (changes.get("is_trashed") or changes.get("trash_at")) and not trashed_now(old):
            self.before_trash(req, old)
        return changes

    def check_writable(self, req: Request, old: dict, changes: dict | None) -> None:
        """Unfreezing needs what write would need were the project not frozen: manage."""
        if old.get("frozen_by_uuid") and changes and "frozen_by_uuid" in changes and not changes["frozen_by_uuid"]:
            if not self.authz.can_manage(req.user, old):
                raise ApiError(403, f"Forbidden: unfreezing {old['uuid']} needs can_manage on it")
            return
        super().check_writable(req, old, changes)

    def before_trash(self, req: Request, old: dict) -> None:
        error = frozen.trash_error(self.store, old["uuid"])
        if error:
            raise unprocessable(error)

    def _check_freeze(self, req: Request, old: dict | None, merged: dict) -> None:
        """Arvados' ``check_frozen_state_change_allowed`` and ``update_frozen``'s request check."""
        trashed = bool(merged.get("trash_at") or merged.get("delete_at") or merged.get("is_trashed")) or (
            old is not None and self.authz.in_trashed_project(old))
        error = frozen.state_change_error(req.user.uuid, old, merged, trashed)
        if error:
            raise unprocessable(error)
        if old is not None and merged.get("frozen_by_uuid") and not old.get("frozen_by_uuid"):
            if not self.authz.can_manage(req.user, old):
                raise ApiError(403, f"Forbidden: freezing {old['uuid']} needs can_manage on it")
            error = frozen.active_request_error(self.store, old["uuid"])
            if error:
                raise unprocessable(error)

    async def contents(self, req: Request) -> dict:
        """What a project (or a user's home project) holds, across kinds, as one list."""
        owner = req.params.get("uuid") or req.user.uuid
        if table_of(owner) not in ("users", "groups"):
            raise not_found()
        target = self.store.get(owner)
        if target is None or (table_of(owner) == "groups" and not self.authz.can_read(req.user, target)):
            raise not_found()  # Arvados: a project the caller cannot read is not found
        # As Arvados does, filters apply per kind with that kind's columns (so ``["uuid", "is_a",
        # "arvados#collection"]`` picks one kind); a kind lacking a filtered attribute is left out.
        filters = list_filters(req.params)
        rows: list[dict] = []
        skipped: list[str] = []
        for table in ("collections", "container_requests", "groups", "workflows"):
            res = self.api.resources[table]
            candidates = [r for r in self._contents_candidates(table, filters, owner, req.flag("recursive"))
                          if (req.flag("recursive") or r.get("owner_uuid") == owner) and res.visible(req, r)
                          and (table != "groups" or r.get("group_class") in ("project", "filter"))]
            try:
                matched, _ = apply_list(candidates, filters=filters, limit=len(candidates),
                                        max_limit=len(candidates), table=table)
            except FilterError as e:
                if str(e).startswith("Invalid attribute"):
                    skipped.append(str(e))
                    continue
                raise unprocessable(str(e)) from None
            rows += matched
        if len(skipped) == 4:  # valid for no kind at all
            raise unprocessable(skipped[0])
        unfiltered = {k: v for k, v in req.params.items() if k not in ("filters", "where")}
        items, available = self.select_list(Request(req.http, req.caller, unfiltered, req.json_body), rows)
        shaped = [self.api.resources[table_of(r["uuid"])]._shape(req, r) for r in items]
        out = self.list_envelope(req, shaped, available)
        out["kind"] = "arvados#objectList"
        return out

    def _contents_candidates(self, table: str, filters: list, owner: str, recursive: bool) -> list[dict]:
        """The records of one kind a contents listing looks at: those a filter's index finds,
        else (not recursive) the owner's, else all of them; the caller still checks each."""
        found = indexes.candidates(table, filters, self.store)
        if found is not None:
            return found
        return self.store.records(table) if recursive else self.store.lookup(table, "owner_uuid", owner)

    async def shared(self, req: Request) -> dict:
        rows = [r for r in self.store.records("groups")
                if r.get("group_class") == "project" and r.get("owner_uuid") != req.user.uuid
                and self.visible(req, r)]
        items, available = self.select_list(req, rows)
        return self.list_envelope(req, [self._shape(req, r) for r in items], available)


class Links(Resource):
    table = "links"

    def prepare_create(self, req: Request, attrs: dict) -> dict:
        if not attrs.get("link_class"):
            raise unprocessable("link_class can't be blank")
        self._check_readable_ends(req, attrs, attrs)
        self._check_permission_link(req, attrs)
        return attrs

    def _check_readable_ends(self, req: Request, link: dict, changed: dict) -> None:
        """Arvados' check_readable_uuid: a link may only name objects the caller can read (a
        user may not tag, or learn the existence of, what is hidden from them). Users are
        visible to every user, as with Arvados' default ActivatedUsersAreVisibleToOthers."""
        for attr in ("head_uuid", "tail_uuid"):
            value = link.get(attr)
            if attr not in changed or not value or not table_of(value) or value == self.store.system_user_uuid:
                continue
            target = self.store.get(value)
            if target is None or (table_of(value) != "users" and not self.authz.can_read(req.user, target)):
                raise unprocessable(f"{attr} '{value}' not found")

    def prepare_update(self, req: Request, old: dict, changes: dict) -> dict:
        """An update is checked as the link it makes would be on create, so a harmless link
        cannot be edited into a grant (Arvados: links.rb validates on every save). As Arvados'
        restrict_alter_permissions, only the level of a permission link may change, and no
        link can be turned into or out of a permission link, except by an admin."""
        merged = dict(old, **changes)
        if not merged.get("link_class"):
            raise unprocessable("link_class can't be blank")
        self._check_readable_ends(req, merged, {k for k in changes if changes[k] != old.get(k)})
        if "permission" in (old.get("link_class"), merged.get("link_class")) and not req.user.is_admin:
            moved = [k for k in ("link_class", "head_uuid", "tail_uuid") if merged.get(k) != old.get(k)]
            if moved:
                raise unprocessable(f"Can only alter permission link level: cannot change {', '.join(moved)}")
        self._check_permission_link(req, merged)
        return changes

    def _check_permission_link(self, req: Request, link: dict) -> None:
        """Arvados' permission_to_attach_to_objects: a valid level, a user or role as the
        principal (tail), and can_manage on the object (head) unless an admin grants it."""
        if link.get("link_class") != "permission":
            return
        if link.get("name") not in ("can_read", "can_write", "can_manage", "can_login"):
            raise unprocessable(f"Invalid permission name {link.get('name')!r}: must be one of "
                                "can_read, can_write, can_manage, can_login")
        tail_uuid = link.get("tail_uuid") or ""
        tail = self.store.get(tail_uuid)
        if table_of(tail_uuid) == "groups":
            if tail is None:
                raise unprocessable(f"tail_uuid {tail_uuid} does not exist")
            if tail.get("group_class") != "role":
                raise unprocessable(f"tail_uuid {tail_uuid} must be a user or role, "
                                    f"was group with group_class {tail.get('group_class')}")
        elif table_of(tail_uuid) != "users" or tail is None:
            raise unprocessable(f"tail_uuid {tail_uuid or None} must be a user or role that exists")
        head = self.store.get(link.get("head_uuid") or "")
        if head is None:
            raise unprocessable(f"head_uuid {link.get('head_uuid')} does not exist")
        if not (req.user.is_admin or self.authz.level(req.user, head) >= 3):
            raise ApiError(403, f"Forbidden: need can_manage on {head['uuid']} to grant permission")


class Logs(Resource):
    table = "logs"

    def prepare_create(self, req: Request, attrs: dict) -> dict:
        """A log about an object is an event subscribers of that object receive, so writing one
        needs write permission on the object; its owner is taken from the object, not the body."""
        attrs.pop("id", None)  # the store numbers events
        object_uuid = attrs.get("object_uuid")
        if object_uuid:
            target = self.store.get(object_uuid)
            own_container = req.user.token.get("_container_uuid") == object_uuid  # crunch-run's logs
            if target is None or not (own_container or self.authz.can_write(req.user, target)):
                raise ApiError(403, f"Forbidden: cannot write a log about {object_uuid} (write permission needed)")
            attrs["object_owner_uuid"] = target.get("owner_uuid")
        return attrs


class KeepServices(Resource):
    table = "keep_services"

    async def accessible(self, req: Request) -> dict:
        req.user  # must be logged in
        items = [self._shape(req, r) for r in self.store.records("keep_services")]
        out = self.list_envelope(req, items, len(items))
        out["limit"] = len(items)
        return out

    def visible(self, req: Request, record: dict) -> bool:
        return True


class Workflows(Resource):
    table = "workflows"
