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
from typing import Any

from . import reuse
from .api import ApiError, Request, Resource, not_found, unprocessable
from .store import Store, timestamp
from .uuids import is_pdh, table_of

logger = logging.getLogger(__name__)

FINAL_CONTAINER_STATES = ("Complete", "Cancelled")
MOUNT_KINDS = ("collection", "tmp", "json", "text", "file", "keep", "git_tree")
#: The command's standard streams, mounted by name rather than at a path.
STREAM_MOUNTS = ("stdin", "stdout", "stderr")
#: What stdin may be read from: a file in a collection, or literal content (as crunch-run).
STDIN_KINDS = ("collection", "json", "text")

# Once committed, a request's functional attributes are fixed (Arvados' rule).
_COMMITTED_MUTABLE = {"priority", "container_count_max", "name", "description", "properties",
                      "output_name", "output_properties", "output_ttl", "output_storage_classes"}
_FINAL_MUTABLE = {"name", "description", "properties", "output_properties"}


class ContainerRequests(Resource):
    table = "container_requests"

    def routes(self):
        return [("GET", "{uuid}/container_status", self.container_status)]

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
        fill_saved_defaults(attrs)
        for key, empty in (("cwd", "."), ("environment", {}), ("mounts", {}), ("secret_mounts", {}),
                           ("output_glob", [])):
            if attrs.get(key) is None:
                attrs[key] = empty
        if attrs.get("requesting_container_uuid") is None and req.user.token.get("_container_uuid"):
            attrs["requesting_container_uuid"] = req.user.token["_container_uuid"]
        if attrs["state"] == "Committed":
            validate_committed(attrs, self.store)
        return attrs

    def prepare_update(self, req: Request, old: dict, changes: dict) -> dict:
        changed = {k for k, v in changes.items() if old.get(k) != v}
        if old["state"] == "Final":
            bad = changed - _FINAL_MUTABLE
            if bad:
                raise unprocessable(f"Cannot modify {', '.join(sorted(bad))} of a container request in state Final")
        elif old["state"] == "Committed":
            bad = changed - _COMMITTED_MUTABLE - {"state"}
            if bad:
                raise unprocessable(
                    f"Cannot modify {', '.join(sorted(bad))} of a Committed container request; "
                    "only priority, container_count_max, name, description and properties may change")
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
            if merged.get("state") == "Committed":
                validate_committed(merged, self.store)
            elif merged.get("state") not in ("Uncommitted",):
                raise unprocessable(f"Invalid state transition from Uncommitted to {merged.get('state')}")
        return changes

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

    def routes(self):
        return [("GET", "current", self.current), ("GET", "{uuid}/auth", self.auth),
                ("POST", "{uuid}/lock", self.lock), ("POST", "{uuid}/unlock", self.unlock),
                ("GET", "{uuid}/secret_mounts", self.secret_mounts)]

    def present(self, req: Request, record: dict) -> dict:
        record.pop("secret_mounts", None)
        record.pop("runtime_token", None)
        return record

    def visible(self, req: Request, record: dict) -> bool:
        """A container is readable by whoever can read a request that uses it."""
        if req.user.is_admin:
            return True
        return any(cr.get("container_uuid") == record["uuid"] and self.authz.can_read(req.user, cr)
                   for cr in self.store.records("container_requests"))

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
        if not req.user.is_admin:
            if old["state"] != "Running" or req.user.token.get("uuid") != old.get("auth_uuid"):
                raise ApiError(403, "Forbidden: only the dispatcher, an admin or the running container "
                                    "itself updates a container")
            bad = {k for k, v in changes.items() if k not in self._SELF_UPDATABLE and old.get(k) != v}
            if bad:
                raise unprocessable(f"Cannot modify {', '.join(sorted(bad))} of a container from inside it; "
                                    f"only {', '.join(sorted(self._SELF_UPDATABLE))} may change")
            changes = {k: v for k, v in changes.items() if k in self._SELF_UPDATABLE}
        if changes.get("output") and changes["output"] != old.get("output") and not any(
                c.get("portable_data_hash") == changes["output"] and self.authz.can_read(req.user, c)
                for c in self.store.records("collections")):
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

    async def lock(self, req: Request) -> dict:
        c = self.fetch(req, req.params["uuid"])
        if c["state"] != "Queued":
            raise unprocessable(f"Cannot lock container in state {c['state']}")
        return self._shape(req, self.api.lifecycle.update_container(c["uuid"], {"state": "Locked"}, by=req.user.uuid))

    async def unlock(self, req: Request) -> dict:
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


