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
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import collection_files, output_glob, output_links, sizing
from . import manifest as mf
from .blockstore import BlockStore
from .collections import store_manifest
from ..images.archive import find_tarball
from .containers import STREAM_MOUNTS, Lifecycle
from .resources import new_token_secret
from .runtime import Runtime
from .scratch import Scratch, release_leftovers
from .store import Store, timestamp
from .uuids import table_of

logger = logging.getLogger(__name__)


@dataclass
class _Running:
    container_uuid: str
    vcpus: int
    ram: int
    task: asyncio.Task | None = None
    proc: Any = None
    cancelled: bool = False
    #: Why the dispatcher stopped it, when not for priority 0 (e.g. max_run_time).
    cancel_reason: str | None = None
    log_lines: list[str] = field(default_factory=list)


class Dispatcher:
    def __init__(self, store: Store, lifecycle: Lifecycle, config: Any, blockstore: BlockStore,
                 runtime: Runtime, *, api_env: dict[str, str]) -> None:
        self.store = store
        self.lifecycle = lifecycle
        self.config = config
        self.blockstore = blockstore
        self.runtime = runtime
        self.api_env = api_env  # ARVADOS_API_HOST etc. for containers that ask for API access
        self.work_root = Path(config.state_dir) / "containers"
        self.cache_root = Path(config.state_dir) / "mountcache"
        self.running: dict[str, _Running] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        # Queued containers found to fit an instance type: uuid -> the etag of that version. A
        # pass runs after every change, with up to thousands queued; each is sized once per version.
        self._fits: dict[str, str] = {}
        store.add_listener(self._on_event)

    # -- scheduling ---------------------------------------------------------------------------

    def _on_event(self, log: dict) -> None:
        if table_of(log.get("object_uuid", "")) in ("containers", "container_requests"):
            self._wake.set()

    async def run(self) -> None:
        """The scheduling loop; ends when :meth:`stop` is called. Call :meth:`recover` first."""
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

    async def stop(self) -> None:
        """Stop taking work and cancel what runs (a clean ``cluster down``)."""
        self._stopping = True
        self._wake.set()
        for run in list(self.running.values()):
            run.cancelled = True
            if run.proc is not None:
                run.proc.kill()
        tasks = [r.task for r in self.running.values() if r.task]
        if tasks:
            await asyncio.wait(tasks, timeout=30)

    def recover(self) -> None:
        """At start, before anyone is served: no process of ours runs any container now (they die
        with the cluster process), so settle those the last run left Locked or Running, as
        Arvados' dispatcher does when it finds no crunch-run for them (scheduler/sync.go): a
        Locked one is requeued, a Running one cancelled ("not running on any worker"), which
        retries its requests up to ``container_count_max``. Leaving either state expires the
        container's token. A Running container's logs so far become its log collection."""
        release_leftovers(self.work_root)  # scratch filesystems still mounted in work directories
        for c in self.store.lookup_many("containers", "state", ("Locked", "Running")):
            if c["state"] == "Locked":
                logger.info("requeueing %s: it was Locked when the cluster stopped", c["uuid"])
                self.lifecycle.update_container(c["uuid"], {"state": "Queued", "locked_by_uuid": None})
            elif c["state"] == "Running":
                logger.info("cancelling %s: it was Running when the cluster stopped", c["uuid"])
                self._finish_cancelled(c["uuid"], self.work_root / c["uuid"] / "log",
                                       "container was running when the cluster stopped "
                                       "(not running on any worker)")
        if self.work_root.is_dir():  # work directories of runs that ended with the last process
            for leftover in self.work_root.iterdir():
                shutil.rmtree(leftover, ignore_errors=True)
        self.lifecycle.expire_stale_container_tokens()

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
        for c in queued:
            rc = c.get("runtime_constraints") or {}
            vcpus, ram = int(rc.get("vcpus") or 1), int(rc.get("ram") or 0)
            sized = c.get("etag") and known.get(c["uuid"]) == c["etag"]
            problem = None if sized else self._unsatisfiable(c)
            if problem is None:
                self._fits[c["uuid"]] = c.get("etag")
            if problem:
                self._cancel_unsatisfiable(c, problem)
                continue
            free_cpu, free_ram = self._free()
            if vcpus > free_cpu or ram > free_ram:
                continue  # waits for a running container to finish; smaller ones may still fit
            run = _Running(c["uuid"], vcpus, ram)
            self.running[c["uuid"]] = run
            run.task = asyncio.get_running_loop().create_task(self._run(run))

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

    async def _run(self, run: _Running) -> None:
        uuid = run.container_uuid
        workdir = self.work_root / uuid
        logdir = workdir / "log"
        token = None
        scratch: Scratch | None = None
        try:
            c = self.store.get(uuid)
            token = self.store.create("api_client_authorizations", {
                "owner_uuid": c["runtime_user_uuid"], "api_token": new_token_secret(),
                "scopes": c.get("runtime_auth_scopes") or ["all"], "expires_at": None,
                "_container_uuid": uuid}, by=self.store.system_user_uuid)
            c = self.lifecycle.update_container(uuid, {
                "state": "Locked", "locked_by_uuid": self.config.root_token_uuid, "auth_uuid": token["uuid"]})
            shutil.rmtree(workdir, ignore_errors=True)
            logdir.mkdir(parents=True)
            mount_error = crunch_run_mount_error(c)
            if mount_error:
                raise _Cancelled(f"While setting up mounts: {mount_error}")
            scratch = Scratch(workdir, tmp_capacity(c))
            await asyncio.to_thread(scratch.create)
            if scratch.note:
                _append(logdir / "crunch-run.txt", f"{timestamp()} {scratch.note}\n")
            spec = await asyncio.to_thread(self._prepare, c, workdir, logdir, token, scratch.root)
            mount_points = await asyncio.to_thread(_make_mount_points, spec["mounts"])
            if run.cancelled:
                raise _Cancelled()
            self.lifecycle.update_container(uuid, {"state": "Running"})
            run.proc = await self.runtime.start(spec)
            if run.cancelled:
                run.proc.kill()
            exit_code = await self._wait(run, _max_run_time(c))
            await asyncio.to_thread(_remove_mount_points, mount_points)
            lost = getattr(run.proc, "lost", False)
            finish = {"exit_code": exit_code}
            if run.cancelled:
                raise _Cancelled(run.cancel_reason)
            if lost:
                raise _Cancelled("container process was lost (killed outside the command)")
            # As crunch-run: a container with API access may have set its output itself.
            current = self.store.get(uuid) or c
            if (c.get("runtime_constraints") or {}).get("API") and current.get("output"):
                output_pdh = current["output"]
            else:
                linked = await asyncio.to_thread(_contain_output_links, c, spec, logdir)
                output_pdh = await asyncio.to_thread(self._save_output, c, spec, linked)
            log_pdh = await asyncio.to_thread(self._save_log_dir, c, logdir)
            finish.update({"state": "Complete", "output": output_pdh, "log": log_pdh, "progress": 1.0})
            self.lifecycle.update_container(uuid, finish)
        except _Cancelled as e:
            self._finish_cancelled(uuid, logdir, str(e) if e.args and e.args[0] else None)
        except Exception as e:  # infrastructure failure: the container is cancelled (and retried)
            logger.exception("running container %s failed", uuid)
            self._finish_cancelled(uuid, logdir, f"dispatcher error: {type(e).__name__}: {e}")
        finally:
            self.running.pop(uuid, None)
            if token is not None and self.store.get(token["uuid"]):
                self.store.update(token["uuid"], {"expires_at": timestamp()}, log=False)
            if scratch is not None:
                await asyncio.to_thread(scratch.release)
            shutil.rmtree(workdir, ignore_errors=True)
            self._wake.set()

    async def _wait(self, run: _Running, max_run_time: float) -> int:
        """The command's exit code. Past ``max_run_time`` seconds (0: no limit) the container is
        stopped the way a priority-0 cancel stops it, so it ends Cancelled, as crunch-run's do."""
        if max_run_time <= 0:
            return await run.proc.wait()
        try:
            # wait() shields the runtime's own task: timing out here leaves the container alone.
            return await asyncio.wait_for(run.proc.wait(), max_run_time)
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
        if c["state"] == "Locked" and changes["state"] == "Cancelled":
            pass
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
        rc = c.get("runtime_constraints") or {}
        image = c.get("container_image")
        spec = {
            "container_uuid": c["uuid"],
            "command": c["command"],
            "cwd": c.get("cwd") or ".",
            "environment": env,
            "mounts": mounts,
            "stdin": stdin_path,
            "stdout": _stream_target("stdout", all_mounts, mounts),
            "stderr": _stream_target("stderr", all_mounts, mounts),
            "stdout_log": str(logdir / "stdout.txt"),
            "stderr_log": str(logdir / "stderr.txt"),
            "crunch_log": str(logdir / "crunch-run.txt"),
            "image": image,
            "vcpus": int(rc.get("vcpus") or 1),
            "ram": int(rc.get("ram") or 0),
            "api": bool(rc.get("API")),
            **self._image_spec(image, workdir),
        }
        (logdir / "container.json").write_text(json.dumps(_public_container(c), indent=2, sort_keys=True))
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
            return _literal_file(m, workdir / f"file{n}"), False
        if kind == "keep":
            raise RuntimeError("mount kind 'keep' is not supported by this cluster")
        raise RuntimeError(f"unsupported mount kind {kind!r} at {path}")

    def _stdin_source(self, m: dict, workdir: Path, n: int) -> Path:
        """The host file the command reads as stdin: a file of a collection, or literal content."""
        if m.get("kind") in ("json", "text"):
            return _literal_file(m, workdir / f"file{n}")
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
        manifest = self._manifest_of(pdh)
        tmp = self.cache_root / f".{pdh}.{time.monotonic_ns()}"
        tmp.mkdir(parents=True)
        collection_files.materialize(manifest, self.blockstore, tmp)
        try:
            tmp.rename(target)
        except OSError:  # another container materialized it meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
        return target

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

    def _save_output(self, c: dict, spec: dict, linked: list[_Layer] = ()) -> str:
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
        for layer in [*_output_layers(c, spec["mounts"]), *linked]:
            _drop(tree, layer.rel)
            if not layer.exclude:
                _graft(tree, self._layer_tree(layer, keep))
        manifest = mf.render(_filtered(tree, keep))
        return store_manifest(self.store, manifest, name=f"output for {c['uuid']}",
                              owner_uuid=self.store.system_user_uuid)["portable_data_hash"]

    def _layer_tree(self, layer: _Layer, keep: Callable[[str], bool]) -> mf.ManifestTree:
        """One layer's files, at their place in the output (empty if its source is gone)."""
        if layer.pdh is not None:
            return _relocated(mf.parse(self._manifest_of(layer.pdh)), layer.coll_path, layer.rel)
        src = layer.host
        if src is None:
            return mf.ManifestTree(dirs=set())
        if src.is_dir():
            # Every directory is walked (glob patterns may keep something deep inside it); only
            # files the patterns keep are read. _filtered() then settles which directories stay.
            def include(rel: str) -> bool:
                return keep(_join(layer.rel, rel)) or (src / rel).is_dir()
            uploaded = collection_files.upload_directory(src, self.blockstore, include=include)
            return _relocated(mf.parse(uploaded), "", layer.rel)
        if src.is_file() and keep(layer.rel):
            return self._file_tree(src, layer.rel)
        return mf.ManifestTree(dirs=set())  # deleted, not a regular file, or left out by the glob

    def _file_tree(self, src: Path, rel: str) -> mf.ManifestTree:
        """A single host file stored in Keep, as a tree holding it at *rel*."""
        self.work_root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.work_root, prefix=".file-") as staging:
            (Path(staging) / "f").symlink_to(src)  # upload_directory follows links to files
            uploaded = collection_files.upload_directory(Path(staging), self.blockstore)
        return _relocated(mf.parse(uploaded), "f", rel)

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


