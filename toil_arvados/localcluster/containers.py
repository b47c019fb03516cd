"""Container requests and containers: Arvados' life cycle, reuse and retries.

A *container request* is what a user asks for; a *container* is the unit of work that satisfies it,
possibly shared by many requests (that sharing is reuse). This module keeps the two in step the way
the Arvados API server does:

- committing a request resolves its image and collection mounts to portable data hashes, then
  either reuses an existing container (:mod:`reuse`) or queues a new one;
- a container's priority is the highest priority of the committed requests it satisfies, so
  setting every request's priority to 0 cancels it;
- when a container ends, each request on it is finalized (output and log collections copied into
  the request owner's project), or, if the container was cancelled while the request still wants
  it, retried with a new container up to ``container_count_max``.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable

from ..images import upload_hint
from . import manifest as mf
from . import reuse, validation
from .collections import manifest_attrs, store_manifest
from .api import ApiError, Request, Resource, not_found, unprocessable
from .auth import trashed_now
from .store import Store, timestamp
from .uuids import is_pdh, new_uuid, table_of

logger = logging.getLogger(__name__)

#: Who can read a record, for the user a check is made for.
Readable = Callable[[dict], bool]
#: Private request attribute: the user who committed it, whose permissions resolve its mounts,
#: image and reuse, and who the container's token belongs to (Arvados' runtime_user_uuid).
COMMITTED_BY = "_committed_by"

FINAL_CONTAINER_STATES = ("Complete", "Cancelled")
#: Arvados' Containers.MaxDispatchAttempts default: unlocks before a container is cancelled.
MAX_DISPATCH_ATTEMPTS = 10
#: container_request.rb's MountKindFields.
MOUNT_KINDS = ("collection", "tmp", "json", "text", "file", "keep")
#: The command's standard streams, mounted by name rather than at a path.
STREAM_MOUNTS = ("stdin", "stdout", "stderr")
#: What stdin may be read from: a file in a collection, or JSON content (crunch-run's
#: SetupMounts refuses every other kind; we refuse it at commit, before a container is made).
STDIN_KINDS = ("collection", "json")

# container_request.rb's check_update_whitelist: AttrsPermittedAlways, plus (Committed) priority
# and container_count_max. Everything else is fixed once the request is committed.
_ALWAYS_MUTABLE = {"owner_uuid", "state", "name", "description", "properties"}
_COMMITTED_MUTABLE = _ALWAYS_MUTABLE | {"priority", "container_count_max"}
_FINAL_MUTABLE = _ALWAYS_MUTABLE


class ContainerRequests(Resource):
    table = "container_requests"

    def present(self, req: Request, record: dict) -> dict:
        record.pop("secret_mounts", None)
        record.pop("runtime_token", None)
        return record

    def prepare_create(self, req: Request, attrs: dict) -> dict:
        attrs.setdefault("container_count_max", self.api.config.container_count_max)
        if attrs.get("container_count_max") is None:
            attrs["container_count_max"] = self.api.config.container_count_max
        if attrs.get("state") not in ("Uncommitted", "Committed"):
            raise unprocessable(f"Invalid state {attrs.get('state')!r}: a new request is Uncommitted or Committed")
        for key in ("container_uuid", "output_uuid", "log_uuid"):
            attrs[key] = None
        attrs["container_count"] = 0
        for key, empty in (("cwd", "."), ("environment", {}), ("mounts", {}), ("secret_mounts", {}),
                           ("output_glob", [])):
            if attrs.get(key) is None:
                attrs[key] = empty
        fill_saved_defaults(attrs)
        if attrs.get("requesting_container_uuid") is None and req.user.token.get("_container_uuid"):
            attrs["requesting_container_uuid"] = req.user.token["_container_uuid"]
        # Rails validates a new record whatever its state (validate_datatypes & co. skip only
        # saved records that stay uncommitted).
        self._validate(attrs, committing=attrs["state"] == "Committed", checked=True, readable=self._reader(req))
        if attrs["state"] == "Committed":
            attrs[COMMITTED_BY] = req.user.uuid
        return attrs

    def _reader(self, req: Request) -> Readable:
        """What the requester may read: mounts and images are resolved among those only."""
        return lambda record: self.authz.can_read_live(req.user, record)

    def prepare_update(self, req: Request, old: dict, changes: dict) -> dict:
        # Implied values are filled before the whitelist check (Rails' before_validation), so
        # sending back bare runtime_constraints / scheduling_parameters is not a change.
        filled = dict(old, **changes)
        fill_saved_defaults(filled)
        compared = {k: filled[k] if k in ("runtime_constraints", "scheduling_parameters") else v
                    for k, v in changes.items()}
        changed = {k for k, v in compared.items() if _really_changed(old.get(k), v)}
        if old["state"] == "Final":
            bad = changed - _FINAL_MUTABLE
            if bad:
                raise unprocessable(f"Cannot modify {', '.join(sorted(bad))} of a container request in state Final")
        elif old["state"] == "Committed":
            bad = changed - _COMMITTED_MUTABLE
            if bad:
                raise unprocessable(
                    f"Cannot modify {', '.join(sorted(bad))} of a Committed container request; only "
                    f"{', '.join(sorted(_COMMITTED_MUTABLE - {'state'}))} may change")
            if changes.get("state", "Committed") == "Uncommitted":
                raise unprocessable("Invalid state transition from Committed to Uncommitted")
            if changes.get("state") == "Final":
                changes["priority"] = 0  # a client finalizing early is a cancel
        else:
            merged = dict(old, **changes)
            if {"scheduling_parameters", "runtime_constraints", "command"} & set(changes):
                # Defaults are filled on every save, not just create: a-c-r creates Uncommitted
                # and then commits with a full body whose runtime_constraints are bare.
                fill_saved_defaults(merged)
                changes["scheduling_parameters"] = merged["scheduling_parameters"]
                changes["runtime_constraints"] = merged["runtime_constraints"]
            if merged.get("state") not in ("Uncommitted", "Committed"):
                raise unprocessable(f"Invalid state transition from Uncommitted to {merged.get('state')}")
            committing = merged["state"] == "Committed"
            self._validate(merged, committing=committing, checked=committing, readable=self._reader(req))
            if committing:
                changes[COMMITTED_BY] = req.user.uuid
        return changes

    def _validate(self, attrs: dict, *, committing: bool, checked: bool, readable: Readable | None) -> None:
        """container_request.rb's validations, every error at once (422 naming each attribute).

        ``checked``: the record is new or becomes Committed, when Rails also runs the datatype,
        runtime constraint and scheduling parameter checks; presence is checked on every save.
        """
        errors = [f"{label} can't be blank" for key, label in (
            ("command", "Command"), ("container_image", "Container image"), ("output_path", "Output path"),
            ("cwd", "Cwd")) if not attrs.get(key)]
        errors += validation.array_of_strings_errors("Output storage classes", attrs.get("output_storage_classes"))
        if checked:
            errors += validation.runtime_constraint_errors(attrs.get("runtime_constraints"), committed=committing)
            errors += validation.scheduling_parameter_errors(
                attrs.get("scheduling_parameters"), committing=committing,
                any_preemptible=validation.any_preemptible(self.api.config.instance_types()))
            errors += validation.output_path_errors(attrs.get("output_path"), attrs.get("mounts"))
        if errors:
            raise ApiError(422, "; ".join(errors))
        if committing:
            validate_committed(attrs, self.store, readable)

    def after_write(self, req: Request, record: dict, old: dict | None) -> None:
        self.api.lifecycle.request_changed(record, old)

    def before_delete(self, req: Request, record: dict) -> None:
        if record["state"] == "Committed":
            raise unprocessable("Cannot delete a Committed container request: set its priority to 0 first")

    async def container_status(self, req: Request) -> dict:
        cr = self.fetch(req, req.params["uuid"])
        c = self.store.get(cr.get("container_uuid") or "")
        return {"uuid": c["uuid"] if c else "", "state": c["state"] if c else "Uncommitted",
                "scheduling_status": "" if not c else ("queued" if c["state"] == "Queued" else "")}


class Containers(Resource):
    table = "containers"

    def present(self, req: Request, record: dict) -> dict:
        record.pop("secret_mounts", None)
        record.pop("runtime_token", None)
        return record

    def visible(self, req: Request, record: dict) -> bool:
        """A container is readable by whoever can read a request that uses it."""
        if req.user.is_admin:
            return True
        return any(cr.get("container_uuid") == record["uuid"] and self.authz.can_read(req.user, cr)
                   for cr in self.store.lookup("container_requests", "container_uuid", record["uuid"]))

    def fetch(self, req: Request, uuid: str) -> dict:
        record = self.store.get(uuid)
        if record is None or table_of(uuid) != "containers" or not self.visible(req, record):
            raise not_found()
        return record

    async def get(self, req: Request) -> dict:
        return self._shape(req, self.fetch(req, req.params["uuid"]))

    async def create(self, req: Request) -> dict:
        raise ApiError(403, "Forbidden: containers are created by the system from container requests")

    # What the contained process itself (its auth_uuid token) may set while Running: Arvados'
    # progress attributes (a-c-r's runner reports runtime_status and sets its output this way).
    _SELF_UPDATABLE = frozenset({"progress", "runtime_status", "subrequests_cost", "cost", "output",
                                 "output_properties", "exit_code", "finished_at", "gateway_address",
                                 "interactive_session_started"})

    async def update(self, req: Request) -> dict:
        old = self.fetch(req, req.params["uuid"])
        changes = req.body("container", "containers")
        # As Arvados (container.rb validate_change), the container's own token is held to what the
        # contained process may change even when its user is an admin: it runs as that user.
        own = old["state"] == "Running" and req.user.token.get("uuid") == old.get("auth_uuid")
        if not own and not req.user.is_admin:
            raise ApiError(403, "Forbidden: only the dispatcher, an admin or the running container "
                                "itself updates a container")
        if own:
            bad = {k for k, v in changes.items() if k not in self._SELF_UPDATABLE and old.get(k) != v}
            if bad:
                raise unprocessable(f"Cannot modify {', '.join(sorted(bad))} of a container from inside it; "
                                    f"only {', '.join(sorted(self._SELF_UPDATABLE))} may change")
            changes = {k: v for k, v in changes.items() if k in self._SELF_UPDATABLE}
        if changes.get("output") and changes["output"] != old.get("output") and not any(
                c.get("portable_data_hash") == changes["output"] and self.authz.can_read(req.user, c)
                for c in _by_pdh(self.store, changes["output"])):
            raise unprocessable(f"output {changes['output']}: collection must exist and be readable by the "
                                "current user")
        rec = self.api.lifecycle.update_container(old["uuid"], changes, by=req.user.uuid)
        return self._shape(req, rec)

    async def current(self, req: Request) -> dict:
        cuuid = req.user.token.get("_container_uuid")
        c = self.store.get(cuuid or "")
        if c is None:
            raise not_found("Token is not associated with a container")
        return self._shape(req, c)

    async def auth(self, req: Request) -> dict:
        if not req.user.is_admin:
            raise ApiError(403, "Forbidden")
        c = self.fetch(req, req.params["uuid"])
        tok = self.store.get(c.get("auth_uuid") or "")
        if tok is None:
            raise not_found("Container has no token (it is not Locked or Running)")
        return self.api.resources["api_client_authorizations"].present(req, dict(tok))

    def _dispatcher_only(self, req: Request, what: str) -> None:
        """Locking is the dispatcher's: on Arvados only an admin (the dispatcher's token) may, so a
        user cannot take their container out of the queue or hand it back mid-run."""
        if not req.user.is_admin:
            raise ApiError(403, f"Forbidden: only the dispatcher (an admin) can {what} a container")

    async def lock(self, req: Request) -> dict:
        self._dispatcher_only(req, "lock")
        c = self.fetch(req, req.params["uuid"])
        if c["state"] != "Queued":
            raise unprocessable(f"Cannot lock container in state {c['state']}")
        return self._shape(req, self.api.lifecycle.update_container(c["uuid"], {"state": "Locked"}, by=req.user.uuid))

    async def unlock(self, req: Request) -> dict:
        self._dispatcher_only(req, "unlock")
        c = self.fetch(req, req.params["uuid"])
        if c["state"] != "Locked":
            raise unprocessable(f"Cannot unlock container in state {c['state']}")
        return self._shape(req, self.api.lifecycle.update_container(c["uuid"], {"state": "Queued"}, by=req.user.uuid))

    async def secret_mounts(self, req: Request) -> dict:
        """Only the container itself (its own runtime token) may read its secret mounts, as on
        Arvados: not even an admin, so no API user can read a secret a workflow was given."""
        c = self.store.get(req.params["uuid"])
        if c is None or table_of(c["uuid"]) != "containers" or not c.get("auth_uuid") \
                or req.user.token.get("uuid") != c["auth_uuid"]:
            raise ApiError(403, "Token is not associated with this container.")
        return {"secret_mounts": c.get("secret_mounts") or {}}


def merge_scheduling_parameters(params: list[dict]) -> dict:
    """The scheduling of a container retried for several requests, as Arvados merges them:
    ``partitions`` any if one request allows any (empty), else the union; ``preemptible`` only
    if all allow it; ``supervisor`` if any is one; ``max_run_time`` none (0) if one has none,
    else the longest."""
    partitions: list[str] = []
    for i, p in enumerate(params):
        mine = list(p.get("partitions") or [])
        if i == 0:
            partitions = mine
        elif not partitions or not mine:
            partitions = []
        else:
            partitions += [x for x in mine if x not in partitions]
    times = [p.get("max_run_time") or 0 for p in params]
    return {"partitions": partitions,
            "preemptible": all(bool(p.get("preemptible")) for p in params),
            "supervisor": any(bool(p.get("supervisor")) for p in params),
            "max_run_time": 0 if 0 in times else max(times, default=0)}


def _really_changed(old: Any, new: Any) -> bool:
    """WhitelistUpdate#really_changed: nil, [] and {} are all "empty", not a change."""
    if old in (None, [], {}) and new in (None, [], {}):
        return False
    return old != new


