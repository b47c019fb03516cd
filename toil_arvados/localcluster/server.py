"""The cluster process: API server (HTTPS + websocket), Keep and the dispatcher in one event loop.

Run as ``python -m toil_arvados.localcluster.server --state-dir DIR``; ``toil-arvados cluster up``
starts it in the background and waits until it answers.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from . import statelock
from .api import MAX_REQUEST_SIZE, ApiError, ApiServer
from .auth import Authorizer
from .blockstore import BlockStore
from .bootstrap import bootstrap, bootstrap_sharing
from .collections import Collections
from .config import ClusterConfig, exported_instance_types
from .containers import ContainerRequests, Containers, Lifecycle
from .control import KEEP_CONTAINERS_SIGNAL
from .discovery import discovery_document
from .dispatcher import Dispatcher
from .eventbus import EventBus
from .keepstore import make_keep_app
from .resources import ApiClientAuthorizations, Groups, KeepServices, Links, Logs, Users, Workflows
from .runtime.selection import make_runtime
from .store import Store
from .tls import CONTAINER_CA_PATH, bundle_path, ensure_certificates, server_context
from .trash_sweep import sweep

logger = logging.getLogger(__name__)
#: Seconds between trash sweeps (Collections.TrashSweepInterval, Arvados' default).
TRASH_SWEEP_INTERVAL = 60


def exported_config(cfg: ClusterConfig) -> dict[str, Any]:
    """The subset of Arvados' exported cluster config (``GET /arvados/v1/config``) clients read."""
    api_url = f"https://{cfg.api_host}/"
    return {
        "ClusterID": cfg.cluster_id,
        "API": {"MaxItemsPerResponse": 1000, "MaxRequestSize": MAX_REQUEST_SIZE,
                "AsyncPermissionsUpdateInterval": "20s",
                # Frozen projects (frozen.py): Arvados' defaults, which this cluster enforces.
                "FreezeProjectRequiresDescription": False, "FreezeProjectRequiresProperties": {},
                "UnfreezeProjectRequiresAdmin": False},
        "Collections": {"DefaultReplication": 1, "BlobSigningTTL": f"{cfg.blob_signature_ttl}s",
                        "CollectionVersioning": False, "TrashSweepInterval": f"{TRASH_SWEEP_INTERVAL}s",
                        "DefaultTrashLifetime": "336h", "ForwardSlashNameSubstitution": "",
                        "BlobSigning": True},
        # ReserveExtraRAM & co. let clients size requests as dispatch-cloud fits them.
        "Containers": {"DefaultKeepCacheRAM": 0, "MaxRetryAttempts": cfg.container_count_max,
                       "ReserveExtraRAM": cfg.reserve_extra_ram, "MaximumPriceFactor": 1.5,
                       "AlwaysUsePreemptibleInstances": False,
                       "RuntimeEngine": "namespace", "SupportedDockerImageFormats": {"v2": {}},
                       "LocalKeepBlobBuffersPerVCPU": 0},
        "StorageClasses": cfg.storage_class_config(),
        "InstanceTypes": exported_instance_types(cfg.instance_types()),
        "Services": {"Controller": {"ExternalURL": api_url},
                     "Websocket": {"ExternalURL": f"wss://{cfg.api_host}/websocket"},
                     "Keepstore": {"InternalURLs": {f"http://{cfg.host}:{cfg.keep_port}/": {}}},
                     "Workbench1": {"ExternalURL": ""}, "Workbench2": {"ExternalURL": ""},
                     "WebDAV": {"ExternalURL": ""}, "WebDAVDownload": {"ExternalURL": ""}},
        "Users": {"AnonymousUserToken": ""},
        "Workbench": {"SiteName": "toil-arvados local cluster"},
        "Login": {},
    }