@dataclass(frozen=True)
class _Layer:
    """Something the command saw at or below output_path: the output directory or a mount."""

    rel: str                      # where it is in the output ("" is the output directory itself)
    host: Path | None = None      # its files on the host, as the command left them
    pdh: str | None = None        # or a read-only collection, spliced from its manifest
    coll_path: str = ""           # ... the file or directory of it that was mounted
    exclude: bool = False         # covers what is below it, but is not itself output


def tmp_capacity(c: dict) -> int:
    """The scratch space a container asks for: the sum of its ``tmp`` mounts' capacities."""
    return sum(int(m.get("capacity") or 0) for m in (c.get("mounts") or {}).values()
               if isinstance(m, dict) and m.get("kind") == "tmp")


def _contain_output_links(c: dict, spec: dict, logdir: Path) -> list[_Layer]:
    """Make the symlinks the command left in its writable mounts safe to follow (see
    :mod:`output_links`): never read a host file through a link that meant a path in the image.
    Returns the layers for links into read-only collections, spliced by reference."""
    mounts = {m["path"]: m["source"] for m in spec["mounts"]}
    writable = {m["path"]: m["source"] for m in spec["mounts"] if m["writable"]}
    secret = {p for p in (c.get("secret_mounts") or {}) if p.startswith("/")}
    collections = {_norm(p): m for p, m in (c.get("mounts") or {}).items()
                   if p.startswith("/") and m.get("kind") == "collection" and not m.get("writable")
                   and m.get("portable_data_hash")}
    out = _norm(c["output_path"])
    notes, refs = output_links.contain_links(writable, mounts, secret, set(collections), out)
    for note in notes:
        _append(logdir / "crunch-run.txt", f"{timestamp()} {note}\n")
    layers = []
    for link, target in sorted(refs.items()):
        root = max((p for p in collections if target == p or target.startswith(p.rstrip("/") + "/")), key=len)
        m = collections[root]
        coll_path = _join((m.get("path") or "").strip("/"), target[len(root):].strip("/"))
        layers.append(_Layer(link[len(out):].strip("/"), pdh=m["portable_data_hash"], coll_path=coll_path))
    return layers


