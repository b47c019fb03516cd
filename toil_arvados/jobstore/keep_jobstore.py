"""``KeepJobStore``: Toil's job store kept in Arvados collections, so workers need no shared disk.

Layout (see :mod:`toil_arvados.jobstore.naming`): the job store is a project ``<name>`` inside the
project the locator names; every job description, file, shared file and log is its own
collection in it. One record per collection makes every update a single atomic manifest
replacement on the API server, so concurrent workers (separate processes, separate hosts) cannot
corrupt each other's writes; "create if absent" races are settled by Arvados' per-owner unique
names (the loser gets a 422 and takes the winner's record).

API calls per operation (Keep block transfers not counted). "Seen here": this process created,
loaded or looked up the record before; records are found by name once, then by UUID, since a name
is never reused (job and streamed-file IDs are random, hinted slots are taken forever).

=========================  ===================================================================
assign_job_id              none (the ID ``j-<random>`` is chosen locally)
create_job                 1 create (the job's record, with the bodies written for it); in
                           ``batch()``, up to PARALLEL at once
update_job                 1 update (+1 list for a job not seen here)
finish_job                 none: a job that ran here and leaves nothing to run is kept in memory
                           until the leader deletes it (its files to delete go after it)
load_job                   1 get, or 1 list for a job not seen here; none inside
                           ``running_here(job)``, for the first load after it or after the
                           job's create here, and right after job_exists (see there)
job_exists                 1 get, or 1 list; none for a job deleted here or inside
                           ``running_here(job)``; the record serves this thread's next load_job
                           of the job within PREFETCH_WINDOW s (Toil's leader: exists, reload)
delete_job                 1 list (the job + its cleanup files) + 1 delete each (in parallel); no
                           list for a job created and run in this process
jobs()                     1 list per 1000 jobs (manifests come with the list)
write_file                 1 create (hinted: 1 create, +2 when the bare hint slot is taken); an
                           unchanged local copy of a Keep file (keep_copies) is not uploaded
write_file_stream          1 create when the stream closes (hinted: create + update); none for a
                           job's body written before the job's record (saved with the record)
get_empty_file_store_id    1 create
register_promise           none (the promise's write_promise creates its file: 1 create)
read_file(_stream)         1 get (streamed/hinted IDs not seen here: 1 list); none right after
                           public_urls listed the file (a run's outputs, exported next)
update_file(_stream)       1 update (streamed/hinted IDs not seen here: +1 list)
delete_file                1 delete, hinted: 1 update to a tombstone (not seen here: +1 list)
file_exists/get_file_size  1 get (or 1 list, as for reads)
shared write               1 update (cached UUID) or 1 create (first) or create+list+update
shared read                1 list
write_logs                 1 create
read_logs                  1 list + 1 update per new log; an idle leader polls the server at most
                           every LOG_POLL_INTERVAL s, unless a log was written in this process or
                           job_exists asked the server (a worker finished) since the last poll
import keep:<pdh>/path     1 get (source) + 1 create; no Keep bytes copied
destroy (``toil clean``)   1 delete (trashes the project and with it every record) + a few lists
                           and 1 delete per collection the run left (:mod:`toil_arvados.intermediates`)
=========================  ===================================================================
"""
from __future__ import annotations

import logging
import os
import pickle
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import IO, Any
from urllib.parse import quote, unquote, urlparse

import arvados.collection

from toil.common import Config
from toil.fileStores import FileID
from toil.job import JobDescription
from toil.jobStores.abstractJobStore import (
    AbstractJobStore,
    HintedJobStore,
    JobStoreExistsException,
    NoSuchFileException,
    NoSuchJobException,
    NoSuchJobStoreException,
)

from toil_arvados import arvados_client, keep_copies
from toil_arvados.arvados_client import NUM_RETRIES, ArvadosSetupError
from toil_arvados.jobstore import collection_io, naming
from toil_arvados.jobstore import manifest_text as manifests
from toil_arvados.jobstore import locator as locators
from toil_arvados.jobstore.naming import KIND

logger = logging.getLogger(__name__)

KEEP_SCHEME = "keep"
# Where a Keep FUSE mount (arv-mount) may be, for read_file(..., symlink=True).
KEEP_MOUNT_ENV = "TOIL_ARVADOS_KEEP_MOUNT"
# ``<locator>=<project UUID>``, set by the leader for its workers (get_env): resume() then needs no
# project lookup. Not a secret: the UUID only names the project; access still takes a token.
PROJECT_ENV = "TOIL_ARVADOS_JOBSTORE_PROJECT"
PAGE = 1000
PARALLEL = 8
# read_logs answers "nothing new" without asking the server while its last poll found nothing,
# less than this many seconds ago, and nothing in this process since hinted at new logs: a log
# written here, or job_exists asked of the server (Toil's leader does that for every job a worker
# finished; workers write their log before they exit). Toil's leader polls every 0.5 s when idle;
# this bounds idle polling to one list per interval, and the leader's last poll still sees the
# logs of the last jobs.
LOG_POLL_INTERVAL = 5.0
# A job record read by job_exists serves the same thread's next load_job of that job for this
# long. Toil's leader calls the two back to back once a worker is done with a job; the read is
# then as fresh as a second one would be (nobody else holds a finished job), and costs no call.
PREFETCH_WINDOW = 1.0
# Job descriptions kept per instance (least recently used dropped first; a miss only costs a get).
# A CWL step's description pickles to under 1 KB (its body is a file of its own), so this holds
# every job of a 10,000-way scatter for some tens of MB; at 4,096 most steps there read theirs back.
JOB_CACHE_SIZE = 65_536
# Manifests of immutable files written here (job bodies, promises kept here): a few hundred bytes each.
MANIFEST_CACHE_SIZE = 100_000


class UnknownProjectError(NoSuchJobStoreException, ArvadosSetupError):
    """The project an ``arvados:`` locator names does not exist (or the token cannot see it).

    A :class:`NoSuchJobStoreException`, so Toil's worker and ``toil clean`` treat it as a missing
    job store, with a message that says which project and what to do.
    """

    def __init__(self, project_uuid: str, locator: str) -> None:
        Exception.__init__(
            self,
            f"Arvados project {project_uuid} (from job store locator {locator}) does not exist or is not "
            "readable with your token: create the project, or use arvados:<existing-project-uuid>/<name> "
            "or arvados:<name> for your home project")


_status = arvados_client.status_of


@contextmanager
def _filling(writer: collection_io.OneFileWriter, encoding: str | None, errors: str | None) -> Iterator[IO[Any]]:
    """A handle to fill ``writer``; if the block raises, what was written is dropped (no record
    changes, so a half-written file never becomes visible)."""
    try:
        with writer.open(encoding, errors) as handle:
            yield handle
    except BaseException:
        writer.discard()
        raise


def _is_conflict(error: BaseException) -> bool:
    """A 409/422 refusal: for a create, usually the name is taken (callers confirm by looking)."""
    return arvados_client.error_kind(error) == arvados_client.CONFLICT


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


# users.current per (host, token), for arvados:<name> locators: the home project never changes.
_home_projects: dict[int, str] = {}
_home_lock = threading.Lock()

# The open (initialized or resumed) instance per full locator, for instance_for().
_open_stores: weakref.WeakValueDictionary[str, KeepJobStore] = weakref.WeakValueDictionary()
# Hints of new logs in this process per full locator (see LOG_POLL_INTERVAL).
_log_hints: dict[str, int] = {}
_registry_lock = threading.Lock()
# (project UUID, kind, key) -> collection UUID, for records found by name: job records ("job", job
# ID), streamed files ("named", key), hinted slots ("slot", path). Process-wide, since the mapping
# never changes (names are random or taken forever) and Toil opens more than one instance per
# process (e.g. promises are resolved through an instance of their own).
_uuids_by_name: OrderedDict[tuple[str, str, str], str] = OrderedDict()
UUIDS_BY_NAME_SIZE = 200_000