def fill_saved_defaults(attrs: dict) -> None:
    """Arvados' implied values for scheduling_parameters and runtime_constraints, on every save."""
    sp = {"max_run_time": 0, "partitions": [], "preemptible": False, "supervisor": False}
    sp.update(attrs.get("scheduling_parameters") or {})
    if (attrs.get("command") or [""])[0] == "arvados-cwl-runner":
        sp["supervisor"] = True
    attrs["scheduling_parameters"] = sp
    attrs["runtime_constraints"] = reuse.fill_runtime_constraint_defaults(attrs.get("runtime_constraints") or {})


def validate_committed(attrs: dict, store: Store) -> None:
    """The checks Arvados makes when a request becomes Committed (422 with the attribute named)."""
    if not attrs.get("command") or not isinstance(attrs["command"], list) \
            or not all(isinstance(a, str) for a in attrs["command"]):
        raise unprocessable("command must be a non-empty array of strings")
    if not attrs.get("container_image"):
        raise unprocessable("container_image can't be blank")
    if not attrs.get("output_path"):
        raise unprocessable("output_path can't be blank")
    rc = attrs.get("runtime_constraints") or {}
    for key in ("vcpus", "ram"):
        value = rc.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise unprocessable(f"runtime_constraints {key} must be a positive integer, got {value!r}")
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
        elif not path.startswith("/"):
            raise unprocessable(f"mounts: {path!r} is not an absolute path (nor stdin/stdout/stderr)")
    if attrs["output_path"] not in mounts and not any(
            attrs["output_path"].startswith(p.rstrip("/") + "/") for p in mounts if p.startswith("/")):
        raise unprocessable(f"output_path {attrs['output_path']!r} must be one of the mount targets")
    resolve_image(attrs["container_image"], store)


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
    if not isinstance(target, str) or not target.startswith("/"):
        raise unprocessable(f"mounts[{name!r}]: path must be an absolute path in the container, got {target!r}")


def resolve_image(image: str, store: Store) -> str:
    """An image reference -> the portable data hash of its image collection, as Arvados does.

    Accepts a PDH, an image collection UUID, ``repo:tag`` or ``repo`` (``latest``) found through
    ``docker_image_repo+tag`` links, or an image hash through ``docker_image_hash`` links.
    """
    if is_pdh(image):
        if any(c.get("portable_data_hash") == image for c in store.records("collections")):
            return image
    elif table_of(image) == "collections":
        c = store.get(image)
        if c is not None:
            return c["portable_data_hash"]
    else:
        name = image if ":" in image.rsplit("/", 1)[-1] else image + ":latest"
        candidates = []
        for link in store.records("links"):
            if (link.get("link_class") == "docker_image_repo+tag" and link.get("name") == name) or (
                    link.get("link_class") == "docker_image_hash" and link.get("name") in (image, "sha256:" + image)):
                c = store.get(link.get("head_uuid") or "")
                if c is not None and not c.get("is_trashed"):
                    candidates.append((link["created_at"], c["portable_data_hash"]))
        if candidates:
            return max(candidates)[1]
    raise unprocessable(
        f"container_image {image!r} not found in Keep: upload it with `arv-keepdocker {image}` "
        f"(or `toil-arvados cluster register-image {image}` on the local cluster)")