def crunch_run_mount_error(c: dict) -> str | None:
    """The first mount crunch-run's SetupMounts refuses, in its words (None: all acceptable).

    Arvados enforces these in crunch-run, not in the API server: the request is accepted and
    its container ends Cancelled with the reason in its log, so we do the same.
    """
    out = c.get("output_path") or ""
    mounts = {**(c.get("mounts") or {}), **(c.get("secret_mounts") or {})}
    for bind in sorted(mounts):
        m = mounts[bind] or {}
        kind = m.get("kind")
        under_output = bind.startswith(out + "/") and bind != out + "/"
        if under_output and kind not in ("collection", "text", "json"):
            return ("only mount points of kind 'collection', 'text' or 'json' are supported underneath "
                    f"the output_path for {bind!r}, was {kind!r}")
        if kind == "collection" and bind != "stdin" and m.get("portable_data_hash") and m.get("writable") \
                and not bind.startswith(out + "/"):
            return "can never write to a collection specified by portable data hash"
    return None


def _max_run_time(c: dict) -> float:
    """``scheduling_parameters.max_run_time`` in seconds; 0 (or anything unusable) is no limit."""
    value = (c.get("scheduling_parameters") or {}).get("max_run_time") or 0
    try:
        return max(float(value), 0.0)
    except (TypeError, ValueError):
        return 0.0