class Cluster:
    """Everything one ``cluster up`` runs, wired together."""

    def __init__(self, cfg: ClusterConfig) -> None:
        self.cfg = cfg
        state = cfg.state_path
        state.mkdir(parents=True, exist_ok=True)
        self.store = Store(state / "arvados.sqlite3", cfg.cluster_id, cfg.system_user_uuid)
        bootstrap(self.store, cfg)
        self.authz = Authorizer(self.store)
        self.blockstore = BlockStore(state / "keep")
        bootstrap_sharing(self.store)
        self.lifecycle = Lifecycle(self.store, cfg, self.authz)
        self.api = ApiServer(self.store, self.authz, self._discovery)
        self.api.config = cfg
        self.api.lifecycle = self.lifecycle
        for resource in (Users, ApiClientAuthorizations, Groups, Links, Logs, KeepServices, Workflows,
                         Collections, ContainerRequests, Containers):
            self.api.add(resource(self.api))
        self.api.route("GET", "config", self._config, auth=False)
        self.api.route("GET", "vocabulary", self._vocabulary, auth=False)
        self.api.route("POST", "sys/trash_sweep", self._trash_sweep)
        self.eventbus = EventBus(self.store, self.authz.authenticate, self.authz.can_read_event)
        # As crunch-run: the API host, and the CA bundle at /etc/arvados/ca-certificates.crt.
        self.dispatcher = Dispatcher(self.store, self.lifecycle, cfg, self.blockstore,
                                     make_runtime(cfg.docker_host, owner=cfg.state_dir),
                                     api_env={"ARVADOS_API_HOST": cfg.api_host},
                                     api_files={CONTAINER_CA_PATH: bundle_path(cfg.state_path)})
        self._runners: list[web.AppRunner] = []
        self._dispatch_task: asyncio.Task | None = None
        self._sweep_task: asyncio.Task | None = None
        self.recover()

    def recover(self) -> None:
        """Settle what a crash of the last cluster process left half done, before serving: no
        client ever sees a container Running that nothing runs, or a live token for it."""
        self.dispatcher.recover()
        if self.blockstore.remove_partial_writes():
            logger.info("recovery: removed the partial blocks of interrupted Keep PUTs")
        for line in self.lifecycle.repair():
            logger.info("recovery: %s", line)

    def _discovery(self, http: web.Request) -> dict:
        return discovery_document(
            f"https://{self.cfg.api_host}/", f"wss://{self.cfg.api_host}/websocket",
            uuid_prefix=self.cfg.cluster_id, blob_signature_ttl=self.cfg.blob_signature_ttl)

    async def _config(self, req: Any) -> dict:
        config = exported_config(self.cfg)
        # Where containers run right now: Docker when an engine answers, else namespaces
        # (crunch-run's "singularity" plays the same part on a real cluster).
        docker = await asyncio.to_thread(self.dispatcher.runtime.docker_available)
        config["Containers"]["RuntimeEngine"] = "docker" if docker else "namespace"
        return config

    async def _vocabulary(self, req: Any) -> dict:
        return {"strict_tags": False, "tags": {}}

    async def _trash_sweep(self, req: Any) -> dict:
        """``POST sys/trash_sweep``: an admin runs the sweep at once (Arvados' SysController)."""
        if not req.user.is_admin:
            raise ApiError(403, "Forbidden: sys/trash_sweep is for admins")
        sweep(self.store, time.time())
        return {}

    async def _sweep_trash(self) -> None:
        """The sweep every TrashSweepInterval, as Arvados' controller runs it."""
        while True:
            await asyncio.sleep(TRASH_SWEEP_INTERVAL)
            try:
                sweep(self.store, time.time())
            except Exception:  # a bad record must not stop the cluster; the next sweep retries
                logger.exception("trash sweep failed")

    async def start(self) -> None:
        certificates = ensure_certificates(self.cfg.state_path, self.cfg.host)
        api_app = self.api.make_app()
        self.eventbus.route(api_app, "/websocket")
        api_runner = web.AppRunner(api_app, access_log=None)
        await api_runner.setup()
        # reuse_address: a restart binds the recorded ports at once, though connections of the
        # previous process linger in TIME_WAIT (the address clients hold stays valid).
        await web.TCPSite(api_runner, self.cfg.host, self.cfg.api_port, reuse_address=True,
                          ssl_context=server_context(certificates)).start()
        keep_app = make_keep_app(self.blockstore, authenticate=self.authz.user_for_token,
                                 signing_key=self.cfg.blob_signing_key, ttl_seconds=self.cfg.blob_signature_ttl)
        keep_runner = web.AppRunner(keep_app, access_log=None)
        await keep_runner.setup()
        await web.TCPSite(keep_runner, self.cfg.host, self.cfg.keep_port, reuse_address=True).start()
        self._runners = [api_runner, keep_runner]
        self._dispatch_task = asyncio.get_running_loop().create_task(self.dispatcher.run())
        self._sweep_task = asyncio.get_running_loop().create_task(self._sweep_trash())
        logger.info("cluster %s serving https://%s (Keep on port %d)", self.cfg.cluster_id, self.cfg.api_host,
                    self.cfg.keep_port)

    async def stop(self, keep_containers: bool = False) -> None:
        await self.dispatcher.stop(keep_running=keep_containers)
        for task in (self._dispatch_task, self._sweep_task):
            if task:
                task.cancel()
        for runner in self._runners:
            await runner.cleanup()
        self.store.close()


async def serve(cfg: ClusterConfig) -> None:
    cluster = Cluster(cfg)
    await cluster.start()
    stop = asyncio.Event()
    keep_containers = False

    def leave_containers_running() -> None:
        nonlocal keep_containers
        keep_containers = True
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # `cluster down --keep-containers`: the services stop, running containers do not.
    loop.add_signal_handler(KEEP_CONTAINERS_SIGNAL, leave_containers_running)
    await stop.wait()
    logger.info("stopping cluster%s", " (running containers keep running)" if keep_containers else "")
    await cluster.stop(keep_containers)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the local Arvados-compatible cluster in the foreground.")
    parser.add_argument("--state-dir", required=True, type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    state_dir = args.state_dir.resolve()
    try:
        lock = statelock.acquire(state_dir)  # held until this process ends, however it ends
    except statelock.StateDirLocked as e:
        print(f"toil-arvados cluster server: {e}", file=sys.stderr)
        return 1
    try:
        asyncio.run(serve(ClusterConfig.load(state_dir)))
    finally:
        (state_dir / statelock.PID_FILE).unlink(missing_ok=True)
        os.close(lock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