def fill_saved_defaults(attrs: dict) -> None:
    """Arvados' implied values for scheduling_parameters and runtime_constraints, on every save.

    A value that is not a hash is left alone so the validation names it.
    """
    sp = attrs.get("scheduling_parameters")
    if sp is None or isinstance(sp, dict):
        sp = {"max_run_time": 0, "partitions": [], "preemptible": False, "supervisor": False, **(sp or {})}
        if (attrs.get("command") or [""])[0] == "arvados-cwl-runner":
            sp["supervisor"] = True
        attrs["scheduling_parameters"] = sp
    rc = attrs.get("runtime_constraints")
    if rc is None or isinstance(rc, dict):
        attrs["runtime_constraints"] = reuse.fill_runtime_constraint_defaults(rc or {})


def validate_committed(attrs: dict, store: Store, readable: Readable | None = None) -> None:
    """The checks Arvados makes when a request becomes Committed (422 with the attribute named).

    ``readable`` is the requester's read permission: collections they cannot read may not be
    mounted (by uuid or by content hash) nor used as the image, as on Arvados, where mounts and
    images are resolved among ``Collection.readable_by(current_user)``.
    """
    if not isinstance(attrs["command"], list) or not all(isinstance(a, str) for a in attrs["command"]):
        raise unprocessable("command must be a non-empty array of strings")
    if not isinstance(attrs["output_path"], str) or not safe_container_path(attrs["output_path"]):
        raise unprocessable(f"output_path {attrs['output_path']!r} must be an absolute path without '..'")
    priority = attrs.get("priority")
    if priority is None or not isinstance(priority, int) or not 0 <= priority <= 1000:
        raise unprocessable(f"priority must be an integer from 0 to 1000, got {priority!r}")
    mounts = attrs.get("mounts") or {}
    for path, mount in mounts.items():
        kind = (mount or {}).get("kind")
        if kind not in MOUNT_KINDS:
            raise unprocessable(f"mounts[{path!r}]: unsupported mount kind {kind!r}; use one of {', '.join(MOUNT_KINDS)}")
        if path in STREAM_MOUNTS:
            validate_stream_mount(path, mount)
        elif not safe_container_path(path):
            raise unprocessable(f"mounts: {path!r} is not an absolute path without '..' (nor stdin/stdout/stderr)")
    secret = attrs.get("secret_mounts") or {}
    for path in secret:
        if path not in STREAM_MOUNTS and not safe_container_path(path):
            raise unprocessable(f"secret_mounts: {path!r} is not an absolute path without '..'")
    for path, mount in {**mounts, **secret}.items():
        if isinstance(mount, dict) and mount.get("kind") == "collection":
            validate_collection_mount(path, mount, store, readable)
    resolve_image(attrs["container_image"], store, readable)