def _literal_file(m: dict, dest: Path) -> Path:
    """Write a ``json`` or ``text`` mount's content to *dest* (the file the command will see)."""
    content = m.get("content")
    dest.write_text(json.dumps(content) if m.get("kind") == "json" else str(content or ""))
    return dest


def _stream_target(name: str, all_mounts: dict, mounts: list[dict]) -> str | None:
    """The host file a ``stdout``/``stderr`` mount sends the stream to, its directory created.

    The path must be inside a writable mount (crunch-run requires output_path): writing through
    a read-only mount's host directory would change a shared collection cache.
    """
    m = all_mounts.get(name)
    if m is None:
        return None
    target = str(m.get("path") or "")
    outer = _covering_mount(target, mounts)
    if outer is None or not outer["writable"] or _norm(outer["path"]) == _norm(target):
        raise RuntimeError(f"{name} mount path {target!r} must be a file under a writable mount "
                           "(usually output_path)")
    host = _host_path(target, {outer["path"]: outer["source"]})
    assert host is not None
    Path(host).parent.mkdir(parents=True, exist_ok=True)
    return host


def _norm(path: str) -> str:
    return path.rstrip("/") or "/"


def _covering_mount(container_path: str, mounts: list[dict]) -> dict | None:
    """The mount whose target is the longest prefix of *container_path* (what the command sees)."""
    best = None
    for m in mounts:
        p = _norm(m["path"])
        if container_path == p or container_path.startswith(p.rstrip("/") + "/"):
            if best is None or len(p) > len(_norm(best["path"])):
                best = m
    return best