class Lifecycle:
    """Keeps container requests and containers consistent as either side changes."""

    def __init__(self, store: Store, config: Any, readable: Any = None) -> None:
        self.store = store
        self.config = config

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
            chosen = reuse.choose_reusable(self.store.records("containers"), attrs,
                                           readable=self._collection_readable)
            container = self.store.get(chosen["uuid"]) if chosen else None
        if container is None:
            container = self.store.create("containers", attrs, by=self.store.system_user_uuid)
        cr = self.store.update(cr["uuid"], {"container_uuid": container["uuid"],
                                            "container_count": (cr.get("container_count") or 0) + 1})
        if container["state"] in FINAL_CONTAINER_STATES:
            self._finalize(cr, container)
        else:
            self._update_priority(container["uuid"])

    def _pdh_for_uuid(self, uuid: str) -> str | None:
        c = self.store.get(uuid)
        return c["portable_data_hash"] if c and table_of(uuid) == "collections" else None

    def _container_attrs(self, cr: dict) -> dict:
        try:
            mounts = reuse.resolve_mounts(cr.get("mounts") or {}, self._pdh_for_uuid)
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
            "container_image": resolve_image(cr["container_image"], self.store),
            "mounts": reuse.deep_sort(mounts),
            "secret_mounts": secret,
            "secret_mounts_md5": reuse.secret_mounts_md5(secret),
            "runtime_constraints": rc,
            "scheduling_parameters": reuse.deep_sort(cr.get("scheduling_parameters") or {}),
            "runtime_user_uuid": cr["owner_uuid"],
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
        wanted = [cr.get("priority") or 0 for cr in self.store.records("container_requests")
                  if cr.get("container_uuid") == container_uuid and cr["state"] == "Committed"]
        priority = max(wanted, default=0)
        if priority != c.get("priority"):
            c = self.store.update(container_uuid, {"priority": priority})
        if priority == 0 and c["state"] == "Queued":
            self.update_container(container_uuid, {"state": "Cancelled"})
        # Locked/Running containers with priority 0 are stopped by the dispatcher.

    def _collection_readable(self, pdh: str | None) -> bool:
        if not pdh:
            return False
        return any(c.get("portable_data_hash") == pdh and not c.get("is_trashed")
                   for c in self.store.records("collections"))

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
            if new_state == "Running":
                changes.setdefault("started_at", now)
            if new_state in FINAL_CONTAINER_STATES:
                changes.setdefault("finished_at", now)
                changes["secret_mounts"] = {}
        c = self.store.update(uuid, changes, by=by)
        if new_state != old["state"] and new_state in FINAL_CONTAINER_STATES:
            self._container_finished(c)
        return c

    def _container_finished(self, c: dict) -> None:
        for cr in list(self.store.records("container_requests")):
            if cr.get("container_uuid") != c["uuid"] or cr["state"] != "Committed":
                continue
            retry = (c["state"] == "Cancelled" and (cr.get("priority") or 0) > 0
                     and (cr.get("container_count") or 0) < (cr.get("container_count_max") or 1))
            if retry:
                logger.info("retrying %s: container %s was cancelled (attempt %d of %d)", cr["uuid"], c["uuid"],
                            cr["container_count"] + 1, cr["container_count_max"])
                cr = self.store.update(cr["uuid"], {"container_uuid": None})
                self._assign_container_new(cr)
            else:
                self._finalize(cr, c)

    def _assign_container_new(self, cr: dict) -> None:
        """A retry: a fresh container (a cancelled one is never reused), counted against the max."""
        attrs = self._container_attrs(cr)
        container = self.store.create("containers", attrs, by=self.store.system_user_uuid)
        self.store.update(cr["uuid"], {"container_uuid": container["uuid"],
                                       "container_count": (cr.get("container_count") or 0) + 1})
        self._update_priority(container["uuid"])

    def _finalize(self, cr: dict, c: dict) -> None:
        changes: dict[str, Any] = {"state": "Final", "priority": 0 if c["state"] == "Cancelled" else cr["priority"]}
        changes["secret_mounts"] = {}
        changes["runtime_token"] = None
        if c.get("log"):
            changes["log_uuid"] = self._copy_collection(
                c["log"], cr, name=f"Container log for request {cr['uuid']}",
                properties={"type": "log", "container_request": cr["uuid"]})
        if c["state"] == "Complete" and c.get("exit_code") == 0 and c.get("output"):
            kind = "intermediate" if cr.get("requesting_container_uuid") else "output"
            props = dict(cr.get("output_properties") or {})
            props.update({"type": kind, "container_request": cr["uuid"]})
            changes["output_uuid"] = self._copy_collection(
                c["output"], cr, name=cr.get("output_name") or f"Container output for request {cr['uuid']}",
                properties=props)
        self.store.update(cr["uuid"], changes)

    def _copy_collection(self, pdh: str, cr: dict, *, name: str, properties: dict) -> str | None:
        source = next((c for c in self.store.records("collections") if c.get("portable_data_hash") == pdh), None)
        if source is None:
            return None
        names = {c.get("name") for c in self.store.records("collections") if c.get("owner_uuid") == cr["owner_uuid"]}
        final_name = name if name not in names else f"{name} ({timestamp()[:23]}Z)"
        keep = ("manifest_text", "portable_data_hash", "file_count", "file_size_total", "replication_desired",
                "replication_confirmed", "storage_classes_desired", "storage_classes_confirmed")
        attrs = {k: source.get(k) for k in keep if k in source}
        base = {k: v for k, v in source.items() if k not in ("uuid", "owner_uuid", "created_at", "modified_at",
                                                               "modified_by_user_uuid", "etag", "kind")}
        base.update(attrs)
        base.update({"owner_uuid": cr["owner_uuid"], "name": final_name, "properties": properties,
                     "trash_at": None, "delete_at": None, "is_trashed": False})
        rec = self.store.create("collections", base, by=self.store.system_user_uuid)
        self.store.update(rec["uuid"], {"current_version_uuid": rec["uuid"]}, log=False, touch=False)
        return rec["uuid"]
