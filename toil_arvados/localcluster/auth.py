"""Tokens and permissions: who is asking, and what they may see and change.

Arvados' model, reduced to what a single-machine cluster needs: admins see everything; a user
sees what they own, what is owned by projects they own (transitively), and what a permission link
(``can_read`` / ``can_write`` / ``can_manage``) grants to them or to a group they belong to.
"""
from __future__ import annotations

import hmac
from dataclasses import dataclass

from .frozen import frozen_project_of
from .indexes import token_digest
from .signing import token_secret  # noqa: F401  (callers import it from here too)
from .store import Store, groups_above, timestamp
from .uuids import table_of

_LEVELS = {"can_read": 1, "can_write": 2, "can_manage": 3}


@dataclass(frozen=True)
class Caller:
    """The user behind a request, and the token record they used."""

    user: dict
    token: dict

    @property
    def uuid(self) -> str:
        return self.user["uuid"]

    @property
    def is_admin(self) -> bool:
        return bool(self.user.get("is_admin"))


def trashed_now(record: dict | None) -> bool:
    """Trashed, or due: Arvados' ``readable_by`` treats a collection or project whose ``trash_at``
    has passed as trashed at once (its sweeper sets ``is_trashed`` later), e.g. a step output
    whose request had an ``output_ttl``."""
    if not record:
        return False
    if record.get("is_trashed"):
        return True
    at = record.get("trash_at")
    if not at:
        return False
    from .filters import FilterError, normalize_timestamp

    try:
        return normalize_timestamp(str(at)) <= normalize_timestamp(timestamp())
    except FilterError:
        return False


class Authorizer:
    def __init__(self, store: Store) -> None:
        self.store = store

    def authenticate(self, token: str | None) -> Caller | None:
        """The caller behind *token*, or None (unknown, expired, or its user is inactive).

        A v2 token names its record, so the record is found by uuid and only then its secret is
        compared, in constant time (``hmac.compare_digest``): how long a wrong guess takes must
        not tell how much of it was right. A bare (v1) secret is found through the index of
        token digests (a digest's lookup time says nothing about the secret's prefix), then
        compared in constant time too.
        """
        if not token:
            return None
        rec = self._token_record(token)
        if rec is None:
            return None
        expires = rec.get("expires_at")
        if expires and expires <= timestamp():
            return None
        user = self.store.get(rec["owner_uuid"])
        if user is None or not user.get("is_active", True):
            return None
        return Caller(user=user, token=rec)

    def _token_record(self, token: str) -> dict | None:
        secret = token_secret(token).encode()
        if token.startswith("v2/"):
            rec = self.store.get(token.split("/")[1])
            if rec is None or table_of(rec["uuid"]) != "api_client_authorizations":
                return None
            return rec if hmac.compare_digest(str(rec.get("api_token") or "").encode(), secret) else None
        found = None
        for rec in self.store.lookup("api_client_authorizations", "token", token_digest(secret.decode())):
            if hmac.compare_digest(str(rec.get("api_token") or "").encode(), secret) and found is None:
                found = rec
        return found

    def still_valid(self, caller: Caller) -> bool:
        """Whether the token *caller* authenticated with still works (not expired, not deleted,
        user still active): a websocket authenticates once, but must stop receiving events when
        its token ends, as Arvados' ws re-checks permission with the token for each event."""
        rec = self.store.get(caller.token.get("uuid") or "")
        if rec is None or rec.get("owner_uuid") != caller.uuid:
            return False
        expires = rec.get("expires_at")
        user = self.store.get(caller.uuid)
        return not (expires and expires <= timestamp()) and user is not None and user.get("is_active", True)

    def can_read_event(self, caller: Caller, log: dict) -> bool:
        return self.still_valid(caller) and self.can_read(caller, log)

    def user_for_token(self, token: str) -> str | None:
        caller = self.authenticate(token)
        return caller.uuid if caller else None

    # -- permissions ---------------------------------------------------------------------------

    def level(self, caller: Caller, record: dict) -> int:
        """0 none, 1 read, 2 write, 3 manage."""
        if caller.is_admin:
            return 3
        uuid = record.get("uuid")
        if uuid == caller.uuid:
            return 3
        table = table_of(uuid or "")
        if table == "logs":
            target = self.store.get(record.get("object_uuid", ""))
            return min(self.level(caller, target), 1) if target else 0
        if table == "keep_services":
            return 1
        if table == "api_client_authorizations":
            # A token is its owner's alone: a permission on the owning user (e.g. a share of the
            # user record) never extends to their tokens, nor to the events about them.
            return 3 if record.get("owner_uuid") == caller.uuid else 0
        best = 0
        principals = self._principals(caller.uuid)
        seen: set[str] = set()
        node: str | None = uuid
        while node and node not in seen:
            seen.add(node)
            obj = self.store.get(node)
            if obj is None:
                break
            owner = obj.get("owner_uuid")
            if owner in principals:
                return 3
            best = max(best, self._granted(principals, node))
            node = owner
        return best

    def can_read(self, caller: Caller, record: dict) -> bool:
        return self.level(caller, record) >= 1

    def in_trashed_project(self, record: dict) -> bool:
        """Whether a project above ``record`` is in the trash (trashed, or its ``trash_at`` passed).

        Arvados keeps the contents of a trashed project as they are but treats them as trashed
        (``readable_by``: owner in ``trashed_groups``, which holds every project below a trashed
        one): hidden from list and get unless ``include_trash``, unreadable for mounts and reuse,
        and deleted with the project.
        """
        return any(trashed_now(group) for group in groups_above(self.store, record))

    def can_read_live(self, caller: Caller, record: dict) -> bool:
        """Readable and not inside a trashed project: what Arvados' ``readable_by`` finds."""
        return self.can_read(caller, record) and not self.in_trashed_project(record)

    def can_write(self, caller: Caller, record: dict) -> bool:
        """Write permission, which nobody has inside a frozen project (see :mod:`frozen`)."""
        return frozen_project_of(self.store, record) is None and self.level(caller, record) >= 2

    def can_manage(self, caller: Caller, record: dict) -> bool:
        """Manage permission; also Arvados' ``can?(unfreeze:)`` (manage level, frozen or not)."""
        return self.level(caller, record) >= 3

    def _principals(self, user_uuid: str) -> set[str]:
        """The user and the groups (roles) they are a member of."""
        out = {user_uuid}
        for link in self.store.lookup("links", "tail_uuid", user_uuid):
            if (link.get("link_class") == "permission" and link.get("tail_uuid") == user_uuid
                    and table_of(link.get("head_uuid", "")) == "groups"):
                group = self.store.get(link["head_uuid"])
                if group and group.get("group_class") == "role":
                    out.add(link["head_uuid"])
        return out

    def _granted(self, principals: set[str], head_uuid: str) -> int:
        best = 0
        for link in self.store.lookup("links", "head_uuid", head_uuid):
            if (link.get("link_class") == "permission" and link.get("head_uuid") == head_uuid
                    and link.get("tail_uuid") in principals):
                best = max(best, _LEVELS.get(link.get("name", ""), 0))
        return best