def _make_mount_points(mounts: list[dict]) -> list[tuple[Path, bool]]:
    """Create the mount points of mounts nested in a writable mount, in that mount's host
    directory (``inputs/a.txt`` in the output tmp directory for ``/var/spool/cwl/inputs/a.txt``).

    Why here and not in the runtime: both runtimes then find a target of the right type (file or
    directory) to bind over, whatever the engine would do with a missing one, and we know which
    ones to remove afterwards so they do not show up in the output as stray empty entries.
    Returns what was created, outermost first.
    """
    created: list[tuple[Path, bool]] = []
    for m in sorted(mounts, key=lambda m: _norm(m["path"]).count("/")):
        path = _norm(m["path"])
        outer = _covering_mount(path, [o for o in mounts if _norm(o["path"]) != path])
        if outer is None or not outer["writable"] or not Path(outer["source"]).is_dir():
            continue  # nothing is ever created inside a read-only (shared, cached) source
        parts = path[len(_norm(outer["path"])):].strip("/").split("/")
        is_dir = Path(m["source"]).is_dir()
        host = Path(outer["source"])
        for i, part in enumerate(parts):
            host = host / part
            last_is_file = i == len(parts) - 1 and not is_dir
            if os.path.lexists(host):
                continue
            if last_is_file:
                host.touch()
            else:
                host.mkdir()
            created.append((host, not last_is_file))
    return created


def _remove_mount_points(created: list[tuple[Path, bool]]) -> None:
    """Remove the mount points :func:`_make_mount_points` made, unless the command put something
    there (a directory it wrote into is output)."""
    for host, is_dir in reversed(created):
        try:
            if is_dir:
                host.rmdir()
            elif host.is_file() and not host.is_symlink() and host.stat().st_size == 0:
                host.unlink()
        except OSError:
            pass


def _output_layers(c: dict, mounts: list[dict]) -> list[_Layer]:
    """The output directory and the mounts below output_path, outermost first.

    Secret mounts and mounts marked ``exclude_from_output`` still hide what is below them, but
    add nothing: a secret must not end up in a collection.
    """
    out = _norm(c["output_path"])
    declared = {_norm(p): m for p, m in (c.get("mounts") or {}).items() if p.startswith("/")}
    secret = {_norm(p): m for p, m in (c.get("secret_mounts") or {}).items() if p.startswith("/")}
    declared.update(secret)
    host_of = {_norm(m["path"]): Path(m["source"]) for m in mounts}
    layers: list[_Layer] = []
    root = _covering_mount(out, [{"path": p} for p in declared])
    if root is not None:
        rest = out[len(_norm(root["path"])):].strip("/")
        layers.append(_layer(declared[_norm(root["path"])], "", rest, host_of.get(_norm(root["path"]))))
    below = out.rstrip("/") + "/"
    for p in sorted((p for p in declared if p.startswith(below)), key=lambda p: (p.count("/"), p)):
        m = declared[p]
        excluded = p in secret or bool(m.get("exclude_from_output"))
        layers.append(_layer(m, p[len(below):], "", host_of.get(p), exclude=excluded))
    return layers