def _full_locator_of(locator: str) -> str:
    """``arvados:<rest>`` or ``<rest>`` -> the canonical ``arvados:<rest>``."""
    prefix = locators.PREFIX + ":"
    return locators.parse(locator[len(prefix):] if locator.startswith(prefix) else locator).locator()


class KeepJobStore(AbstractJobStore, HintedJobStore):
    """A Toil job store whose records are collections in one Arvados project.

    Thread safety: one instance may be used by several threads of a process at once (the leader
    and the CWL steps it runs in its own threads share the instance; see :meth:`instance_for`).
    Every server update is a single atomic call, the process-local caches below are guarded by
    one lock, and :meth:`batch` collects only the calling thread's jobs.

    Process-local caches, and why each cannot be stale where it is used:

    - record name -> collection UUID (process-wide, shared by all instances): job IDs and
      streamed-file keys are random and hinted slots are taken forever (deleted hinted files become
      tombstones under the same UUID), so the mapping never changes. File content is always read
      from the server; an update that lands on a tombstone is undone and reported as missing, one
      that hits a deleted record gets a 404.
    - shared file name -> UUID: verified by the update itself (a 404 falls back to a lookup).
    - job descriptions this process wrote or read: served only while this process is the only
      one that can have written the job, i.e. inside :meth:`running_here` (the job runs in this
      process, so no Toil worker elsewhere holds it), and once more right after that block (the
      leader's reload of a job its own thread ran). Everything else goes to the server, so a job
      a worker in another process updated is always re-read.
    - jobs deleted by this process: gone at once for this process; the server deletes may lag
      (``delete_job`` returns after the durable part, see there).
    - a job created by a job running here (``running_here``, i.e. in a thread of the leader):
      served to the first load after the create (Toil's leader loads a new job before it issues
      it anywhere, so nobody else can have changed it yet).
    - the cleanup files of a job this process created and ran (``running_here``): every file
      with that job's cleanup mark was written here (by its creator or by its run), so
      ``delete_job`` deletes them without listing the project.
    - manifests of files no other process writes: a job's body (written once, for a job
      created here) and a promise fulfilled by a job running here (only that job writes it; a
      re-run would be here too). Reads of them cost no call until this process deletes or
      updates them.
    """

    #: An update of a file that is gone fails with NoSuchFileException (a 404 or a trashed
    #: record), so Toil's promise writes need no ``file_exists`` first (toil_patches).
    UPDATE_REPORTS_MISSING = True

    def __init__(self, locator: str) -> None:
        super().__init__(locator)
        self._location = locators.parse(locator)
        self._full_locator = self._location.locator()
        self._project: str | None = None
        self._lock = threading.RLock()
        self._shared_uuids: dict[str, str] = {}
        self._jobs: OrderedDict[str, bytes] = OrderedDict()  # job ID -> last pickle seen or written here
        self._running: dict[str, int] = {}  # job ID -> running_here() depth (over all threads)
        self._fresh: set[str] = set()  # jobs whose cached copy is authoritative for one more load
        self._deleted: set[str] = set()  # jobs this process deleted
        self._assigned: set[str] = set()  # job IDs assigned here whose record is not created yet
        # Jobs created here -> UUIDs of the cleanup files written here for them; True once
        # they ran here too (see delete_job).
        self._local_jobs: dict[str, tuple[bool, list[dict]]] = {}
        self._manifests: OrderedDict[str, tuple[str, str]] = OrderedDict()  # file ID -> (UUID, manifest)
        self._manifest_ids: dict[str, str] = {}  # UUID -> file ID, for the entries above
        self._pending_bodies: dict[str, list[str]] = {}  # job ID -> body manifests for its first save
        self._job_manifests: OrderedDict[str, str] = OrderedDict()  # job ID -> its record's last manifest
        self._looked_up: dict[str, dict] = {}  # file ID -> its record, listed for one read (public_urls)
        # Jobs that ran here to their end (finish_job) -> (their last pickle, files to delete with them)
        self._finished: dict[str, tuple[bytes, list[str]]] = {}
        self._local = threading.local()  # per-thread: the open batch()
        self._log_lock = threading.Lock()
        self._log_seen = 0
        self._log_empty_at: float | None = None

    @classmethod
    def instance_for(cls, locator: str) -> KeepJobStore | None:
        """The instance this process opened (``initialize``/``resume``) for ``locator``, or None.

        In-process users of a running workflow (the leader's step engine) take this one instead of
        opening their own, so they share its caches and its read-your-writes view of jobs.
        ``locator`` may have the ``arvados:`` prefix or not.
        """
        try:
            key = _full_locator_of(locator)
        except locators.BadLocatorError:
            return None
        with _registry_lock:
            return _open_stores.get(key)

    def _register(self) -> None:
        """The first instance opened stays the one :meth:`instance_for` returns (the leader's);
        later ones (Toil opens more, e.g. to resolve promises) do not replace it."""
        with _registry_lock:
            _open_stores.setdefault(self._full_locator, self)

    def _known(self, kind: str, key: str) -> str | None:
        """The UUID of the record named by (kind, key), if this process has seen it."""
        with _registry_lock:
            return _uuids_by_name.get((self.project_uuid, kind, key))

    def _learn(self, kind: str, key: str, uuid: str) -> None:
        with _registry_lock:
            _uuids_by_name[(self.project_uuid, kind, key)] = uuid
            _uuids_by_name.move_to_end((self.project_uuid, kind, key))
            while len(_uuids_by_name) > UUIDS_BY_NAME_SIZE:
                _uuids_by_name.popitem(last=False)

    def _unregister(self) -> None:
        with _registry_lock:
            if _open_stores.get(self._full_locator) is self:
                del _open_stores[self._full_locator]

    def __repr__(self) -> str:
        return f"KeepJobStore({self._full_locator})"

    # -- plumbing ------------------------------------------------------------------------------

    @property
    def _api(self) -> Any:
        return arvados_client.connect()

    @property
    def project_uuid(self) -> str:
        """The UUID of the job store's project (after initialize or resume)."""
        if self._project is None:
            raise RuntimeError(f"job store {self._full_locator} is not initialized or resumed")
        return self._project

    def _parent_uuid(self) -> str:
        if self._location.parent_uuid:
            return self._location.parent_uuid
        api = self._api
        with _home_lock:
            home = _home_projects.get(id(api))
            if home is None:
                home = _home_projects[id(api)] = arvados_client.check_connection(api)["uuid"]
        return home

    def _check_parent(self, parent: str) -> None:
        """Raise :class:`UnknownProjectError` unless ``parent`` is a project (or user) we can see."""
        api = self._api
        try:
            if "-tpzed-" in parent:
                api.users().get(uuid=parent).execute()
                return
            group = api.groups().get(uuid=parent, select=["uuid", "group_class"]).execute()
        except Exception as e:
            if _status(e) in (403, 404, 422):
                raise UnknownProjectError(parent, self._full_locator) from None
            raise
        if group.get("group_class") != "project":
            raise UnknownProjectError(parent, self._full_locator)

    def _find_project(self) -> str | None:
        """The job store project's UUID, or None when it does not exist."""
        found = self._api.groups().list(
            filters=[["owner_uuid", "=", self._parent_uuid()], ["name", "=", self._location.name],
                     ["group_class", "=", "project"]],
            select=["uuid"], limit=1, count="none").execute()["items"]
        return found[0]["uuid"] if found else None

    def _get(self, uuid: str, select: list[str] | None = None) -> dict | None:
        """A live collection of this job store, or None (missing, trashed, or someone else's)."""
        fields = None if select is None else sorted({*select, "uuid", "owner_uuid", "properties", "is_trashed"})
        try:
            rec = self._api.collections().get(uuid=uuid, **({"select": fields} if fields else {})).execute()
        except Exception as e:
            if _status(e) in (404, 422):
                return None
            raise
        if rec.get("is_trashed") or rec.get("owner_uuid") != self.project_uuid:
            return None
        return rec

    def _list(self, filters: list, select: list[str]) -> Iterator[dict]:
        """All matching collections of this job store, paged by UUID (one call per page)."""
        base = [["owner_uuid", "=", self.project_uuid], *filters]
        fields = sorted({*select, "uuid"})
        last: str | None = None
        while True:
            page = base + ([["uuid", ">", last]] if last else [])
            resp = self._api.collections().list(filters=page, select=fields, order=["uuid asc"],
                                                limit=PAGE).execute()
            items = resp["items"]
            yield from items
            if not items or len(items) >= resp.get("items_available", 0):
                return
            last = items[-1]["uuid"]

    def _create(self, name: str, properties: dict, manifest_text: str = "", *, name_is_ours: bool = True) -> dict:
        """Create a collection. ``name_is_ours``: the name is random, so a 422 duplicate can only be
        our own earlier attempt whose response was lost (the SDK retries 5xx and timeouts)."""
        body = {"collection": {"owner_uuid": self.project_uuid, "name": name, "properties": properties,
                               "manifest_text": manifest_text}}
        try:
            return self._api.collections().create(body=body, select=["uuid", "portable_data_hash"]).execute()
        except Exception as e:
            if name_is_ours and _is_conflict(e):
                mine = self._by_name(name, ["portable_data_hash"])
                if mine is not None:
                    return mine
            raise

    def _update(self, uuid: str, select: list[str] | None = None, **fields: Any) -> dict | None:
        """Update fields of a collection; None if it no longer exists."""
        try:
            return self._api.collections().update(uuid=uuid, body={"collection": fields},
                                                  select=sorted({"uuid", "portable_data_hash", *(select or [])})
                                                  ).execute()
        except Exception as e:
            if _status(e) == 404:
                return None
            raise

    def _delete(self, uuid: str) -> None:
        try:
            self._api.collections().delete(uuid=uuid).execute()
        except Exception as e:
            if _status(e) != 404:
                raise

    def _by_name(self, name: str, select: list[str]) -> dict | None:
        items = list(self._api.collections().list(
            filters=[["owner_uuid", "=", self.project_uuid], ["name", "=", name]],
            select=sorted({*select, "uuid", "properties"}), limit=1, count="none").execute()["items"])
        return items[0] if items else None

    def _writer(self, name: str) -> collection_io.OneFileWriter:
        return collection_io.OneFileWriter(self._api, name)

    # -- life cycle ----------------------------------------------------------------------------

    def initialize(self, config: Config) -> None:
        parent = self._parent_uuid()
        self._check_parent(parent)
        body = {"group": {"owner_uuid": parent, "name": self._location.name, "group_class": "project",
                          "description": "Toil job store (toil-arvados); remove with `toil clean`.",
                          "properties": {naming.STORE_MARK: "yes"}}}
        try:
            self._project = self._api.groups().create(body=body, select=["uuid"]).execute()["uuid"]
        except Exception as e:
            if _is_conflict(e) and self._find_project() is not None:
                raise JobStoreExistsException(self.locator, locators.PREFIX) from None
            if _status(e) in (403, 404, 422):
                raise ArvadosSetupError(arvados_client.describe(
                    e, f"cannot create job store project {self._location.name} in {parent}")) from None
            raise
        logger.debug("Created job store %s as project %s", self._full_locator, self._project)
        super().initialize(config)
        self._register()

    def resume(self) -> None:
        hinted = self._project_from_env()
        if hinted is not None:
            self._project = hinted
            try:
                super().resume()
            except NoSuchFileException:  # the project went away (or the hint is wrong): look it up
                self._project = None
            else:
                self._register()
                return
        project = self._find_project()
        if project is None:
            self._check_parent(self._parent_uuid())
            raise NoSuchJobStoreException(self.locator, locators.PREFIX)
        self._project = project
        super().resume()
        self._register()

    def destroy(self) -> None:
        """Trash the run's intermediate collections, then the job store's project: one call,
        since Arvados trashes a project's contents with it (hidden at once, deleted with it).
        Idempotent, and safe on a half-made store."""
        try:
            project = self._project or self._find_project()
        except Exception as e:
            if _status(e) in (403, 404, 422):
                return
            raise
        if project is None:
            return
        self._project = project
        self._trash_run_intermediates()
        try:
            self._api.groups().delete(uuid=project).execute()
        except Exception as e:
            if _status(e) != 404:
                raise
        self._project = None
        with self._lock:
            for cache in (self._shared_uuids, self._jobs, self._running, self._local_jobs, self._manifests,
                          self._manifest_ids, self._pending_bodies, self._job_manifests, self._looked_up,
                          self._finished):
                cache.clear()
            for ids in (self._fresh, self._deleted, self._assigned):
                ids.clear()
        self._unregister()
        logger.debug("Destroyed job store %s", self._full_locator)

    def _trash_run_intermediates(self) -> None:
        """``toil clean`` removes what the run left in Keep too (staging, step outputs and logs),
        except what Arvados needs to reuse its finished steps (see :mod:`toil_arvados.intermediates`),
        unless the run said ``--noArvadosTrashIntermediate``. A store without a config (half made)
        has no run to clean up after."""
        try:
            config = self.config
        except Exception:
            return
        workflow_id = getattr(config, "workflowID", None)
        if not workflow_id or not getattr(config, "arvados_trash_intermediate", True):
            return
        from ..intermediates import trash_intermediates

        try:
            trash_intermediates(self._api, str(workflow_id))
        except Exception as e:  # the job store itself must still go
            logger.warning("Could not trash the intermediate collections of workflow %s: %s", workflow_id,
                           arvados_client.scrub(str(e)))

    def _project_from_env(self) -> str | None:
        locator, _, project = os.environ.get(PROJECT_ENV, "").rpartition("=")
        if locator == self._full_locator and naming.PROJECT_UUID_RE.match(project):
            return project
        return None

    def get_env(self) -> dict[str, str]:
        """The job store's project UUID, which saves each worker's resume() a lookup.

        No credentials: workers find the cluster as the SDK always does. In Arvados containers the
        runtime sets ARVADOS_API_HOST/ARVADOS_API_TOKEN (``runtime_constraints.API``); the leader's
        token must never be copied into the job store or the worker environment."""
        if self._project is None:
            return {}
        return {PROJECT_ENV: f"{self._full_locator}={self._project}"}

    def default_caching(self) -> bool:
        return True  # Keep is remote: caching files on the node pays off

    # -- jobs ----------------------------------------------------------------------------------

    def assign_job_id(self, job_description: JobDescription) -> None:
        """A random ID, no API call: the record (named after the ID) is created by the first save."""
        job_id = naming.new_job_id()
        with self._lock:
            self._assigned.add(job_id)
        job_description.jobStoreID = job_id

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Jobs this thread creates in the block are saved at its end, several at once."""
        outer = getattr(self._local, "batched", None)
        self._local.batched = batched = [] if outer is None else outer
        try:
            yield
        finally:
            self._local.batched = outer
        if outer is None and batched:
            in_run = self._in_run()  # the creates run in pool threads: pass this thread's state
            self._parallel(lambda desc: self._create_job(desc, in_run), batched)

    def create_job(self, job_description: JobDescription) -> JobDescription:
        batched = getattr(self._local, "batched", None)
        if batched is not None:
            batched.append(job_description)
        else:
            self._create_job(job_description)
        return job_description

    def _create_job(self, job_description: JobDescription, in_run: bool | None = None) -> None:
        """``in_run``: whether the job that creates it runs here (default: the calling thread's)."""
        self._save_job(job_description, create=True, in_run=self._in_run() if in_run is None else in_run)

    def _in_run(self) -> bool:
        """Whether the calling thread is running a job here (inside :meth:`running_here`)."""
        return bool(getattr(self._local, "running", 0))

    @contextmanager
    def running_here(self, job_id: str) -> Iterator[None]:
        """Declare that job ``job_id`` runs in this process (a thread of the leader) for the block.

        Toil hands a job to one runner at a time, so while the block is open no process but this
        one can write the job: ``load_job``/``job_exists`` answer from what this process last
        wrote or read, without a server call. The first ``load_job`` after the block (Toil's
        leader reloading the job its thread just ran) is served the same way; later loads read
        the server again, since the leader may by then have issued the job elsewhere.
        """
        job_id = str(job_id)
        self._local.running = getattr(self._local, "running", 0) + 1
        with self._lock:
            self._running[job_id] = self._running.get(job_id, 0) + 1
            self._fresh.discard(job_id)
            if job_id in self._local_jobs:
                self._local_jobs[job_id] = (True, self._local_jobs[job_id][1])
        try:
            yield
        finally:
            self._local.running -= 1
            with self._lock:
                depth = self._running.pop(job_id) - 1
                if depth:
                    self._running[job_id] = depth
                elif job_id in self._jobs:
                    self._fresh.add(job_id)

    def forget_job(self, job_id: str) -> None:
        """Drop what this process knows of a job: the next load reads the server."""
        with self._lock:
            self._jobs.pop(str(job_id), None)
            self._fresh.discard(str(job_id))

    def _cached_job(self, job_id: str, consume: bool) -> bytes | None:
        """The cached pickle of ``job_id`` if no other process can have changed it, else None."""
        with self._lock:
            if job_id in self._finished:
                return self._finished[job_id][0]
            data = self._jobs.get(job_id)
            if data is None:
                return None
            if job_id in self._running:
                return data
            if job_id in self._fresh:
                if consume:
                    self._fresh.discard(job_id)
                return data
            return None

    def update_job(self, job_description: JobDescription) -> None:
        with self._lock:
            _, files = self._finished.pop(str(job_description.jobStoreID), (b"", []))
        self._save_job(job_description, create=False)
        self._parallel(self.delete_file, files)  # as Toil's commit does, once the job is saved

    def finish_job(self, job_description: JobDescription, files_to_delete: list[str]) -> None:
        """Commit a job that ran here to its end and leaves nothing to run (no body, successors
        or services), without writing its record: Toil's leader reloads it (served from memory)
        and deletes it next, and that delete is the one write that matters. The files the job
        asked to delete go after its record. A leader that dies in between leaves the record as
        the job's start found it, so a restart runs the job again, as after a worker that died
        before its commit; a native step then finds its request's work reused. Saves one update
        per step; an ``update_job`` of the job instead writes it as usual."""
        job_id = str(job_description.jobStoreID)
        if not naming.is_job_id(job_id):
            raise NoSuchJobException(job_id)
        job_description.pre_update_hook()
        data = pickle.dumps(job_description, protocol=pickle.HIGHEST_PROTOCOL)
        with self._lock:
            self._finished[job_id] = (data, [str(f) for f in files_to_delete])

    def _save_job(self, job_description: JobDescription, create: bool, in_run: bool = False) -> None:
        """One call: create the record (first save of an ID assigned here) or replace its manifest."""
        job_id = str(job_description.jobStoreID)
        if not naming.is_job_id(job_id):
            raise NoSuchJobException(job_id)
        with self._lock:
            create = create or (job_id in self._assigned and self._known("job", job_id) is None)
        uuid = None if create else self._job_uuid(job_id)
        if uuid is None and not create:
            raise NoSuchJobException(job_id)
        job_description.pre_update_hook()
        data = pickle.dumps(job_description, protocol=pickle.HIGHEST_PROTOCOL)
        writer = self._writer(naming.JOB_FILE)
        writer.write_bytes(data)
        props = {KIND: naming.KIND_JOB, naming.CLEANUP_JOB: job_id,
                 naming.JOB_NAME: naming.job_label(job_description.jobName)}
        manifest = self._job_manifest(job_id, writer.manifest_text(), uuid)
        if uuid is None:
            rec = self._create(naming.job_record_name(job_id), props, manifest)
            self._learn("job", job_id, rec["uuid"])
            with self._lock:
                self._assigned.discard(job_id)
                self._local_jobs.setdefault(job_id, (False, []))
                if in_run:
                    self._fresh.add(job_id)
        elif self._update(uuid, manifest_text=manifest, properties=props) is None:
            raise NoSuchJobException(job_id)
        self._remember_job(job_id, data, manifest)

    def _job_manifest(self, job_id: str, job_file: str, uuid: str | None) -> str:
        """The record's new manifest: the job file, plus its bodies (written before its first
        save, or already in the record: known here once seen, else one get)."""
        if uuid is None:
            with self._lock:
                bodies = self._pending_bodies.pop(job_id, [])
            return manifests.merge(job_file, *bodies) if bodies else job_file
        with self._lock:
            previous = self._job_manifests.get(job_id)
        if previous is None:
            rec = self._get(uuid, ["manifest_text"])
            previous = rec["manifest_text"] if rec is not None else ""
        rest = manifests.without(previous, naming.JOB_FILE) if previous else ""
        return manifests.merge(job_file, rest) if rest else job_file

    def _job_uuid(self, job_id: str) -> str | None:
        """The collection of a job: known here once seen (IDs are never reused), else one list."""
        uuid = self._known("job", job_id)
        if uuid is not None:
            return uuid
        rec = self._job_record(job_id, [])
        return rec["uuid"] if rec is not None else None

    def _job_record(self, job_id: str, select: list[str] | None) -> dict | None:
        """The live record of a saved job, or None."""
        if not naming.is_job_id(job_id):
            return None
        uuid = self._known("job", job_id)
        if uuid is not None:
            rec = self._get(uuid, select)
        else:
            wanted = ["manifest_text"] if select is None else select
            rec = self._by_name(naming.job_record_name(job_id), ["owner_uuid", *wanted])
        if rec is None or rec["properties"].get(KIND) != naming.KIND_JOB:
            return None
        self._learn("job", job_id, rec["uuid"])
        return rec

    def job_exists(self, job_id: str) -> bool:
        job_id = str(job_id)
        if not naming.is_job_id(job_id):
            return False
        with self._lock:
            if job_id in self._deleted:
                return False
        if self._cached_job(job_id, consume=False) is not None:
            return True
        rec = self._job_record(job_id, None)
        self._hint_new_logs()  # the leader asks after a worker finished; its log may be waiting
        # Toil's leader asks job_exists and, if so, reloads the job at once: keep the record for
        # that next load_job on this thread (see PREFETCH_WINDOW).
        self._local.prefetch = (job_id, rec, time.monotonic()) if rec is not None else None
        return rec is not None

    def load_job(self, job_id: str) -> JobDescription:
        job_id = str(job_id)
        with self._lock:
            if job_id in self._deleted:
                raise NoSuchJobException(job_id)
        data = self._cached_job(job_id, consume=True)
        if data is None:
            rec = self._take_prefetched(job_id) or self._job_record(job_id, None)
            if rec is None:
                raise NoSuchJobException(job_id)
            data = self._job_bytes(job_id, rec)
        return self._unpickle_job(data)

    def _take_prefetched(self, job_id: str) -> dict | None:
        """The record this thread's job_exists just read, if it was for this job, moments ago."""
        prefetch = getattr(self._local, "prefetch", None)
        self._local.prefetch = None
        if prefetch is None or prefetch[0] != job_id or time.monotonic() - prefetch[2] > PREFETCH_WINDOW:
            return None
        return prefetch[1]

    def _job_bytes(self, job_id: str, rec: dict) -> bytes:
        data = collection_io.read_all(self._api, rec["manifest_text"], naming.JOB_FILE)
        self._remember_job(job_id, data, rec["manifest_text"])
        return data

    def _remember_job(self, job_id: str, data: bytes, manifest: str) -> None:
        with self._lock:
            self._jobs[job_id] = data
            self._jobs.move_to_end(job_id)
            while len(self._jobs) > JOB_CACHE_SIZE:
                old, _ = self._jobs.popitem(last=False)
                self._fresh.discard(old)
            self._job_manifests[job_id] = manifest
            self._job_manifests.move_to_end(job_id)
            while len(self._job_manifests) > MANIFEST_CACHE_SIZE:
                self._job_manifests.popitem(last=False)

    def _note_cleanup_file(self, props: dict, uuid: str) -> None:
        """Remember a cleanup file written here for a job created here (see delete_job)."""
        job_id = props.get(naming.CLEANUP_JOB)
        if job_id is None:
            return
        with self._lock:
            rec = {"uuid": uuid, "properties": props}
            if job_id in self._local_jobs:
                self._local_jobs[job_id][1].append(rec)
            elif job_id in self._assigned:  # written for it before its record exists
                self._local_jobs[job_id] = (False, [rec])

    def _cleanup_records(self, job_id: str) -> tuple[dict | None, list[dict]]:
        """The job's record and its cleanup files: from memory for a job created and run only
        here (nobody else can have written files for it), else one list."""
        with self._lock:
            ran_here, files = self._local_jobs.pop(job_id, (False, []))
        uuid = self._known("job", job_id)
        if ran_here and uuid is not None:
            return {"uuid": uuid}, files
        job_rec, found = None, []
        for rec in self._list([[f"properties.{naming.CLEANUP_JOB}", "=", job_id]], ["name", "properties"]):
            if rec["properties"].get(KIND) == naming.KIND_JOB:
                job_rec = rec
            else:
                found.append(rec)
        return job_rec, found

    def _unpickle_job(self, data: bytes) -> JobDescription:
        job = pickle.loads(data)
        job.assignConfig(self.config)
        return job

    def delete_job(self, job_id: str) -> None:
        job_id = str(job_id)
        if not naming.is_job_id(job_id):
            return
        job_rec, files = self._cleanup_records(job_id)
        self._parallel(self._delete_file_record, files)
        if job_rec is not None:
            self._delete(job_rec["uuid"])
        with self._lock:
            _, finished_files = self._finished.pop(job_id, (b"", []))
        self._parallel(self.delete_file, finished_files)
        with self._lock:
            self._deleted.add(job_id)
            self._jobs.pop(job_id, None)
            self._fresh.discard(job_id)
            self._job_manifests.pop(job_id, None)
            self._pending_bodies.pop(job_id, None)

    @staticmethod
    def _parallel(fn: Callable[[Any], Any], items: list) -> None:
        """``fn`` over ``items``, several at once when there are several (each is one API call)."""
        if len(items) <= 1:
            for item in items:
                fn(item)
            return
        with ThreadPoolExecutor(min(PARALLEL, len(items))) as pool:
            list(pool.map(fn, items))

    def jobs(self) -> Iterator[JobDescription]:
        for rec in self._list([[f"properties.{KIND}", "=", naming.KIND_JOB]], ["manifest_text", "properties"]):
            job_id = rec["properties"].get(naming.CLEANUP_JOB, "")
            with self._lock:
                if job_id in self._deleted or not naming.is_job_id(job_id):
                    continue
            self._learn("job", job_id, rec["uuid"])
            try:
                data = self._job_bytes(job_id, rec)
            except Exception as e:  # deleted under us: its blocks may already be gone
                logger.debug("Skipping job %s: %s", rec["uuid"], e)
                continue
            yield self._unpickle_job(data)

    # -- files ---------------------------------------------------------------------------------

    def _file_properties(self, job_id: str | None, cleanup: bool) -> dict:
        props: dict[str, str] = {KIND: naming.KIND_FILE}
        if job_id:
            props[naming.JOB] = str(job_id)
            if cleanup:
                props[naming.CLEANUP_JOB] = str(job_id)
        return props

    def _new_file(self, basename: str, props: dict, hints: list[str] | None, manifest_text: str) -> str:
        """Create a file record holding ``manifest_text``; returns its file ID."""
        hints_str = self.hints_to_string(hints)
        if hints_str:
            return self._claim_hinted_slot(hints_str, basename, props, manifest_text)
        rec = self._create(naming.file_name(basename), props, manifest_text)
        self._note_cleanup_file(props, rec["uuid"])
        return naming.unhinted_file_id(rec["uuid"], basename)

    def _claim_hinted_slot(self, hints_str: str, basename: str, props: dict, manifest_text: str) -> str:
        """Create the record at the first free slot ``<hints>/files/[N/]<basename>``.

        Toil's :class:`HintedJobStore` needs tombstones so a deleted file's ID is never reused. Here
        a deleted hinted file keeps its collection (emptied, marked as a tombstone), so its unique
        name stays taken: "slot is free" and "slot was never used" are the same test, and one
        create decides it atomically. When the bare slot is taken, one list finds the highest
        numbered slot in use, so claiming stays O(1) calls as files with the same name pile up.
        """
        def attempt(slot_path: str) -> bool:
            try:
                slot_props = {**props, naming.PATH: slot_path}
                rec = self._create(naming.hint_name(slot_path), slot_props, manifest_text, name_is_ours=False)
                self._note_cleanup_file(slot_props, rec["uuid"])
                self._remember_slot(slot_path, rec["uuid"])
                return True
            except Exception as e:
                # Taken only if a record of that name exists: another 422 must not walk the slots.
                if _is_conflict(e) and self._by_name(naming.hint_name(slot_path), []) is not None:
                    return False
                raise

        bare = f"{hints_str}/{self._HINT_FILES_DIR}/{basename}"
        if attempt(bare):
            return bare
        prefix = naming.hint_name(f"{hints_str}/{self._HINT_FILES_DIR}/")
        suffix = "|" + basename
        highest = -1
        pattern = _like_escape(prefix) + "%" + _like_escape(suffix)
        for rec in arvados_client.list_all(
                self._api.collections().list,
                [["owner_uuid", "=", self.project_uuid], ["name", "like", pattern]], ["uuid", "name"]):
            middle = rec["name"][len(prefix):len(rec["name"]) - len(suffix)]
            if middle.isdigit():
                highest = max(highest, int(middle))
        n = highest + 1
        for _ in range(100000):
            slot = f"{hints_str}/{self._HINT_FILES_DIR}/{n}/{basename}"
            if attempt(slot):
                return slot
            n += 1
        raise RuntimeError(f"no free hinted slot for {hints_str}/{basename}")

    def _remember_slot(self, slot_path: str, uuid: str) -> None:
        self._learn("slot", slot_path, uuid)

    def _locate(self, file_id: str) -> tuple[str | None, tuple[str, str] | None, str | None]:
        """Where a file ID's record is: (its UUID if known here, cache key, name to find it by).

        Hinted and ``n-<key>`` IDs name their record; the name -> UUID mapping never changes
        (names are random, or taken forever), so it is cached once seen."""
        named = naming.parse_named_file_id(file_id)
        if named is not None:
            key = ("named", named[0])
            return self._known(*key), key, naming.named_file_name(named[0])
        uuid, rest = naming.parse_file_id(file_id)
        if uuid is not None:
            return uuid, None, None
        key = ("slot", rest)
        return self._known(*key), key, naming.hint_name(rest)

    def _file_record(self, file_id: str, select: list[str] | None = None) -> dict | None:
        """The live record behind a file ID, or None.

        A hinted ID whose slot this process has seen is fetched by UUID (its name, hence its UUID,
        is taken forever); otherwise one list by name finds it."""
        if naming.parse_body_file_id(str(file_id)) is not None:
            return self._body_record(str(file_id))
        uuid, key, name = self._locate(str(file_id))
        if uuid is not None:
            rec = self._get(uuid, select)
        elif name is not None:
            rec = self._by_name(name, ["owner_uuid", "portable_data_hash", "file_size_total",
                                       "manifest_text", *(select or [])])
        else:
            return None
        if rec is None:
            return None
        if key is not None:
            if key[0] == "slot" and rec["properties"].get(naming.PATH) != key[1]:
                return None  # a shortened name shared by another slot
            self._learn(*key, rec["uuid"])
        if rec["properties"].get(KIND) != naming.KIND_FILE:
            return None
        return rec

    def _body_record(self, file_id: str) -> dict | None:
        """A job body's file as a record of its own: the job's record, sized to the body."""
        _key, job_id, _name = naming.parse_body_file_id(file_id)  # type: ignore[misc]
        with self._lock:
            if job_id in self._deleted:
                return None
        rec = self._job_record(job_id, ["manifest_text", "portable_data_hash"])
        if rec is None:
            return None
        size = manifests.size_of(rec["manifest_text"], self._file_basename(file_id))
        if size is None:
            return None
        return {**rec, "file_size_total": size, "properties": {KIND: naming.KIND_FILE}}

    def _rewrite_body(self, file_id: str, manifest: str | None) -> str:
        """Replace (``manifest``) or drop (None) a body in its job's record: one get, one update.
        Toil does neither (a body goes with its job); this keeps the file API whole."""
        self._drop_manifests(file_id)
        rec = self._body_record(file_id)
        if rec is None:
            raise NoSuchFileException(file_id)
        job_id = naming.parse_body_file_id(file_id)[1]  # type: ignore[index]
        rest = manifests.without(rec["manifest_text"], self._file_basename(file_id))
        new = manifests.merge(rest, manifest) if manifest else rest
        if self._update(rec["uuid"], manifest_text=new) is None:
            raise NoSuchFileException(file_id)
        with self._lock:
            self._job_manifests.pop(job_id, None)
        return rec["uuid"]

    @staticmethod
    def _file_basename(file_id: str) -> str:
        """The file's name inside its collection."""
        body = naming.parse_body_file_id(str(file_id))
        if body is not None:
            return naming.body_member(body[0])
        named = naming.parse_named_file_id(str(file_id))
        if named is not None:
            return named[1]
        uuid, rest = naming.parse_file_id(str(file_id))
        return rest if uuid is not None else naming.slot_basename(rest)

    def write_file(self, local_path: str, job_id: str | None = None, cleanup: bool = False,
                   hints: list[str] | None = None) -> str:
        basename = naming.basename_of(local_path)
        return self._new_file(basename, self._file_properties(job_id, cleanup), hints,
                              self._manifest_for(local_path, basename))

    def _manifest_for(self, local_path: str, basename: str) -> str:
        """A one-file manifest of ``local_path`` named ``basename``: a local copy of a Keep file
        (a step's output) by reference to its blocks, anything else uploaded. A copy's manifest
        already names its file ``basename``: keep_copies keys it by the path it was written to."""
        copied = keep_copies.manifest_of(local_path)
        if copied is not None and manifests.is_one_segment(copied):
            return copied
        writer = self._writer(basename)
        with open(local_path, "rb") as src:
            writer.copy_from(src)
        return writer.manifest_text()

    @contextmanager
    def write_file_stream(self, job_id: str | None = None, cleanup: bool = False, hints: list[str] | None = None,
                          basename: str | None = None, encoding: str | None = None,
                          errors: str | None = None) -> Iterator[tuple[IO[Any], str]]:
        name = naming.basename_of(basename)
        props = self._file_properties(job_id, cleanup)
        if self._is_body(job_id, cleanup, hints):
            with self._body_stream(str(job_id), name, encoding, errors) as written:
                yield written
            return
        if self.hints_to_string(hints):
            # The slot must be claimed before its ID can be handed out: create, then fill.
            empty = self._writer(name)
            empty.write_bytes(b"")
            file_id = self._new_file(name, props, hints, empty.manifest_text())
        else:
            # The ID names a record that does not exist yet: one create, once the bytes are in.
            key = naming.new_file_key()
            file_id = naming.named_file_id(key, name)
        writer = self._writer(name)
        with _filling(writer, encoding, errors) as handle:
            yield handle, file_id
        if self.hints_to_string(hints):
            self._replace_content(file_id, writer.manifest_text())
            return
        rec = self._create(naming.named_file_name(key), props, writer.manifest_text())
        self._learn("named", key, rec["uuid"])
        self._note_cleanup_file(props, rec["uuid"])

    def _is_body(self, job_id: str | None, cleanup: bool, hints: list[str] | None) -> bool:
        """A stream Toil writes for a job whose record does not exist yet, to go away with it:
        the job's body (``Job.saveBody``). It is kept in the job's own record."""
        if not cleanup or job_id is None or self.hints_to_string(hints):
            return False
        with self._lock:
            return str(job_id) in self._assigned and self._known("job", str(job_id)) is None

    @contextmanager
    def _body_stream(self, job_id: str, name: str, encoding: str | None,
                     errors: str | None) -> Iterator[tuple[IO[Any], str]]:
        key = naming.new_file_key()
        file_id = naming.body_file_id(key, job_id, name)
        writer = self._writer(naming.body_member(key))
        with _filling(writer, encoding, errors) as handle:
            yield handle, file_id
        manifest = writer.manifest_text()
        with self._lock:
            self._pending_bodies.setdefault(job_id, []).append(manifest)
        self._keep_manifest(file_id, "", manifest)

    def _keep_manifest(self, file_id: str, uuid: str, manifest_text: str) -> None:
        with self._lock:
            self._manifests[str(file_id)] = (uuid, manifest_text)
            self._manifests.move_to_end(str(file_id))
            if uuid:
                self._manifest_ids[uuid] = str(file_id)
            while len(self._manifests) > MANIFEST_CACHE_SIZE:
                _, (old_uuid, _) = self._manifests.popitem(last=False)
                self._manifest_ids.pop(old_uuid, None)

    def _kept_manifest(self, file_id: str) -> str | None:
        with self._lock:
            kept = self._manifests.get(str(file_id))
        return kept[1] if kept is not None else None

    def _drop_manifests(self, file_id: str | None = None, uuid: str | None = None) -> None:
        with self._lock:
            if file_id is None and uuid is not None:
                file_id = self._manifest_ids.get(uuid)
            kept = self._manifests.pop(str(file_id), None) if file_id is not None else None
            if file_id is not None:
                self._looked_up.pop(str(file_id), None)
            if kept is not None:
                self._manifest_ids.pop(kept[0], None)

    def register_promise(self) -> str:
        """The ID of a new promise's file, without a call (Toil's ``registerPromise`` through
        toil_patches): Toil would write an "unfulfilled" marker into a new file, one create per
        CWL step, for a reader that comes before the promise is fulfilled, which Toil's job
        ordering rules out. The record is made by the promise's one write (:meth:`write_promise`)."""
        return naming.promise_file_id(naming.new_file_key(), naming.basename_of(None))

    def write_promise(self, file_id: str, data: bytes) -> None:
        """Fulfil a promise (Toil's ``_fulfillPromises`` through toil_patches): one call, an update,
        or for a promise registered by :meth:`register_promise` the create of its record. Its
        manifest is kept when the fulfilling job runs here, since only that job writes it.

        A promise file gone since (its reader finished before its job ran again) is skipped, as
        Toil skips it, unless it was registered without a record: that one is made again, and
        goes with the job store."""
        writer = self._writer(self._file_basename(file_id))
        writer.write_bytes(data)
        manifest_text = writer.manifest_text()
        if naming.is_promise_file_id(str(file_id)) and self._locate(str(file_id))[0] is None:
            uuid = self._create_promise(str(file_id), manifest_text)
        else:
            uuid = self._replace_content(file_id, manifest_text)
        if self._in_run():
            self._keep_manifest(file_id, uuid, manifest_text)

    def _create_promise(self, file_id: str, manifest_text: str) -> str:
        key, _ = naming.parse_named_file_id(file_id)  # type: ignore[misc]
        try:
            rec = self._create(naming.named_file_name(key), {KIND: naming.KIND_FILE}, manifest_text,
                               name_is_ours=False)
        except Exception as e:
            if not _is_conflict(e):
                raise
            return self._replace_content(file_id, manifest_text)  # written before: its job ran again
        self._learn("named", key, rec["uuid"])
        return rec["uuid"]

    def get_empty_file_store_id(self, job_id: str | None = None, cleanup: bool = False,
                                basename: str | None = None, hints: list[str] | None = None) -> str:
        name = naming.basename_of(basename)
        writer = self._writer(name)
        writer.write_bytes(b"")
        return self._new_file(name, self._file_properties(job_id, cleanup), hints, writer.manifest_text())

    def _replace_content(self, file_id: str, manifest_text: str) -> str:
        """The atomic update: one manifest replaced on one record.

        The update is blind (one call) when the record's UUID is known; its answer then says
        whether the record was still a live file. Arvados lets trashed collections be updated, so
        a file deleted elsewhere shows as ``is_trashed``; a hinted file deleted elsewhere is a
        tombstone, whose manifest is emptied again."""
        if naming.parse_body_file_id(str(file_id)) is not None:
            return self._rewrite_body(str(file_id), manifest_text)
        self._drop_manifests(file_id)
        uuid, _, _ = self._locate(str(file_id))
        if uuid is None:
            rec = self._file_record(file_id, [])
            if rec is None:
                raise NoSuchFileException(file_id)
            uuid = rec["uuid"]
        rec = self._update(uuid, select=["properties", "is_trashed"], manifest_text=manifest_text)
        if rec is None or rec.get("is_trashed"):
            raise NoSuchFileException(file_id)
        kind = rec["properties"].get(KIND)
        if kind != naming.KIND_FILE:
            if kind == naming.KIND_TOMBSTONE:
                self._update(uuid, manifest_text="")
            raise NoSuchFileException(file_id)
        return uuid

    def update_file(self, file_id: str, local_path: str) -> None:
        writer = self._writer(self._file_basename(file_id))
        with open(local_path, "rb") as src:
            writer.copy_from(src)
        self._replace_content(file_id, writer.manifest_text())

    @contextmanager
    def update_file_stream(self, file_id: str, encoding: str | None = None,
                           errors: str | None = None) -> Iterator[IO[Any]]:
        writer = self._writer(self._file_basename(file_id))
        with _filling(writer, encoding, errors) as handle:
            yield handle
        self._replace_content(file_id, writer.manifest_text())

    def _readable_record(self, file_id: str) -> dict:
        """What a read needs (the manifest): kept here for immutable files, else from the server."""
        body = naming.parse_body_file_id(str(file_id))
        with self._lock:
            if body is not None and body[1] in self._deleted:  # a body goes with its job
                raise NoSuchFileException(file_id)
        kept = self._kept_manifest(file_id)
        if kept is not None:
            return {"manifest_text": kept}
        with self._lock:
            rec = self._looked_up.pop(str(file_id), None)
        if rec is not None:
            return rec
        rec = self._file_record(file_id)
        if rec is None:
            raise NoSuchFileException(file_id)
        return rec

    def read_file(self, file_id: str, local_path: str, symlink: bool = False) -> None:
        rec = self._readable_record(file_id)
        name = self._file_basename(file_id)
        executable = bool(getattr(file_id, "executable", False))
        if symlink and not executable and self._symlink_from_mount(rec, name, local_path):
            return
        collection_io.download(self._api, rec["manifest_text"], name, local_path, executable)

    @staticmethod
    def _symlink_from_mount(rec: dict, name: str, local_path: str) -> bool:
        """With a Keep FUSE mount present, link to the immutable content instead of copying."""
        mount = os.environ.get(KEEP_MOUNT_ENV, "/keep")
        target = os.path.join(mount, "by_id", rec.get("portable_data_hash") or "", name)
        if not rec.get("portable_data_hash") or not os.path.isfile(target):
            return False
        if os.path.lexists(local_path):
            os.unlink(local_path)
        os.symlink(target, local_path)
        return True

    @contextmanager
    def read_file_stream(self, file_id: FileID | str, encoding: str | None = None,
                         errors: str | None = None) -> Iterator[IO[Any]]:
        rec = self._readable_record(str(file_id))
        with collection_io.open_reader(self._api, rec["manifest_text"], self._file_basename(str(file_id)),
                                       encoding, errors) as handle:
            yield handle

    def _delete_file_record(self, rec: dict) -> None:
        self._drop_manifests(uuid=rec["uuid"])
        if naming.PATH in rec["properties"]:
            # Hinted: keep the name taken forever (the tombstone), drop the content.
            self._update(rec["uuid"], manifest_text="",
                         properties={KIND: naming.KIND_TOMBSTONE, naming.PATH: rec["properties"][naming.PATH]})
        else:
            self._delete(rec["uuid"])

    def delete_file(self, file_id: str) -> None:
        if naming.parse_body_file_id(str(file_id)) is not None:
            try:
                self._rewrite_body(str(file_id), None)
            except NoSuchFileException:
                pass
            return
        self._drop_manifests(file_id)
        uuid, key, _ = self._locate(str(file_id))
        if uuid is not None:
            rec = {"uuid": uuid, "properties": {naming.PATH: key[1]} if key and key[0] == "slot" else {}}
        else:
            rec = self._file_record(file_id, [])
            if rec is None:
                return
        self._delete_file_record(rec)

    def file_exists(self, file_id: str) -> bool:
        return self._file_record(file_id, ["portable_data_hash"]) is not None

    def get_file_size(self, file_id: str) -> int:
        rec = self._file_record(file_id, ["file_size_total"])
        return int(rec.get("file_size_total") or 0) if rec is not None else 0

    def get_public_url(self, file_id: str) -> str:
        """``keep:<portable data hash>/<name>``.

        A URL anyone could fetch would need a token inside it; we will not mint or expose one.
        ``keep:`` URLs are what Arvados tools (and our ``keep:`` URL access plugin) resolve with the
        reader's own credentials, and the content hash makes the URL immutable.
        """
        rec = self._file_record(file_id, ["portable_data_hash"])
        if rec is None:
            raise NoSuchFileException(file_id)
        return f"{KEEP_SCHEME}:{rec['portable_data_hash']}/{quote(self._file_basename(file_id))}"

    def public_urls(self, file_ids: list[str]) -> dict[str, str]:
        """:meth:`get_public_url` of many files (a run's outputs): one batched lookup for the
        files whose record this process knows, one call each for the others.

        The records found are kept for one read each: a run's outputs are next exported to
        ``--outdir``, which would otherwise look each one up again."""
        ids = [str(f) for f in file_ids]
        known = {f: self._locate(f)[:2] for f in ids if naming.parse_body_file_id(f) is None}
        known = {f: (uuid, key) for f, (uuid, key) in known.items() if uuid is not None}
        recs = {r["uuid"]: r for r in arvados_client.get_many(
            self._api.collections().list, sorted({uuid for uuid, _ in known.values()}),
            ["portable_data_hash", "owner_uuid", "properties", "manifest_text"], what="look up output files")} if known else {}
        urls = {}
        for f in ids:
            uuid, key = known.get(f, (None, None))
            rec = recs.get(uuid or "")
            if rec is not None and self._is_live_file(rec, key):
                urls[f] = f"{KEEP_SCHEME}:{rec['portable_data_hash']}/{quote(self._file_basename(f))}"
                with self._lock:
                    self._looked_up[f] = rec
            else:
                urls[f] = self.get_public_url(f)
        return urls

    def _is_live_file(self, rec: dict, key: tuple[str, str] | None) -> bool:
        """What :meth:`_file_record` checks of a listed record (lists leave trashed ones out)."""
        props = rec.get("properties") or {}
        if rec.get("owner_uuid") != self.project_uuid or props.get(KIND) != naming.KIND_FILE:
            return False
        return key is None or key[0] != "slot" or props.get(naming.PATH) == key[1]

    # -- import ------------------------------------------------------------------------------

    def import_file(self, src_uri: str, shared_file_name: str | None = None, hardlink: bool = False,
                    symlink: bool = True) -> FileID | None:
        """``keep:`` sources become new records pointing at the same Keep blocks (no bytes copied);
        anything else goes through Toil's usual URL access."""
        if urlparse(src_uri).scheme.lower() != KEEP_SCHEME:
            return super().import_file(src_uri, shared_file_name, hardlink=hardlink, symlink=symlink)
        locator, _, path = unquote(src_uri[len(KEEP_SCHEME) + 1:]).lstrip("/").partition("/")
        if not path:
            raise IsADirectoryError(f"{src_uri} names a whole collection; import a file inside it")
        try:
            source = arvados.collection.CollectionReader(locator, api_client=self._api, keep_client=self._api.keep,
                                                         num_retries=NUM_RETRIES)
        except Exception as e:
            if arvados_client.error_kind(e) in (arvados_client.AUTH, arvados_client.NOT_FOUND,
                                                 arvados_client.CONFLICT):
                raise FileNotFoundError(
                    f"{src_uri}: no collection {locator} on {arvados_client.api_host()} that this token "
                    "can read; check the input's location") from None
            raise
        basename = naming.basename_of(path)
        try:
            manifest_text, size = collection_io.copy_reference(self._api, source, path, basename)
        except FileNotFoundError:
            raise FileNotFoundError(f"{src_uri}: collection {locator} has no file {path!r}; check the "
                                    "input's location") from None
        logger.info("Imported %s by reference (%d bytes, no copy)", src_uri, size)
        if shared_file_name is not None:
            self._requireValidSharedFileName(shared_file_name)
            self._save_shared(shared_file_name, manifest_text, rename_to=shared_file_name)
            return None
        file_id = self._new_file(basename, self._file_properties(None, False), None, manifest_text)
        return FileID(file_id, size, False)

    # -- shared files --------------------------------------------------------------------------

    def _save_shared(self, name: str, manifest_text: str, rename_to: str | None = None) -> None:
        """Create or replace the shared file ``name``; concurrent creators settle on one record."""
        if rename_to is not None:
            manifest_text = self._renamed(manifest_text, rename_to)
        with self._lock:
            cached = self._shared_uuids.get(name)
        if cached is not None and self._update(cached, manifest_text=manifest_text) is not None:
            return
        for _ in range(5):
            try:
                rec = self._create(naming.shared_name(name), {KIND: naming.KIND_SHARED}, manifest_text,
                                   name_is_ours=False)
                self._remember_shared(name, rec["uuid"])
                return
            except Exception as e:
                if not _is_conflict(e):
                    raise
            existing = self._by_name(naming.shared_name(name), [])
            if existing is not None and self._update(existing["uuid"], manifest_text=manifest_text) is not None:
                self._remember_shared(name, existing["uuid"])
                return
        raise RuntimeError(f"could not save shared file {name} in {self._full_locator}: it keeps changing")

    def _renamed(self, manifest_text: str, name: str) -> str:
        coll = arvados.collection.Collection(manifest_text, api_client=self._api, keep_client=self._api.keep)
        try:
            (old,) = list(coll.keys())
            if old != name:
                coll.rename(old, name)
            return coll.manifest_text()
        finally:
            coll.stop_threads()

    @contextmanager
    def write_shared_file_stream(self, shared_file_name: str, encrypted: bool | None = None,
                                 encoding: str | None = None, errors: str | None = None) -> Iterator[IO[Any]]:
        self._requireValidSharedFileName(shared_file_name)
        writer = self._writer(shared_file_name)
        with _filling(writer, encoding, errors) as handle:
            yield handle
        self._save_shared(shared_file_name, writer.manifest_text())

    def _shared_record(self, shared_file_name: str, select: list[str]) -> dict:
        self._requireValidSharedFileName(shared_file_name)
        rec = self._by_name(naming.shared_name(shared_file_name), select)
        if rec is None or rec["properties"].get(KIND) != naming.KIND_SHARED:
            raise NoSuchFileException(shared_file_name)
        self._remember_shared(shared_file_name, rec["uuid"])
        return rec

    def _remember_shared(self, name: str, uuid: str) -> None:
        with self._lock:
            self._shared_uuids[name] = uuid

    @contextmanager
    def read_shared_file_stream(self, shared_file_name: str, encoding: str | None = None,
                                errors: str | None = None) -> Iterator[IO[Any]]:
        rec = self._shared_record(shared_file_name, ["manifest_text"])
        with collection_io.open_reader(self._api, rec["manifest_text"], shared_file_name, encoding,
                                       errors) as handle:
            yield handle

    def get_shared_public_url(self, shared_file_name: str) -> str:
        """``keep:<portable data hash>/<name>``; see :meth:`get_public_url` for why."""
        rec = self._shared_record(shared_file_name, ["portable_data_hash"])
        return f"{KEEP_SCHEME}:{rec['portable_data_hash']}/{quote(shared_file_name)}"

    # -- stats and logs ------------------------------------------------------------------------

    def write_logs(self, msg: str | bytes) -> None:
        writer = self._writer(naming.LOG_FILE)
        writer.write_bytes(msg.encode("utf-8") if isinstance(msg, str) else msg)
        self._create(naming.log_name(), {KIND: naming.KIND_LOG, naming.LOG_STATE: naming.LOG_NEW},
                     writer.manifest_text())
        self._hint_new_logs()

    def _hint_new_logs(self) -> None:
        with _registry_lock:
            _log_hints[self._full_locator] = _log_hints.get(self._full_locator, 0) + 1

    def _logs_written_here(self) -> int:
        with _registry_lock:
            return _log_hints.get(self._full_locator, 0)

    def _may_skip_log_poll(self) -> bool:
        """True while the last poll found nothing, recently, and nothing here hinted at new logs.

        Logs of other processes then reach the leader up to LOG_POLL_INTERVAL later; they are not
        lost (they stay unread on the server until a poll or ``read_all`` takes them)."""
        if self._log_empty_at is None or self._logs_written_here() != self._log_seen:
            return False
        return time.monotonic() - self._log_empty_at < LOG_POLL_INTERVAL

    def read_logs(self, callback: Callable[..., Any], read_all: bool = False) -> int:
        with self._log_lock:  # two concurrent readers would hand the same log out twice
            if not read_all and self._may_skip_log_poll():
                return 0
            written = self._logs_written_here()
            processed = self._read_logs(callback, read_all)
            self._log_seen = written
            self._log_empty_at = time.monotonic() if processed == 0 else None
            return processed

    def _read_logs(self, callback: Callable[..., Any], read_all: bool) -> int:
        filters: list = [[f"properties.{KIND}", "=", naming.KIND_LOG]]
        if not read_all:
            filters.append([f"properties.{naming.LOG_STATE}", "=", naming.LOG_NEW])
        processed = 0
        for rec in list(self._list(filters, ["manifest_text", "properties"])):
            with collection_io.open_reader(self._api, rec["manifest_text"], naming.LOG_FILE) as handle:
                callback(handle)
            processed += 1
            if rec["properties"].get(naming.LOG_STATE) == naming.LOG_NEW:
                self._update(rec["uuid"], properties={KIND: naming.KIND_LOG, naming.LOG_STATE: naming.LOG_READ})
        return processed