def _by_pdh(store: Store, pdh: Any) -> list[dict]:
    """The collections with content hash ``pdh`` (index lookup; callers still compare)."""
    return store.lookup("collections", "portable_data_hash", pdh) if isinstance(pdh, str) else []


def safe_container_path(path: str) -> bool:
    """An absolute path in the container that no ``..`` component can move out of its place."""
    return isinstance(path, str) and path.startswith("/") and ".." not in path.split("/")


def safe_relative_path(path: str) -> bool:
    """A path inside a collection (leading ``/`` allowed) that cannot climb out of it."""
    return isinstance(path, str) and ".." not in path.split("/")


#: The empty collection: every cluster has it, and it holds nothing to protect.
EMPTY_PDH = "d41d8cd98f00b204e9800998ecf8427e+0"


def validate_collection_mount(path: str, mount: dict, store: Store, readable: Readable | None) -> None:
    """A collection mount names a real hash or collection uuid the requester can read, and a
    ``path`` inside it; anything else is a 422 naming the mount (crunch-run would otherwise
    join ``..`` or a foreign collection into what the container sees)."""
    pdh, uuid, sub = mount.get("portable_data_hash"), mount.get("uuid"), mount.get("path")
    if pdh is not None and not (isinstance(pdh, str) and is_pdh(pdh)):
        raise unprocessable(f"mounts[{path!r}]: portable_data_hash {pdh!r} is not a portable data hash")
    if uuid is not None and not (isinstance(uuid, str) and table_of(uuid) == "collections"):
        raise unprocessable(f"mounts[{path!r}]: uuid {uuid!r} is not a collection uuid")
    if sub is not None and not safe_relative_path(sub):
        raise unprocessable(f"mounts[{path!r}]: path {sub!r} must stay inside the collection (no '..')")
    if uuid is not None:
        record = store.get(uuid)
        if record is None or (readable is not None and not readable(record)):
            raise unprocessable(f"mounts[{path!r}]: cannot mount collection {uuid}: not found")
    if pdh is not None and pdh != EMPTY_PDH and not any(
            c.get("portable_data_hash") == pdh and not trashed_now(c) and (readable is None or readable(c))
            for c in _by_pdh(store, pdh)):
        raise unprocessable(f"mounts[{path!r}]: cannot mount collection {pdh}: not found")