def _layer(m: dict, rel: str, rest: str, host: Path | None, exclude: bool = False) -> _Layer:
    """The layer a mount adds at *rel*; *rest* is the part of the mount output_path names."""
    if m.get("kind") == "collection" and not m.get("writable") and m.get("portable_data_hash"):
        coll_path = _join((m.get("path") or "").strip("/"), rest)
        return _Layer(rel, pdh=m["portable_data_hash"], coll_path=coll_path, exclude=exclude)
    return _Layer(rel, host=host / rest if host is not None and rest else host, exclude=exclude)


def _join(a: str, b: str) -> str:
    return f"{a}/{b}" if a and b else a or b


def _relocated(tree: mf.ManifestTree, src: str, dest: str) -> mf.ManifestTree:
    """The file or directory at *src* in *tree* ("" is all of it), moved to *dest*."""
    out = mf.ManifestTree(dirs=set())
    if src in tree.files:
        out.files[dest] = tree.files[src]
        return out
    if src not in tree.dirs:
        return out
    prefix = src + "/" if src else ""
    for path, segments in tree.files.items():
        if path.startswith(prefix):
            out.files[_join(dest, path[len(prefix):])] = segments
    for d in tree.dirs:
        if d == src or d.startswith(prefix):
            out.dirs.add(_join(dest, d[len(prefix):]))
    return out


def _drop(tree: mf.ManifestTree, rel: str) -> None:
    """Remove what a mount at *rel* covered: the entry there, everything below it, and any file
    standing where one of its parent directories must be."""
    if not rel:
        tree.files.clear()
        tree.dirs = {""}
        return
    below = rel + "/"
    for path in [p for p in tree.files if p == rel or p.startswith(below)]:
        del tree.files[path]
    parts = rel.split("/")
    for i in range(1, len(parts)):
        tree.files.pop("/".join(parts[:i]), None)
    tree.dirs = {d for d in tree.dirs if d != rel and not d.startswith(below)}


def _graft(tree: mf.ManifestTree, part: mf.ManifestTree) -> None:
    """Add a layer's files and directories (already at their output paths) to *tree*."""
    tree.files.update(part.files)
    for path in list(part.dirs) + [p.rpartition("/")[0] for p in part.files]:
        while path not in tree.dirs:
            tree.dirs.add(path)
            path = path.rpartition("/")[0]


def _filtered(tree: mf.ManifestTree, keep: Callable[[str], bool]) -> mf.ManifestTree:
    """Apply ``output_glob``: kept files, kept directories, and the directories holding them."""
    files = {p: s for p, s in tree.files.items() if keep(p)}
    out = mf.ManifestTree(files=files)
    _graft(out, mf.ManifestTree(dirs={d for d in tree.dirs if d and keep(d)}))
    _graft(out, mf.ManifestTree(files=files, dirs=set()))
    return out


def _host_path(container_path: str, host_of: dict[str, str]) -> str | None:
    """Where a path inside the container lives on the host (longest mount prefix wins)."""
    best = None
    for mpath, src in host_of.items():
        if container_path == mpath or container_path.startswith(mpath.rstrip("/") + "/"):
            if best is None or len(mpath) > len(best[0]):
                best = (mpath, src)
    if best is None:
        return None
    rest = container_path[len(best[0]):].lstrip("/")
    return str(Path(best[1]) / rest) if rest else best[1]


def _append(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(text)


def _public_container(c: dict) -> dict:
    return {k: v for k, v in c.items() if k not in ("secret_mounts", "runtime_token")}
