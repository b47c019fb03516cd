"""Starting, stopping and finding the local cluster process (``toil-arvados cluster ...``).

``up`` returns only once the API answers, by polling it (no fixed sleeps); ``down`` waits until the
process has exited so a following ``up`` on the same state directory is safe.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import shlex
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from . import statelock, tls
from .config import ClusterConfig, free_port, register


#: The signal that stops the cluster process's services but not its running containers.
KEEP_CONTAINERS_SIGNAL = signal.SIGUSR1


class ClusterError(Exception):
    """A problem starting or reaching the cluster, phrased for the user."""


def _pid(state_dir: Path) -> int | None:
    """The pid of the cluster process serving ``state_dir`` (0 if unknown), None if none does:
    whoever holds the state directory's lock (a pid file alone survives a ``kill -9``)."""
    return statelock.holder(state_dir)


def _port_busy(host: str, port: int) -> bool:
    """True if something listens on ``port``. With SO_REUSEADDR, as the servers bind: a port
    whose last connections linger in TIME_WAIT after ``down`` is free for them, right away."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def answers(cfg: ClusterConfig, timeout: float = 2.0) -> bool:
    """True when the cluster's API server serves its health check."""
    return host_answers(cfg.api_host, timeout)


def stats(cfg: ClusterConfig) -> dict:
    """The cluster's own counters (``/_health/stats``: API calls in all, by token and by
    ``resource.method``), read with its root token; the read is not counted."""
    ctx = tls.client_context(cfg.state_path)
    req = urllib.request.Request(f"https://{cfg.api_host}/_health/stats",
                                 headers={"Authorization": f"Bearer {cfg.root_token}"})
    with urllib.request.urlopen(req, context=ctx) as r:
        return json.load(r)


def host_answers(api_host: str, timeout: float = 5.0) -> bool:
    """True when an API server answers at ``api_host`` (host:port) within ``timeout`` seconds;
    any HTTP answer counts (a real Arvados may want a token for its health check)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(f"https://{api_host}/_health/ping", timeout=timeout, context=ctx) as r:
            return r.status == 200
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False


def is_running(state_dir: Path) -> bool:
    return _pid(Path(state_dir)) is not None


def up(state_dir: Path, *, cores: int | None = None, ram: int | None = None, port: int | None = None,
       timeout: float = 120.0, docker_host: str | None = None, if_running: str = "reuse",
       preemptible_instances: bool | None = None, storage_classes: list[str] | None = None) -> ClusterConfig:
    """Start the cluster in the background and wait until it answers.

    A cluster already serving ``state_dir`` is returned as it is (``if_running="reuse"``: the
    demo, benchmarks) or refused (``"refuse"``: ``cluster up``). A restarted cluster comes back
    at the address it had (the ports recorded in its state directory), so clients keep working;
    only a port another program took meanwhile is a one-line error.
    """
    state_dir = Path(state_dir).resolve()
    holder = _pid(state_dir)
    if holder is not None:
        cfg = ClusterConfig.load(state_dir)
        if if_running == "reuse" and answers(cfg):
            return cfg
        who = f"process {holder}" if holder else "another process"
        state = "is already running at https://" + cfg.api_host if answers(cfg) else \
            "is held by " + who + ", which does not answer"
        raise ClusterError(f"the cluster in {state_dir} {state}: stop it with "
                           f"`toil-arvados cluster down --state-dir {state_dir}` first")
    fresh = not (state_dir / "cluster.json").exists()
    cfg = ClusterConfig.load_or_create(state_dir, cores=cores, ram=ram, api_port=port, docker_host=docker_host,
                                       preemptible_instances=preemptible_instances, storage_classes=storage_classes)
    if _port_busy(cfg.host, cfg.api_port):
        if port is not None:
            raise ClusterError(f"port {port} on {cfg.host} is in use: choose another with --port, or omit it")
        if not fresh:
            raise ClusterError(f"port {cfg.api_port} on {cfg.host}, this cluster's address, is in use by "
                               "another program: stop it, or move the cluster with --port")
        cfg.api_port = free_port(cfg.host)
    if _port_busy(cfg.host, cfg.keep_port):
        # Clients find Keep through the API (keep_services), so Keep may move.
        cfg.keep_port = free_port(cfg.host)
    cfg.save()
    register(cfg)
    log = open(state_dir / "server.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "toil_arvados.localcluster.server", "--state-dir", str(state_dir)],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, close_fds=True,
    )
    log.close()
    deadline = time.monotonic() + timeout
    delay = 0.02
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ClusterError(f"the cluster exited at start (code {proc.returncode}); "
                               f"see {state_dir / 'server.log'}: {_tail(state_dir / 'server.log', 1)}")
        if answers(cfg, timeout=1.0):
            return cfg
        time.sleep(delay)  # polling interval between readiness checks, not a readiness guess
        delay = min(delay * 2, 0.25)
    proc.terminate()
    raise ClusterError(f"the cluster did not answer within {timeout:.0f}s; see {state_dir / 'server.log'}")


def down(state_dir: Path, timeout: float = 60.0, keep_containers: bool = False) -> bool:
    """Stop the cluster; True if it was running. State stays on disk for the next ``up``, which
    may follow at once: this returns only once the process has exited (its lock is free).

    Running containers are cancelled (their requests retried at the next ``up``), unless
    *keep_containers*: then only the services stop (API, Keep, websocket, dispatcher), as when a
    real cluster's services restart, and containers the namespace runtime runs keep running;
    the next ``up`` adopts them and finishes them."""
    state_dir = Path(state_dir).resolve()
    pid = _pid(state_dir)
    if pid is None:
        return False
    if not pid:
        raise ClusterError(f"the cluster in {state_dir} is held by a process whose pid is not recorded; "
                           f"stop it yourself (see `fuser {state_dir / statelock.LOCK_FILE}`)")
    os.kill(pid, KEEP_CONTAINERS_SIGNAL if keep_containers else signal.SIGTERM)
    deadline = time.monotonic() + timeout
    delay = 0.02
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(delay)
        delay = min(delay * 2, 0.25)
    os.kill(pid, signal.SIGKILL)
    while _alive(pid):
        time.sleep(delay)
    return True


def _alive(pid: int) -> bool:
    try:
        waited, _status = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by a parent that is not us) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def env_lines(cfg: ClusterConfig) -> list[str]:
    return [f"export {k}={shlex.quote(v)}" for k, v in client_env(cfg).items()]


def client_env(cfg: ClusterConfig) -> dict[str, str]:
    """What a client of the cluster needs: its address, the root token, and the CA bundle that
    makes its certificate trusted (``SSL_CERT_FILE``: the host's CAs plus the cluster's), so TLS
    is verified as on a real cluster, never switched off with ``ARVADOS_API_HOST_INSECURE``."""
    return {"ARVADOS_API_HOST": cfg.api_host, "ARVADOS_API_TOKEN": cfg.root_token,
            "SSL_CERT_FILE": str(tls.bundle_path(cfg.state_path))}


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextmanager
def running_cluster(state_dir: Path, **options: int) -> Iterator[ClusterConfig]:
    """A cluster for the duration of a ``with`` block (tests, the demo, benchmarks)."""
    cfg = up(state_dir, **options)
    try:
        yield cfg
    finally:
        down(state_dir)
