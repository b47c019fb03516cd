"""Runs queued containers on this machine, within the cluster's cores and RAM (crunch's job).

The dispatcher does what ``arvados-dispatch-*`` plus ``crunch-run`` do on a real cluster: it picks
``Queued`` containers by priority, locks them, presents their mounts at the paths they name,
runs the command through a :mod:`runtime`, then saves the output and log collections and
completes (or cancels) the container. It is woken by the store's change events, so a newly
queued container starts without any polling delay.

As crunch-run, it connects the command's standard streams to the ``stdin``/``stdout``/``stderr``
mounts, stops a container that outlives ``scheduling_parameters.max_run_time``, and builds the
output from the output directory *and* the mounts under it ("pre-populated output"): a CWL
runner stages a tool's InitialWorkDir that way and expects those files back in the output.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import collection_files, crunch, mount_points, output_glob, output_links, output_tree, sizing
from . import manifest as mf
from .blockstore import BlockStore
from .collections import store_manifest
from ..images.archive import find_tarball
from .containers import STREAM_MOUNTS, Lifecycle
from .resources import new_token_secret
from .runtime import Runtime
from .runtime.nsinit import process_start
from .scratch import Scratch, release_leftovers
from .store import Store, timestamp
from ..timestamps import parse_timestamp
from .uuids import table_of

logger = logging.getLogger(__name__)


#: Arvados' ``Containers.CloudVMs.SupervisorFraction`` default: the share of the containers the
#: cluster can run at once that workflow runners (``scheduling_parameters.supervisor``) may take.
SUPERVISOR_FRACTION = 0.5


def max_supervisors(cores: int, fraction: float = SUPERVISOR_FRACTION) -> int:
    """How many supervisor containers may run at once (dispatch-cloud's runQueue, with this
    machine's one-core container slots as its ``maxContainers``): at least one (pure)."""
    return max(1, int(cores * fraction)) if fraction > 0 and cores > 0 else 0


def _is_supervisor(c: dict) -> bool:
    return bool((c.get("scheduling_parameters") or {}).get("supervisor"))


@dataclass
class _Running:
    container_uuid: str
    vcpus: int
    ram: int
    supervisor: bool = False
    task: asyncio.Task | None = None
    proc: Any = None
    cancelled: bool = False
    #: Why the dispatcher stopped it, when not for priority 0 (e.g. max_run_time).
    cancel_reason: str | None = None
    log_lines: list[str] = field(default_factory=list)
    #: The command runs and nothing of its outcome is being saved: it may be left to run on.
    waiting: bool = False
    #: Left running for the next cluster process to adopt (``down --keep-containers``).
    detached: bool = False


@dataclass
class _Held:
    """What a container holds on this machine from its start to its end (released then), and
    what the next cluster process needs to finish it if it outlives this one (``running.json``)."""
    workdir: Path
    token_uuid: str | None = None
    scratch: Scratch | None = None
    #: The run spec's mounts (host sources): the output is assembled from them.
    mounts: list[dict] = field(default_factory=list)
    #: Mount points made in writable mounts, removed after the command (see mount_points).
    made_points: list[tuple[Path, bool]] = field(default_factory=list)

    @property
    def logdir(self) -> Path:
        return self.workdir / "log"

    def save(self, run: _Running, runtime_record: dict) -> None:
        """Write ``running.json`` (whole or not at all): a container whose runtime can outlive
        this process can be finished by the next one."""
        data = {"vcpus": run.vcpus, "ram": run.ram, "supervisor": run.supervisor,
                "token_uuid": self.token_uuid, "mounts": self.mounts,
                "made_points": [[str(p), is_dir] for p, is_dir in self.made_points],
                "scratch": self.scratch.state() if self.scratch else None, "runtime": runtime_record}
        tmp = self.workdir / ".running.json.tmp"
        tmp.write_text(json.dumps(data))
        tmp.replace(self.workdir / RUNNING_FILE)

    @classmethod
    def load(cls, workdir: Path) -> tuple["_Held", dict] | None:
        """What :meth:`save` wrote, and its raw data; None if nothing usable is there."""
        try:
            data = json.loads((workdir / RUNNING_FILE).read_text())
            held = cls(workdir, data.get("token_uuid"),
                       Scratch.restore(workdir, data["scratch"]) if data.get("scratch") else None,
                       list(data["mounts"]), [(Path(p), bool(d)) for p, d in data["made_points"]])
            return held, data
        except (OSError, ValueError, KeyError, TypeError):
            return None


#: In a container's work directory while it runs: see :meth:`_Held.save`.
RUNNING_FILE = "running.json"


class Dispatcher:
    def __init__(self, store: Store, lifecycle: Lifecycle, config: Any, blockstore: BlockStore,
                 runtime: Runtime, *, api_env: dict[str, str], api_files: dict[str, Path] | None = None) -> None:
        self.store = store
        self.lifecycle = lifecycle
        self.config = config
        self.blockstore = blockstore
        self.runtime = runtime
        self.api_env = api_env  # ARVADOS_API_HOST etc. for containers that ask for API access
        self.api_files = dict(api_files or {})  # and host files they see (read-only), e.g. the CA bundle
        self.work_root = Path(config.state_dir) / "containers"
        self.cache_root = Path(config.state_dir) / "mountcache"
        self.running: dict[str, _Running] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        # Queued containers found to fit an instance type: uuid -> the etag of that version. A
        # pass runs after every change, with up to thousands queued; each is sized once per version.
        self._fits: dict[str, str] = {}
        # One lock per collection being materialized: containers starting together wait for one
        # copy (an image is hundreds of MB) instead of each making its own.
        self._copying: dict[str, threading.Lock] = {}
        self._copying_guard = threading.Lock()
        #: Every container's task, from its start until its outcome is saved and released.
        self._tasks: set[asyncio.Task] = set()
        #: Containers recover() took over, each with what it holds; run() follows them.
        self._adopted: list[tuple[_Running, _Held]] = []
        store.add_listener(self._on_event)

    # -- scheduling ---------------------------------------------------------------------------

    def _on_event(self, log: dict) -> None:
        if table_of(log.get("object_uuid", "")) in ("containers", "container_requests"):
            self._wake.set()

    async def run(self) -> None:
        """The scheduling loop; ends when :meth:`stop` is called. Call :meth:`recover` first."""
        for run, held in self._adopted:
            run.task = self._track(self._run(run, held))
        self._adopted.clear()
        while not self._stopping:
            self._wake.clear()
            try:
                self._schedule()
            except Exception:
                logger.exception("dispatcher scheduling pass failed")
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=5)
            except asyncio.TimeoutError:
                pass

    async def stop(self, keep_running: bool = False) -> None:
        """Stop taking work, and cancel what runs (a clean ``cluster down``) or, with
        *keep_running*, leave each container whose runtime can outlive this process running for
        the next one to adopt, as a real cluster's containers outlive its services' restarts."""
        self._stopping = True
        self._wake.set()
        for run in list(self.running.values()):
            if keep_running and run.waiting and run.proc is not None and run.proc.record() is not None:
                run.detached = True
                _append(self.work_root / run.container_uuid / "log" / "crunch-run.txt",
                        f"{timestamp()} the cluster is stopping; the container keeps running\n")
                if run.task:
                    run.task.cancel()
                continue
            run.cancelled = True
            if run.proc is not None:
                run.proc.kill()
        if self._tasks:  # also those saving the outcome of a command that has ended
            await asyncio.wait(list(self._tasks), timeout=30)

    def _track(self, coro: Any) -> asyncio.Task:
        """A task running one container, kept until it is done (stop() waits for them all)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def recover(self) -> None:
        """At start, before anyone is served: settle the containers the last cluster process
        left Locked or Running, as Arvados' dispatcher does (scheduler/sync.go). A Running one
        whose runtime still runs it, or ended while no cluster process ran (its outcome is on
        disk), is adopted: followed to its end and finished as if this process had started it
        (dispatch-cloud takes over the crunch-run processes it finds on its workers). A Locked one
        is requeued; a Running one nothing runs any more is cancelled ("not running on any
        worker"), which retries its requests up to ``container_count_max``; leaving either state
        expires the container's token. A cancelled container's logs so far become its log
        collection. Call :meth:`run` next, which follows the adopted ones."""
        adopted = set()
        for c in self.store.lookup_many("containers", "state", ("Locked", "Running")):
            if c["state"] == "Locked":
                logger.info("requeueing %s: it was Locked when the cluster stopped", c["uuid"])
                self.lifecycle.update_container(c["uuid"], {"state": "Queued", "locked_by_uuid": None})
            elif c["state"] == "Running" and self._adopt(c):
                adopted.add(c["uuid"])
            elif c["state"] == "Running":
                logger.info("cancelling %s: it was Running when the cluster stopped", c["uuid"])
                _stop_stray_runner(self.work_root / c["uuid"])
                self._finish_cancelled(c["uuid"], self.work_root / c["uuid"] / "log",
                                       "container was running when the cluster stopped "
                                       "(not running on any worker)")
        # Scratch filesystems and work directories of runs that ended with the last process.
        release_leftovers(self.work_root, keep={self.work_root / u for u in adopted})
        if self.work_root.is_dir():
            for leftover in self.work_root.iterdir():
                if leftover.name not in adopted:
                    shutil.rmtree(leftover, ignore_errors=True)
        self.lifecycle.expire_stale_container_tokens()

    def _adopt(self, c: dict) -> bool:
        """Take over a Running container the last cluster process left to run (see
        :meth:`recover`); False when it cannot be followed any more."""
        workdir = self.work_root / c["uuid"]
        loaded = _Held.load(workdir) if self.runtime is not None else None
        proc = self.runtime.adopt(loaded[1]["runtime"]) if loaded else None
        if proc is None:
            return False
        held, data = loaded
        run = _Running(c["uuid"], int(data["vcpus"]), int(data["ram"]), bool(data["supervisor"]), proc=proc)
        self.running[c["uuid"]] = run
        self._adopted.append((run, held))
        logger.info("adopting %s: it kept running while the cluster was stopped", c["uuid"])
        _append(held.logdir / "crunch-run.txt", f"{timestamp()} the cluster is back; following the container again\n")
        return True

    def _free(self) -> tuple[int, int]:
        used_cpu = sum(r.vcpus for r in self.running.values())
        used_ram = sum(r.ram for r in self.running.values())
        return self.config.cores - used_cpu, self.config.ram - used_ram

    def _schedule(self) -> None:
        for run in list(self.running.values()):
            c = self.store.get(run.container_uuid)
            if c is not None and (c.get("priority") or 0) == 0 and not run.cancelled:
                run.cancelled = True
                logger.info("cancelling %s: priority is 0", run.container_uuid)
                if run.proc is not None:
                    run.proc.kill()
        queued = sorted((c for c in self.store.lookup("containers", "state", "Queued")
                         if c["state"] == "Queued" and (c.get("priority") or 0) > 0),
                        key=lambda c: (-c["priority"], c["created_at"]))
        known, self._fits = self._fits, {}
        free_cpu, free_ram = self._free()  # kept up to date below: only this loop adds runs
        supervisors, limit = sum(r.supervisor for r in self.running.values()), max_supervisors(self.config.cores)
        for c in queued:
            supervisor = _is_supervisor(c)
            if supervisor and limit and supervisors >= limit:
                continue  # dispatch-cloud's "supervisor limit reached": runners must leave room for work
            rc = c.get("runtime_constraints") or {}
            vcpus, ram = int(rc.get("vcpus") or 1), int(rc.get("ram") or 0)
            sized = c.get("etag") and known.get(c["uuid"]) == c["etag"]
            problem = None if sized else self._unsatisfiable(c)
            if problem is None:
                self._fits[c["uuid"]] = c.get("etag")
            if problem:
                self._cancel_unsatisfiable(c, problem)
                continue
            if vcpus > free_cpu or ram > free_ram:
                continue  # waits for a running container to finish; smaller ones may still fit
            free_cpu, free_ram = free_cpu - vcpus, free_ram - ram
            supervisors += supervisor
            run = _Running(c["uuid"], vcpus, ram, supervisor)
            self.running[c["uuid"]] = run
            run.task = self._track(self._run(run))

    def _unsatisfiable(self, c: dict) -> tuple[str, str] | None:
        """Why no instance type of the cluster config fits *c* (dispatch-cloud's ChooseInstanceType),
        and the detail sdk/go/dispatch logs; None when one fits."""
        types = self.config.instance_types()
        fits, why = sizing.choose_instance_types(types, c, self.config.reserve_extra_ram)
        if fits:
            return None
        why = why or sizing.UNSATISFIABLE
        return why, sizing.unsatisfiable_log(c["uuid"], why, types)

    def _cancel_unsatisfiable(self, c: dict, problem: tuple[str, str]) -> None:
        """As dispatch-cloud's cancelUnsatisfiableContainer: lock, set runtime_status.error, cancel.

        No log collection: dispatch-cloud never starts crunch-run for it. ``errorDetail`` carries
        what sdk/go/dispatch logs (the reason and the instance types there are).
        """
        error, detail = problem
        logger.warning("container %s cannot run here: %s", c["uuid"], detail.strip())
        self.lifecycle.update_container(c["uuid"], {"state": "Locked"})
        self.lifecycle.update_container(c["uuid"], {
            "state": "Cancelled", "runtime_status": {"error": error, "errorDetail": detail.strip()}})

    # -- running one container ---------------------------------------------------------------

    async def _run(self, run: _Running, held: _Held | None = None) -> None:
        """Run one container to its end: start it (unless *held*, one adopted already running),
        wait, save its output and logs, complete or cancel it, release what it held."""
        uuid = run.container_uuid
        held = held or _Held(self.work_root / uuid)
        try:
            if run.proc is None:
                await self._start(run, held)
            await self._complete(run, held)
        except _Cancelled as e:
            self._finish_cancelled(uuid, held.logdir, str(e) if e.args and e.args[0] else None)
        except Exception as e:  # infrastructure failure: the container is cancelled (and retried)
            logger.exception("running container %s failed", uuid)
            self._finish_cancelled(uuid, held.logdir, f"dispatcher error: {type(e).__name__}: {e}")
        finally:
            self._free_slot(run)
            if not run.detached:  # else the next cluster process finishes and releases it
                await self._release(held)

    def _free_slot(self, run: _Running) -> None:
        if self.running.pop(run.container_uuid, None) is not None:
            self._wake.set()  # the next container may start

    async def _start(self, run: _Running, held: _Held) -> None:
        """Lock the container, give it a token, scratch space and its mounts, and start it."""
        uuid, logdir = run.container_uuid, held.logdir
        c = self.store.get(uuid)
        token = self.store.create("api_client_authorizations", {
            "owner_uuid": c["runtime_user_uuid"], "api_token": new_token_secret(),
            "scopes": c.get("runtime_auth_scopes") or ["all"], "expires_at": None,
            "_container_uuid": uuid}, by=self.store.system_user_uuid)
        held.token_uuid = token["uuid"]
        c = self.lifecycle.update_container(uuid, {
            "state": "Locked", "locked_by_uuid": self.config.root_token_uuid, "auth_uuid": token["uuid"]})
        shutil.rmtree(held.workdir, ignore_errors=True)
        logdir.mkdir(parents=True)
        mount_error = crunch.crunch_run_mount_error(c)
        if mount_error:
            raise _Cancelled(f"While setting up mounts: {mount_error}")
        held.scratch = Scratch(held.workdir, crunch.tmp_capacity(c))
        await asyncio.to_thread(held.scratch.create)
        if held.scratch.note:
            _append(logdir / "crunch-run.txt", f"{timestamp()} {held.scratch.note}\n")
        spec = await asyncio.to_thread(self._prepare, c, held.workdir, logdir, token, held.scratch.root)
        held.mounts = spec["mounts"]
        held.made_points = await asyncio.to_thread(mount_points.make_mount_points, spec["mounts"])
        if run.cancelled:
            raise _Cancelled()
        self.lifecycle.update_container(uuid, {"state": "Running"})
        run.proc = await self.runtime.start(spec)
        record = run.proc.record()
        if record is not None:
            held.save(run, record)
        if run.cancelled:
            run.proc.kill()

    async def _complete(self, run: _Running, held: _Held) -> None:
        """Wait for the command; save its output and logs and complete the container."""
        uuid = run.container_uuid
        c = self.store.get(uuid)
        run.waiting = True
        try:
            exit_code = await self._wait(run, crunch.max_run_time(c), _seconds_since(c.get("started_at")))
        finally:
            run.waiting = False
        # Its cores and RAM are free once the command has ended: the next container starts
        # while this one's output and logs are saved (the dispatcher's work, not the command's).
        self._free_slot(run)
        await asyncio.to_thread(mount_points.remove_mount_points, held.made_points)
        if run.cancelled:
            raise _Cancelled(run.cancel_reason)
        if getattr(run.proc, "lost", False):
            raise _Cancelled("container process was lost (killed outside the command)")
        finish: dict[str, Any] = {"exit_code": exit_code}
        # As crunch-run: a container with API access may have set its output itself.
        current = self.store.get(uuid) or c
        if (c.get("runtime_constraints") or {}).get("API") and current.get("output"):
            output_pdh = current["output"]
        else:
            spec = {"mounts": held.mounts}
            linked = await asyncio.to_thread(_contain_output_links, c, spec, held.logdir)
            output_pdh = await asyncio.to_thread(self._save_output, c, spec, linked)
        log_pdh = await asyncio.to_thread(self._save_log_dir, c, held.logdir)
        finish.update({"state": "Complete", "output": output_pdh, "log": log_pdh, "progress": 1.0})
        self.lifecycle.update_container(uuid, finish)

    async def _release(self, held: _Held) -> None:
        """Expire the container's token, unmount its scratch space, delete its work directory."""
        if held.token_uuid is not None and self.store.get(held.token_uuid):
            self.store.update(held.token_uuid, {"expires_at": timestamp()}, log=False)
        if held.scratch is not None:
            await asyncio.to_thread(held.scratch.release)
        shutil.rmtree(held.workdir, ignore_errors=True)

    async def _wait(self, run: _Running, max_run_time: float, elapsed: float = 0.0) -> int:
        """The command's exit code. Past ``max_run_time`` seconds (0: no limit) since it started
        (*elapsed* ago) the container is stopped the way a priority-0 cancel stops it, so it
        ends Cancelled, as crunch-run's do."""
        if max_run_time <= 0:
            return await run.proc.wait()
        try:
            # wait() shields the runtime's own task: timing out here leaves the container alone.
            return await asyncio.wait_for(run.proc.wait(), max(max_run_time - elapsed, 0.001))
        except asyncio.TimeoutError:
            if not run.cancelled:
                run.cancelled = True
                run.cancel_reason = (f"maximum run time exceeded: the container ran longer than "
                                     f"scheduling_parameters.max_run_time ({max_run_time:g} seconds) "
                                     "and was stopped")
                logger.info("stopping %s: %s", run.container_uuid, run.cancel_reason)
                run.proc.kill()
            return await run.proc.wait()

    def _finish_cancelled(self, uuid: str, logdir: Path, error: str | None) -> None:
        c = self.store.get(uuid)
        if c is None or c["state"] in ("Complete", "Cancelled"):
            return
        changes: dict[str, Any] = {"state": "Cancelled"}
        if error:
            changes["runtime_status"] = {"error": error}
            _append(logdir / "crunch-run.txt", f"{timestamp()} {error}\n")
        else:
            _append(logdir / "crunch-run.txt", f"{timestamp()} container cancelled\n")
        try:
            changes["log"] = self._save_log_dir(c, logdir)
        except Exception:
            logger.exception("could not save the log of cancelled container %s", uuid)
        self.lifecycle.update_container(uuid, changes)

    # -- mounts ------------------------------------------------------------------------------

    def _prepare(self, c: dict, workdir: Path, logdir: Path, token: dict, scratch: Path) -> dict:
        """Turn the container's mounts into host paths and write the run spec for the runtime."""
        mounts: list[dict] = []
        stdin_path = None
        all_mounts = dict(c.get("mounts") or {})
        all_mounts.update(c.get("secret_mounts") or {})
        for n, (path, m) in enumerate(sorted(all_mounts.items())):
            if path == "stdin":
                stdin_path = str(self._stdin_source(m, workdir, n))
            elif path not in STREAM_MOUNTS:
                src, writable = self._mount_source(path, m, workdir, n, scratch)
                mounts.append({"path": path, "source": str(src), "writable": writable})
        env = dict(c.get("environment") or {})
        if (c.get("runtime_constraints") or {}).get("API"):
            env.update(self.api_env)
            env["ARVADOS_API_TOKEN"] = f"v2/{token['uuid']}/{token['api_token']}"
            # As crunch-run's CA bundle: unless the request mounts something there itself.
            mounts += [{"path": path, "source": str(src), "writable": False}
                       for path, src in self.api_files.items() if path not in all_mounts]
        rc = c.get("runtime_constraints") or {}
        image = c.get("container_image")
        spec = {
            "container_uuid": c["uuid"],
            "command": c["command"],
            "cwd": c.get("cwd") or ".",
            "environment": env,
            "mounts": mounts,
            "stdin": stdin_path,
            "stdout": mount_points.stream_target("stdout", all_mounts, mounts),
            "stderr": mount_points.stream_target("stderr", all_mounts, mounts),
            "stdout_log": str(logdir / "stdout.txt"),
            "stderr_log": str(logdir / "stderr.txt"),
            "crunch_log": str(logdir / "crunch-run.txt"),
            "image": image,
            "vcpus": int(rc.get("vcpus") or 1),
            "ram": int(rc.get("ram") or 0),
            "api": bool(rc.get("API")),
            **self._image_spec(image, workdir),
        }
        (logdir / "container.json").write_text(json.dumps(crunch.public_container(c), indent=2,
                                                          sort_keys=True))
        return spec

    def _mount_source(self, path: str, m: dict, workdir: Path, n: int, scratch: Path) -> tuple[Path, bool]:
        """The host file or directory presented at *path*, and whether it is writable there."""
        kind = m.get("kind")
        if kind == "tmp":
            src = scratch / f"tmp{n}"  # on the container's size-limited scratch filesystem
            src.mkdir()
            return src, True
        if kind == "collection":
            return self._collection_source(m, workdir, n), bool(m.get("writable"))
        if kind in ("json", "text"):
            return mount_points.literal_file(m, workdir / f"file{n}"), False
        if kind == "keep":
            raise RuntimeError("mount kind 'keep' is not supported by this cluster")
        raise RuntimeError(f"unsupported mount kind {kind!r} at {path}")

    def _stdin_source(self, m: dict, workdir: Path, n: int) -> Path:
        """The host file the command reads as stdin: a file of a collection, or literal content."""
        if m.get("kind") in ("json", "text"):
            return mount_points.literal_file(m, workdir / f"file{n}")
        src = self._collection_source(m, workdir, n)
        if not src.is_file():
            raise RuntimeError("the stdin mount must name a file in its collection (set its \"path\")")
        return src

    def _collection_source(self, m: dict, workdir: Path, n: int) -> Path:
        pdh = m.get("portable_data_hash")
        if not pdh:
            if not m.get("writable"):
                raise RuntimeError("a read-only collection mount needs a portable_data_hash or uuid")
            src = workdir / f"coll{n}"
            src.mkdir()
            return src
        cached = self._materialized(pdh)
        sub = (m.get("path") or "").strip("/")
        if ".." in sub.split("/"):  # refused at commit too; never leave the collection's copy
            raise RuntimeError(f"collection mount path {sub!r} leaves the collection")
        src = cached / sub if sub else cached
        if not src.exists():
            raise RuntimeError(f"path {sub!r} not found in collection {pdh}")
        if m.get("writable"):
            dst = workdir / f"coll{n}"
            if src.is_dir():
                shutil.copytree(src, dst)
            else:
                shutil.copy2(src, dst)
            return dst
        return src

    def _materialized(self, pdh: str) -> Path:
        """A read-only copy of a collection's files, made once per content hash and shared."""
        target = self.cache_root / pdh
        if target.exists():
            return target
        with self._copying_guard:
            lock = self._copying.setdefault(pdh, threading.Lock())
        with lock:
            try:
                if not target.exists():  # not made by the container this one waited for
                    self._materialize(pdh, target)
            finally:  # later callers find the copy (or, after a failure, try again)
                with self._copying_guard:
                    self._copying.pop(pdh, None)
        return target

    def _materialize(self, pdh: str, target: Path) -> None:
        manifest = self._manifest_of(pdh)
        tmp = self.cache_root / f".{pdh}.{time.monotonic_ns()}"
        tmp.mkdir(parents=True)
        collection_files.materialize(manifest, self.blockstore, tmp)
        try:
            tmp.rename(target)
        except OSError:  # another cluster process sharing the cache made it meanwhile
            shutil.rmtree(tmp, ignore_errors=True)

    def _manifest_of(self, pdh: str) -> str:
        """The stored (unsigned) manifest of the collection with content hash *pdh*."""
        # The lookup returns a snapshot: this runs in a worker thread while the loop adds records.
        manifest = next((c["manifest_text"] for c in self.store.lookup("collections", "portable_data_hash", pdh)
                         if c.get("portable_data_hash") == pdh), None)
        if manifest is None:
            raise RuntimeError(f"collection {pdh} not found")
        return manifest

    def _image_spec(self, pdh: str | None, workdir: Path) -> dict:
        """Where the runtime finds the image: the ``docker save`` archive of its collection (as
        crunch-run loads it from Keep), materialized once per image, and a scratch directory
        for the container's writable layer."""
        if not pdh:
            raise RuntimeError("the container has no container_image")
        tarball = find_tarball(self._materialized(pdh))
        if tarball is None:
            raise RuntimeError(f"image collection {pdh} holds no <image id>.tar (store images "
                               "with arv-keepdocker or toil-arvados images)")
        scratch = workdir / "rootfs"
        scratch.mkdir()
        return {"image_tarball": str(tarball), "rootfs_scratch": str(scratch)}

    # -- output and logs ---------------------------------------------------------------------

    def _save_output(self, c: dict, spec: dict, linked: list[output_tree.Layer] = ()) -> str:
        """The output collection: what the command sees at output_path when it ends.

        That is the output directory as the command left it, overlaid by every mount below it
        (Arvados' "pre-populated output"), deeper mounts over shallower ones, exactly as they
        covered each other in the container. Read-only collections are spliced in from their
        manifests (no data is copied or re-hashed); writable copies, literal files and tmp
        directories are uploaded as the command left them; so are files a symlink in the output
        leads to in such a collection (*linked*). ``output_glob`` filters the result.
        """
        keep = output_glob.matcher(c.get("output_glob"))
        tree = mf.ManifestTree()
        for layer in [*output_tree.output_layers(c, spec["mounts"]), *linked]:
            output_tree.drop(tree, layer.rel)
            if not layer.exclude:
                output_tree.graft(tree, self._layer_tree(layer, keep))
        manifest = mf.render(output_tree.filtered(tree, keep))
        # crunch-run creates it already trashed: users (and reuse) see only the requests' copies.
        rec = store_manifest(self.store, manifest, name=f"output for {c['uuid']}",
                             owner_uuid=self.store.system_user_uuid)
        self.store.update(rec["uuid"], {"is_trashed": True, "trash_at": timestamp()})
        return rec["portable_data_hash"]

    def _layer_tree(self, layer: output_tree.Layer, keep: Callable[[str], bool]) -> mf.ManifestTree:
        """One layer's files, at their place in the output (empty if its source is gone)."""
        if layer.pdh is not None:
            return output_tree.relocated(mf.parse(self._manifest_of(layer.pdh)), layer.coll_path, layer.rel)
        src = layer.host
        if src is None:
            return mf.ManifestTree(dirs=set())
        if src.is_dir():
            # Every directory is walked (glob patterns may keep something deep inside it); only
            # files the patterns keep are read. output_tree.filtered() then settles which dirs stay.
            def include(rel: str) -> bool:
                return keep(output_tree.join(layer.rel, rel)) or (src / rel).is_dir()
            uploaded = collection_files.upload_directory(src, self.blockstore, include=include)
            return output_tree.relocated(mf.parse(uploaded), "", layer.rel)
        if src.is_file() and keep(layer.rel):
            return self._file_tree(src, layer.rel)
        return mf.ManifestTree(dirs=set())  # deleted, not a regular file, or left out by the glob

    def _file_tree(self, src: Path, rel: str) -> mf.ManifestTree:
        """A single host file stored in Keep, as a tree holding it at *rel*."""
        self.work_root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.work_root, prefix=".file-") as staging:
            (Path(staging) / "f").symlink_to(src)  # upload_directory follows links to files
            uploaded = collection_files.upload_directory(Path(staging), self.blockstore)
        return output_tree.relocated(mf.parse(uploaded), "f", rel)

    def _save_log_dir(self, c: dict, logdir: Path) -> str:
        """The container's own log collection, as crunch-run's final saveLogCollection leaves it:
        made with the dispatcher's token and trashed at once. Users read the copies the
        container requests get (see Lifecycle._finalize), never this one."""
        manifest = collection_files.upload_directory(logdir, self.blockstore) if logdir.exists() else ""
        rec = store_manifest(self.store, manifest, name=f"logs for {c['uuid']}",
                             owner_uuid=self.store.system_user_uuid)
        self.store.update(rec["uuid"], {"is_trashed": True, "trash_at": timestamp()})
        return rec["portable_data_hash"]


class _Cancelled(Exception):
    pass


def _contain_output_links(c: dict, spec: dict, logdir: Path) -> list[output_tree.Layer]:
    """Make the symlinks the command left in its writable mounts safe to follow (see
    :mod:`output_links`): never read a host file through a link that meant a path in the image.
    Returns the layers for links into read-only collections, spliced by reference."""
    mounts = {m["path"]: m["source"] for m in spec["mounts"]}
    writable = {m["path"]: m["source"] for m in spec["mounts"] if m["writable"]}
    secret = {p for p in (c.get("secret_mounts") or {}) if p.startswith("/")}
    collections = {mount_points.norm(p): m for p, m in (c.get("mounts") or {}).items()
                   if p.startswith("/") and m.get("kind") == "collection" and not m.get("writable")
                   and m.get("portable_data_hash")}
    out = mount_points.norm(c["output_path"])
    notes, refs = output_links.contain_links(writable, mounts, secret, set(collections), out)
    for note in notes:
        _append(logdir / "crunch-run.txt", f"{timestamp()} {note}\n")
    layers = []
    for link, target in sorted(refs.items()):
        root = max((p for p in collections if target == p or target.startswith(p.rstrip("/") + "/")), key=len)
        m = collections[root]
        coll_path = output_tree.join((m.get("path") or "").strip("/"), target[len(root):].strip("/"))
        layers.append(output_tree.Layer(link[len(out):].strip("/"), pdh=m["portable_data_hash"],
                                        coll_path=coll_path))
    return layers


def _append(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(text)


def _seconds_since(stamp: str | None) -> float:
    """Seconds since an Arvados timestamp (0 if there is none)."""
    return max(time.time() - parse_timestamp(stamp), 0.0) if stamp else 0.0


def _stop_stray_runner(workdir: Path) -> None:
    """Kill the runtime process of a container about to be cancelled, if one still runs: one
    whose cluster process died before it could record the container (see ``runner.json``)."""
    try:
        who = json.loads((workdir / "rootfs" / "runner.json").read_text())
        pid, start = int(who["pid"]), int(who["start"])
    except (OSError, ValueError, KeyError, TypeError):
        return
    if start and process_start(pid, running=True) == start:
        logger.info("stopping the runtime (pid %d) of %s", pid, workdir.name)
        try:
            os.kill(pid, signal.SIGKILL)  # its PID 1 dies with it (PR_SET_PDEATHSIG), then the rest
        except ProcessLookupError:
            pass