def validate_stream_mount(name: str, mount: dict) -> None:
    """What crunch-run accepts for the command's standard streams, checked at commit time so a
    client hears about a bad one as a 422 rather than as a container that fails to start."""
    kind = mount.get("kind")
    if name == "stdin":
        if kind not in STDIN_KINDS:
            raise unprocessable(f"mounts['stdin']: kind must be one of {', '.join(STDIN_KINDS)}, got {kind!r}")
        if kind == "collection" and not (mount.get("portable_data_hash") or mount.get("uuid")):
            raise unprocessable("mounts['stdin']: a collection stdin needs a portable_data_hash or uuid")
        return
    if kind != "file":
        raise unprocessable(f"mounts[{name!r}]: kind must be 'file', got {kind!r}")
    target = mount.get("path")
    if not safe_container_path(target):
        raise unprocessable(f"mounts[{name!r}]: path must be an absolute path in the container without '..', "
                            f"got {target!r}")


def resolve_image(image: str, store: Store, readable: Readable | None = None) -> str:
    """An image reference -> the portable data hash of its image collection, as Arvados does.

    Accepts a PDH, an image collection UUID, ``repo:tag`` or ``repo`` (``latest``) found through
    ``docker_image_repo+tag`` links, or an image hash through ``docker_image_hash`` links. Only
    collections (and, for names, links) that ``readable`` accepts count: as on Arvados, another
    user's link naming their own collection ``debian:stable-slim`` must not change what the name
    means to you.
    """
    def ok(record: dict | None) -> bool:
        return record is not None and not trashed_now(record) and (readable is None or readable(record))

    if is_pdh(image):
        if image == EMPTY_PDH or any(c.get("portable_data_hash") == image and ok(c)
                                     for c in _by_pdh(store, image)):
            return image
    elif table_of(image) == "collections":
        c = store.get(image)
        if ok(c):
            return c["portable_data_hash"]
    else:
        name = image if ":" in image.rsplit("/", 1)[-1] else image + ":latest"
        candidates = []
        names = {name, image, "sha256:" + image}  # every name either kind of link may carry
        for link in store.lookup_many("links", "name", sorted(names)):
            if (link.get("link_class") == "docker_image_repo+tag" and link.get("name") == name) or (
                    link.get("link_class") == "docker_image_hash" and link.get("name") in (image, "sha256:" + image)):
                c = store.get(link.get("head_uuid") or "")
                if ok(c) and ok(link):
                    candidates.append((link["created_at"], c["portable_data_hash"]))
        if candidates:
            return max(candidates)[1]
    build = upload_hint(image)
    raise unprocessable(
        f"container_image {image!r} not found in Keep: upload it with `arv-keepdocker {image}`"
        + (f" (or build and store it: `{build}`)" if build else ""))


