"""Runs queued containers on this machine, within the cluster's cores and RAM (crunch's job).

The dispatcher does what ``arvados-dispatch-*`` plus ``crunch-run`` do on a real cluster: it picks
``Queued`` containers by priority, locks them, presents their mounts at the paths they name,
runs the command through a :mod:`runtime`, then saves the output and log collections and
completes (or cancels) the container. It is woken by the store's change events, so a newly
queued container starts without any polling delay.
"""
from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import collection_files, output_glob
from .blockstore import BlockStore
from .collections import store_manifest
from .containers import Lifecycle
from .resources import new_token_secret
from .runtime import Runtime
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
        store.add_listener(self._on_event)

    # -- scheduling ---------------------------------------------------------------------------

    def _on_event(self, log: dict) -> None:
        if table_of(log.get("object_uuid", "")) in ("containers", "container_requests"):
            self._wake.set()

    async def run(self) -> None:
        """The scheduling loop; ends when :meth:`stop` is called."""
        self._recover()
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

    def _recover(self) -> None:
        """After a restart, containers that were Locked/Running when we stopped cannot continue."""
        for c in list(self.store.records("containers")):
            if c["state"] == "Locked":
                self.lifecycle.update_container(c["uuid"], {"state": "Queued", "locked_by_uuid": None})
            elif c["state"] == "Running":
                self.lifecycle.update_container(c["uuid"], {
                    "state": "Cancelled",
                    "runtime_status": {"error": "container was running when the cluster stopped"}})

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
        queued = sorted((c for c in self.store.records("containers")
                         if c["state"] == "Queued" and (c.get("priority") or 0) > 0),
                        key=lambda c: (-c["priority"], c["created_at"]))
        for c in queued:
            rc = c.get("runtime_constraints") or {}
            vcpus, ram = int(rc.get("vcpus") or 1), int(rc.get("ram") or 0)
            problem = self._unsatisfiable(rc)
            if problem:
                self._cancel_unsatisfiable(c, problem)
                continue
            free_cpu, free_ram = self._free()
            if vcpus > free_cpu or ram > free_ram:
                continue  # waits for a running container to finish; smaller ones may still fit
            run = _Running(c["uuid"], vcpus, ram)
            self.running[c["uuid"]] = run
            run.task = asyncio.get_running_loop().create_task(self._run(run))

    def _unsatisfiable(self, rc: dict) -> str | None:
        vcpus, ram = int(rc.get("vcpus") or 1), int(rc.get("ram") or 0)
        if vcpus > self.config.cores:
            return (f"requested vcpus {vcpus} exceeds this cluster's {self.config.cores} cores; "
                    "ask for fewer cores or start the cluster with more (toil-arvados cluster up --cores N)")
        if ram > self.config.ram:
            return (f"requested ram {ram} bytes exceeds this cluster's {self.config.ram} bytes; "
                    "ask for less memory or start the cluster with more (toil-arvados cluster up --ram SIZE)")
        gpu = rc.get("gpu") or rc.get("cuda") or {}
        if int(gpu.get("device_count") or 0) > 0:
            return "requested GPUs, but this cluster has none"
        return None

    def _cancel_unsatisfiable(self, c: dict, problem: str) -> None:
        logger.warning("container %s cannot run here: %s", c["uuid"], problem)
        text = f"{timestamp()} Requirements cannot be satisfied: {problem}\n"
        log_pdh = self._save_text_log({"crunch-run.txt": text}, c)
        self.lifecycle.update_container(c["uuid"], {
            "state": "Cancelled", "log": log_pdh,
            "runtime_status": {"error": "Requirements cannot be satisfied", "errorDetail": problem}})

    # -- running one container ---------------------------------------------------------------

    async def _run(self, run: _Running) -> None:
        uuid = run.container_uuid
        workdir = self.work_root / uuid
        logdir = workdir / "log"
        token = None
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
            spec = await asyncio.to_thread(self._prepare, c, workdir, logdir, token)
            if run.cancelled:
                raise _Cancelled()
            self.lifecycle.update_container(uuid, {"state": "Running"})
            run.proc = await self.runtime.start(spec)
            if run.cancelled:
                run.proc.kill()
            exit_code = await run.proc.wait()
            lost = getattr(run.proc, "lost", False)
            finish = {"exit_code": exit_code}
            if run.cancelled or lost:
                raise _Cancelled("container process was lost (killed outside the command)" if lost and not run.cancelled
                                 else None)
            # As crunch-run: a container with API access may have set its output itself.
            current = self.store.get(uuid) or c
            if (c.get("runtime_constraints") or {}).get("API") and current.get("output"):
                output_pdh = current["output"]
            else:
                output_pdh = await asyncio.to_thread(self._save_output, c, spec)
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
            shutil.rmtree(workdir, ignore_errors=True)
            self._wake.set()

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

    def _prepare(self, c: dict, workdir: Path, logdir: Path, token: dict) -> dict:
        """Turn the container's mounts into host paths and write the run spec for the runtime."""
        mounts: list[dict] = []
        host_of: dict[str, str] = {}
        stdout_path = stdin_path = None
        all_mounts = dict(c.get("mounts") or {})
        all_mounts.update(c.get("secret_mounts") or {})
        for n, (path, m) in enumerate(sorted(all_mounts.items())):
            kind = m.get("kind")
            if path == "stdout":
                continue
            if path == "stdin":
                stdin_path = str(self._collection_source(m, workdir, n))
                continue
            if kind == "tmp":
                src = workdir / f"tmp{n}"
                src.mkdir()
                writable = True
            elif kind == "collection":
                src = self._collection_source(m, workdir, n)
                writable = bool(m.get("writable"))
            elif kind in ("json", "text"):
                src = workdir / f"file{n}"
                content = m.get("content")
                src.write_text(json.dumps(content) if kind == "json" else str(content or ""))
                writable = False
            elif kind == "keep":
                raise RuntimeError("mount kind 'keep' is not supported by this cluster")
            else:
                raise RuntimeError(f"unsupported mount kind {kind!r} at {path}")
            mounts.append({"path": path, "source": str(src), "writable": writable})
            host_of[path] = str(src)
        if "stdout" in all_mounts:
            stdout_path = _host_path(all_mounts["stdout"].get("path", ""), host_of)
            if stdout_path is None:
                raise RuntimeError("stdout mount path must be under a writable mount (usually output_path)")
            Path(stdout_path).parent.mkdir(parents=True, exist_ok=True)
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
            "stdout": stdout_path,
            "stdout_log": str(logdir / "stdout.txt"),
            "stderr_log": str(logdir / "stderr.txt"),
            "crunch_log": str(logdir / "crunch-run.txt"),
            "image": image,
            "vcpus": int(rc.get("vcpus") or 1),
            "ram": int(rc.get("ram") or 0),
            "api": bool(rc.get("API")),
            **self._image_spec(image),
        }
        (logdir / "container.json").write_text(json.dumps(_public_container(c), indent=2, sort_keys=True))
        return spec

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
        manifest = next((c["manifest_text"] for c in self.store.records("collections")
                         if c.get("portable_data_hash") == pdh), None)
        if manifest is None:
            raise RuntimeError(f"collection {pdh} not found")
        tmp = self.cache_root / f".{pdh}.{time.monotonic_ns()}"
        tmp.mkdir(parents=True)
        collection_files.materialize(manifest, self.blockstore, tmp)
        try:
            tmp.rename(target)
        except OSError:  # another container materialized it meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
        return target

    def _image_spec(self, pdh: str | None) -> dict:
        """What the runtime needs of the image: whether it is a stand-in (see images.py), and,
        for a runtime that loads images (Docker), the host path of its ``docker save`` tarball."""
        from .images import STAND_IN_PROPERTY

        stand_in = None
        # A snapshot (list() copies atomically): this runs in a thread while the loop adds records.
        for c in list(self.store.records("collections")) if pdh else ():
            props = c.get("properties") or {}
            if c.get("portable_data_hash") == pdh and STAND_IN_PROPERTY in props:
                stand_in = str(props[STAND_IN_PROPERTY] or "stand-in")
                break
        tarball = None
        if pdh and stand_in is None and getattr(self.runtime, "loads_images", False):
            tars = sorted(self._materialized(pdh).glob("*.tar"))
            tarball = str(tars[0]) if tars else None
        return {"image_stand_in": stand_in, "image_tarball": tarball}

    # -- output and logs ---------------------------------------------------------------------

    def _save_output(self, c: dict, spec: dict) -> str:
        host = _host_path(c["output_path"], {m["path"]: m["source"] for m in spec["mounts"]})
        if host is None or not Path(host).exists():
            manifest = ""
        else:
            manifest = collection_files.upload_directory(Path(host), self.blockstore,
                                                         include=output_glob.matcher(c.get("output_glob")))
        return store_manifest(self.store, manifest, name=f"output for {c['uuid']}",
                              owner_uuid=self.store.system_user_uuid)["portable_data_hash"]

    def _save_log_dir(self, c: dict, logdir: Path) -> str:
        manifest = collection_files.upload_directory(logdir, self.blockstore) if logdir.exists() else ""
        return store_manifest(self.store, manifest, name=f"logs for {c['uuid']}",
                              owner_uuid=self.store.system_user_uuid)["portable_data_hash"]

    def _save_text_log(self, files: dict[str, str], c: dict) -> str:
        tmp = self.work_root / f".log-{c['uuid']}-{time.monotonic_ns()}"
        tmp.mkdir(parents=True)
        try:
            for name, text in files.items():
                (tmp / name).write_text(text)
            return self._save_log_dir(c, tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


class _Cancelled(Exception):
    pass


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