class Lifecycle:
    """Keeps container requests and containers consistent as either side changes."""

    def __init__(self, store: Store, config: Any, authz: Any = None) -> None:
        self.store = store
        self.config = config
        #: The cluster's Authorizer: a request's mounts, image and reuse are resolved among what
        #: the user who committed it can read. None (unit tests): everything is readable.
        self.authz = authz

    def _reader(self, cr: dict) -> Readable | None:
        """Read permission of the user who committed *cr* (None: no restriction known)."""
        user = self.store.get(cr.get(COMMITTED_BY) or "")
        if user is None or self.authz is None:
            return None
        from .auth import Caller

        caller = Caller(user=user, token={})
        return lambda record: self.authz.can_read_live(caller, record)

    # -- requests --------------------------------------------------------------------------

    def request_changed(self, cr: dict, old: dict | None) -> None:
        if cr["state"] == "Committed" and not cr.get("container_uuid"):
            self._assign_container(cr)
        elif cr["state"] == "Committed" and old is not None and old.get("priority") != cr.get("priority"):
            self._update_priority(cr["container_uuid"])

    def _assign_container(self, cr: dict) -> None:
        attrs = self._container_attrs(cr)
        container = None
        if cr.get("use_existing", True):
            reader = self._reader(cr)
            chosen = reuse.choose_reusable(self.store.lookup("containers", "reuse_key", reuse.reuse_key(attrs)), attrs,
                                           readable=lambda pdh: self._collection_readable(pdh, reader))
            container = self.store.get(chosen["uuid"]) if chosen else None
        if container is None:
            container = self.store.create("containers", attrs, by=self.store.system_user_uuid)
        cr = self.store.update(cr["uuid"], {"container_uuid": container["uuid"],
                                            "container_count": (cr.get("container_count") or 0) + 1})
        if container["state"] in FINAL_CONTAINER_STATES:
            self._finalize(cr, container)
        else:
            self._update_priority(container["uuid"])

    def _pdh_for_uuid(self, uuid: str, reader: Readable | None) -> str | None:
        c = self.store.get(uuid)
        if c is None or table_of(uuid) != "collections" or (reader is not None and not reader(c)):
            return None
        return c["portable_data_hash"]

    def _container_attrs(self, cr: dict) -> dict:
        reader = self._reader(cr)
        try:
            mounts = reuse.resolve_mounts(cr.get("mounts") or {}, lambda uuid: self._pdh_for_uuid(uuid, reader))
        except reuse.UnresolvableError as e:
            raise unprocessable(f"mounts: {e}") from None
        rc = reuse.resolve_runtime_constraints(
            reuse.fill_runtime_constraint_defaults(cr.get("runtime_constraints") or {}))
        secret = cr.get("secret_mounts") or {}
        return {
            "state": "Queued",
            "owner_uuid": self.store.system_user_uuid,
            "command": cr["command"],
            "cwd": cr.get("cwd") or ".",
            "environment": reuse.deep_sort(cr.get("environment") or {}),
            "output_path": cr["output_path"],
            "output_glob": cr.get("output_glob") or [],
            "container_image": resolve_image(cr["container_image"], self.store, reader),
            "mounts": reuse.deep_sort(mounts),
            "secret_mounts": secret,
            "secret_mounts_md5": reuse.secret_mounts_md5(secret),
            "runtime_constraints": rc,
            "scheduling_parameters": reuse.deep_sort(cr.get("scheduling_parameters") or {}),
            # Arvados: the user who committed the request, never the project it is in (a token
            # acting as the project would manage it, more than the user's write permission).
            "runtime_user_uuid": cr.get(COMMITTED_BY) or cr.get("modified_by_user_uuid") or cr["owner_uuid"],
            "runtime_auth_scopes": ["all"],
            "output_storage_classes": cr.get("output_storage_classes") or ["default"],
            "output_properties": {},
            "priority": cr.get("priority") or 0,
            "exit_code": None, "log": None, "output": None, "progress": None,
            "started_at": None, "finished_at": None, "auth_uuid": None, "locked_by_uuid": None,
            "runtime_status": {}, "lock_count": 0, "cost": 0, "subrequests_cost": 0,
            "gateway_address": None, "interactive_session_started": False,
            "service": bool(cr.get("service")), "published_ports": cr.get("published_ports") or {},
        }

    def _update_priority(self, container_uuid: str) -> None:
        c = self.store.get(container_uuid)
        if c is None or c["state"] in FINAL_CONTAINER_STATES:
            return
        wanted = [cr.get("priority") or 0 for cr in self.store.lookup("container_requests", "container_uuid",
                                                                      container_uuid)
                  if cr.get("container_uuid") == container_uuid and cr["state"] == "Committed"]
        priority = max(wanted, default=0)
        if priority != c.get("priority"):
            c = self.store.update(container_uuid, {"priority": priority})
        if priority == 0 and c["state"] == "Queued":
            self.update_container(container_uuid, {"state": "Cancelled"})
        # Locked/Running containers with priority 0 are stopped by the dispatcher.

    def _collection_readable(self, pdh: str | None, reader: Readable | None = None) -> bool:
        """Arvados reuses a finished container only if its output and log are readable by the
        requester: otherwise reuse would hand another user's results to them."""
        if not pdh:
            return False
        return any(c.get("portable_data_hash") == pdh and not trashed_now(c)
                   and (reader is None or reader(c))
                   for c in _by_pdh(self.store, pdh))

    # -- containers --------------------------------------------------------------------------

    def update_container(self, uuid: str, changes: dict, *, by: str | None = None) -> dict:
        old = self.store.get(uuid)
        if old is None:
            raise not_found()
        new_state = changes.get("state", old["state"])
        if new_state != old["state"]:
            allowed = {"Queued": {"Locked", "Cancelled"}, "Locked": {"Queued", "Running", "Cancelled"},
                       "Running": {"Complete", "Cancelled"}}.get(old["state"], set())
            if new_state not in allowed:
                raise unprocessable(f"Invalid state transition from {old['state']} to {new_state}")
            now = timestamp()
            if new_state == "Locked":
                changes["lock_count"] = (old.get("lock_count") or 0) + 1
            if old["state"] == "Locked" and new_state == "Queued" \
                    and (old.get("lock_count") or 0) >= MAX_DISPATCH_ATTEMPTS:
                new_state = changes["state"] = "Cancelled"  # Arvados' check_unlock
                changes["runtime_status"] = {
                    "error": "Failed to start container.  Cancelled after exceeding "
                             f"'Containers.MaxDispatchAttempts' (lock_count={old.get('lock_count')})"}
            if new_state == "Running":
                changes.setdefault("started_at", now)
            if new_state in FINAL_CONTAINER_STATES:
                changes.setdefault("finished_at", now)
                changes["secret_mounts"] = {}
            if new_state not in ("Locked", "Running") and old.get("auth_uuid"):
                # Arvados (Container#assign_auth): only a Locked or Running container has a
                # token; leaving those states expires it in the same save.
                self._expire_token(old["auth_uuid"])
                changes["auth_uuid"] = None
        c = self.store.update(uuid, changes, by=by)
        if new_state != old["state"] and new_state in FINAL_CONTAINER_STATES + ("Queued",):
            self._expire_token(c.get("auth_uuid"))
        if new_state != old["state"] and new_state in FINAL_CONTAINER_STATES:
            self._container_finished(c)
        return c

    def _expire_token(self, token_uuid: str | None) -> None:
        """A container's runtime token works only while the container is Locked/Running: once it
        ends (or goes back to the queue) the token expires, as Arvados expires ``auth_uuid``."""
        tok = self.store.get(token_uuid or "")
        if tok is not None and table_of(tok["uuid"]) == "api_client_authorizations":
            now = timestamp()
            if not tok.get("expires_at") or tok["expires_at"] > now:
                self.store.update(tok["uuid"], {"expires_at": now}, log=False)

    def expire_stale_container_tokens(self) -> None:
        """After a crash: expire every container token whose container is not Locked/Running."""
        for tok in self.store.records("api_client_authorizations"):
            cuuid = tok.get("_container_uuid")
            if not cuuid:
                continue
            c = self.store.get(cuuid)
            if c is None or c["state"] not in ("Locked", "Running") or c.get("auth_uuid") != tok["uuid"]:
                self._expire_token(tok["uuid"])

    def repair(self) -> list[str]:
        """Bring requests and containers back in step after a crash; what was done, one line each.

        Each step of the life cycle (a container finishing, its requests being finalized or
        retried, a request getting its container) is its own committed change, so a crash can
        fall between two of them. This finishes the work the crash interrupted, as the API server
        would have: requests whose container is final are finalized (or retried), committed
        requests without a container get one, and a container's priority follows its requests
        again (a queued container no request wants is cancelled).
        """
        done = []
        for snapshot in self.store.records("container_requests"):
            cr = self.store.get(snapshot["uuid"])  # an earlier step may have finalized it
            if cr is None or cr["state"] != "Committed":
                continue
            c = self.store.get(cr.get("container_uuid") or "")
            if c is None:
                done.append(f"request {cr['uuid']}: assigning a container")
                self.store.update(cr["uuid"], {"container_uuid": None})
                self._assign_container(self.store.get(cr["uuid"]))
            elif c["state"] in FINAL_CONTAINER_STATES:
                done.append(f"request {cr['uuid']}: container {c['uuid']} is {c['state']}")
                self._container_finished(c)
        for c in self.store.records("containers"):
            if c["state"] not in FINAL_CONTAINER_STATES:
                self._update_priority(c["uuid"])
            elif c.get("auth_uuid"):
                self._expire_token(c["auth_uuid"])
                self.store.update(c["uuid"], {"auth_uuid": None})
        for token in self.store.records("api_client_authorizations"):
            # A container token made just before a crash, never given to its container (or
            # given to one that no longer holds it), must not stay usable.
            owner = self.store.get(token.get("_container_uuid") or "")
            if owner is not None and not token.get("expires_at") and owner.get("auth_uuid") != token["uuid"]:
                done.append(f"token {token['uuid']} of container {owner['uuid']}: expired")
                self._expire_token(token["uuid"])
        return done

    def _container_finished(self, c: dict) -> None:
        """Arvados' handle_completed: the committed requests on a cancelled container that still
        want it are retried together on one new container; the others are finalized."""
        committed = sorted((cr for cr in self.store.lookup("container_requests", "container_uuid", c["uuid"])
                            if cr.get("container_uuid") == c["uuid"] and cr["state"] == "Committed"),
                           key=lambda cr: cr["uuid"])
        retryable = [cr for cr in committed if c["state"] == "Cancelled" and (cr.get("priority") or 0) > 0
                     and (cr.get("container_count") or 0) < (cr.get("container_count_max") or 1)
                     and self._parent_wants(cr)]
        if retryable:
            self._retry(c, retryable)
        for cr in committed:
            if cr not in retryable:
                self._finalize(cr, c)
        self._cancel_children(c)

    def _retry(self, c: dict, requests: list[dict]) -> None:
        """One fresh container (a cancelled one is never reused) for all of ``requests``, each
        counting it as an attempt, scheduled as all of them together allow."""
        attrs = self._container_attrs(requests[0])
        attrs["scheduling_parameters"] = reuse.deep_sort(
            merge_scheduling_parameters([cr.get("scheduling_parameters") or {} for cr in requests]))
        container = self.store.create("containers", attrs, by=self.store.system_user_uuid)
        for cr in requests:
            logger.info("retrying %s: container %s was cancelled (attempt %d of %d)", cr["uuid"], c["uuid"],
                        (cr.get("container_count") or 0) + 1, cr.get("container_count_max") or 1)
            changes = {"container_uuid": container["uuid"], "container_count": (cr.get("container_count") or 0) + 1}
            if c.get("log"):  # set_container: the old container's log joins the request's
                changes["log_uuid"] = self._add_to_request_log(cr, c, at_root=False) or cr.get("log_uuid")
            self.store.update(cr["uuid"], changes)
        self._update_priority(container["uuid"])

    def _parent_wants(self, cr: dict) -> bool:
        """Arvados retries a request only while the container that made it (if any) still runs
        with priority > 0: the work of a cancelled workflow runner is not restarted."""
        parent = self.store.get(cr.get("requesting_container_uuid") or "")
        return parent is None or (parent["state"] == "Running" and (parent.get("priority") or 0) > 0)

    def _cancel_children(self, c: dict) -> None:
        """As Arvados when a container ends: the requests it made that are still Committed get
        priority 0, and those whose container has not started yet are finalized now."""
        for cr in self.store.lookup("container_requests", "requesting_container_uuid", c["uuid"]):
            if cr.get("requesting_container_uuid") != c["uuid"] or cr["state"] != "Committed":
                continue
            old = cr
            cr = self.store.update(cr["uuid"], {"priority": 0})
            self.request_changed(cr, old)
            cr = self.store.get(cr["uuid"])
            child = self.store.get(cr.get("container_uuid") or "")
            if cr["state"] == "Committed" and child is not None and child["state"] in ("Queued", "Locked"):
                self._finalize(cr, child)

    def _finalize(self, cr: dict, c: dict) -> None:
        """container_request.rb's finalize!: the request's log collection gets the container's
        log (at its root and under "log for container <uuid>"), whatever the outcome; a
        Complete container's log is also copied verbatim (same PDH: reuse needs a readable log);
        the output is copied when there is one."""
        changes: dict[str, Any] = {"state": "Final", "priority": 0 if c["state"] == "Cancelled" else cr["priority"]}
        changes["secret_mounts"] = {}
        changes["runtime_token"] = None
        if c.get("log"):
            changes["log_uuid"] = self._add_to_request_log(cr, c, at_root=True) or cr.get("log_uuid")
            if c["state"] == "Complete":
                self._copy_collection(c["log"], cr, name=f"Container log for container {c['uuid']}",
                                      properties={"type": "log", "container_request": cr["uuid"],
                                                  "container_uuid": c["uuid"]})
        if c["state"] == "Complete" and c.get("exit_code") == 0 and c.get("output"):
            kind = "intermediate" if cr.get("requesting_container_uuid") else "output"
            props = dict(cr.get("output_properties") or {})
            props.update({"type": kind, "container_request": cr["uuid"]})
            changes["output_uuid"] = self._copy_collection(
                c["output"], cr, name=cr.get("output_name") or f"Container output for request {cr['uuid']}",
                properties=props, ttl=int(cr.get("output_ttl") or 0))
        self.store.update(cr["uuid"], changes)

    def _add_to_request_log(self, cr: dict, c: dict, *, at_root: bool) -> str | None:
        """Merge container *c*'s log into the request's log collection (made on first use):
        under "log for container <uuid>", and also at the root for the final container."""
        source = self._collection_by_pdh(c["log"])
        if source is None:
            return None
        existing = self.store.get(cr.get("log_uuid") or "")
        tree = mf.parse(existing["manifest_text"]) if existing else mf.ManifestTree()
        log = mf.parse(source["manifest_text"])
        sub = f"log for container {c['uuid']}"
        for prefix in ([""] if at_root else []) + [sub]:
            for path, segments in log.files.items():
                tree.files[f"{prefix}/{path}" if prefix else path] = segments
            for d in log.dirs:
                tree.dirs.add(f"{prefix}/{d}".rstrip("/") if prefix else d)
        attrs = manifest_attrs(mf.render(tree))
        attrs["properties"] = {"type": "log", "container_request": cr["uuid"]}
        if existing:
            return self.store.update(existing["uuid"], attrs)["uuid"]
        name, uuid = self._unique_name(cr["owner_uuid"], f"Container log for request {cr['uuid']}")
        rec = store_manifest(self.store, attrs["manifest_text"], owner_uuid=cr["owner_uuid"], name=name,
                             properties=attrs["properties"], uuid=uuid)
        return rec["uuid"]

    def _collection_by_pdh(self, pdh: str) -> dict | None:
        return next((c for c in _by_pdh(self.store, pdh) if c.get("portable_data_hash") == pdh), None)

    def _unique_name(self, owner: str, name: str) -> tuple[str, str]:
        """A new collection's UUID, and *name* made unique in *owner* as save_with_unique_name!
        does (the UUID's tail appended when the name is taken)."""
        uuid = new_uuid(self.store.cluster_id, "collections")
        taken = any(c.get("name") == name and c.get("owner_uuid") == owner and not c.get("is_trashed")
                    for c in self.store.lookup("collections", "owner_name", (owner, name)))
        return (validation.unique_name(name, uuid) if taken else name), uuid

    def _copy_collection(self, pdh: str, cr: dict, *, name: str, properties: dict, ttl: int = 0) -> str | None:
        """A copy of the collection *pdh* for the request's owner; with ``output_ttl`` (*ttl*)
        it is trashed and deleted that many seconds from now, as update_collections does."""
        source = self._collection_by_pdh(pdh)
        if source is None:
            return None
        final_name, uuid = self._unique_name(cr["owner_uuid"], name)
        keep = ("manifest_text", "portable_data_hash", "file_count", "file_size_total", "replication_desired",
                "replication_confirmed", "storage_classes_desired", "storage_classes_confirmed")
        attrs = {k: source.get(k) for k in keep if k in source}
        base = {k: v for k, v in source.items() if k not in ("uuid", "owner_uuid", "created_at", "modified_at",
                                                               "modified_by_user_uuid", "etag", "kind")}
        base.update(attrs)
        expires = timestamp(time.time() + ttl) if ttl > 0 else None
        base.update({"owner_uuid": cr["owner_uuid"], "name": final_name, "properties": properties,
                     "trash_at": expires, "delete_at": expires, "is_trashed": False,
                     # as Arvados saves a request's output and log collections
                     "storage_classes_desired": list(cr.get("output_storage_classes") or ["default"])})
        rec = self.store.create("collections", base, by=self.store.system_user_uuid, uuid=uuid)
        self.store.update(rec["uuid"], {"current_version_uuid": rec["uuid"]}, log=False, touch=False)
        return rec["uuid"]
