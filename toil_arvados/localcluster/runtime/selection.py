"""Choosing the runtime for each container: Docker when an engine answers, namespaces otherwise.

Both run the container in its image and nothing else: Docker loads the image's ``docker save``
archive, the namespace runtime unpacks its layers (once per layer) and enters them with its own
mount and PID namespaces, as crunch-run does with Singularity.  The container's crunch log says
which runtime ran it and why.  The dispatcher gives both the same run spec, with::

    image_tarball   str   host path of the image collection's ``<image id>.tar``
    rootfs_scratch  str   empty host directory for the container's writable layer
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from typing import Any, Optional
from urllib.parse import urlparse

from . import RunningContainer, RunSpec, Runtime
from .docker import DockerRuntime, crunch_log

logger = logging.getLogger(__name__)

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
#: How long one probe of the engine's health is trusted.
PROBE_TTL = 5.0


def resolve_docker_host(configured: Optional[str] = None) -> str:
    """The engine to use: the cluster setting, else ``DOCKER_HOST``, else Docker's default."""
    return configured or os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST


def engine_answers(docker_host: str, timeout: float = 2.0) -> bool:
    """True when a Docker engine answers ``GET /_ping`` at *docker_host* (unix:// or tcp://)."""
    url = urlparse(docker_host)
    try:
        if url.scheme == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address: Any = url.path
        elif url.scheme in ("tcp", "http"):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            address = (url.hostname or "127.0.0.1", url.port or 2375)
        else:
            return False
    except OSError:
        return False
    with sock:
        sock.settimeout(timeout)
        try:
            sock.connect(address)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            reply = b""
            while len(reply) < 4096:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
        except OSError:
            return False
    head, _, body = reply.partition(b"\r\n\r\n")
    return head.split(b" ", 2)[1:2] == [b"200"] and body.strip() == b"OK"


class RuntimeSelector:
    """A ``Runtime`` that hands each container to the namespace or the Docker runtime."""

    def __init__(self, namespace: Runtime, docker: Optional[DockerRuntime]) -> None:
        self.namespace = namespace
        self.docker = docker
        self._lock = threading.Lock()
        self._probed_at = -PROBE_TTL
        self._answers = False
        self._cleanup: Optional[asyncio.Future] = None

    def docker_available(self) -> bool:
        """Whether the Docker engine answers (probed at most every ``PROBE_TTL`` seconds)."""
        if self.docker is None:
            return False
        with self._lock:
            now = time.monotonic()
            if now - self._probed_at >= PROBE_TTL:
                self._answers = engine_answers(self.docker.docker_host, timeout=1.0)
                self._probed_at = now
            return self._answers

    def choose(self, spec: RunSpec) -> tuple[str, str]:
        """("docker" | "namespace", why) for *spec*."""
        if self.docker is None:
            return "namespace", "Docker runtime disabled"
        if not self.docker_available():
            return "namespace", f"no Docker engine answers at {self.docker.docker_host}"
        return "docker", ""

    async def _remove_leftovers(self) -> None:
        """Before our first Docker container: remove those a previous run of this cluster left."""
        assert self.docker is not None
        try:
            n = await self.docker.remove_leftovers()
        except OSError as e:
            logger.warning("could not list leftover Docker containers: %s", e)
            return
        if n:
            logger.info("removed %d Docker container(s) left from a previous run", n)

    async def start(self, spec: RunSpec) -> RunningContainer:
        kind, why = self.choose(spec)
        if kind == "docker":
            assert self.docker is not None
            if self._cleanup is None:  # every start waits for it: it must not remove new ones
                self._cleanup = asyncio.ensure_future(self._remove_leftovers())
            await asyncio.shield(self._cleanup)
            return await self.docker.start(spec)
        crunch_log(spec.get("crunch_log"), f"runtime: namespace ({why})")
        return await self.namespace.start(spec)

    def adopt(self, record: dict) -> Optional[RunningContainer]:
        """Only namespace containers outlive the cluster process that started them."""
        return self.namespace.adopt(record) if record.get("runtime") == "namespace" else None


def make_runtime(docker_host: Optional[str], owner: str) -> RuntimeSelector:
    """The cluster's runtime: Docker when an engine answers, else namespaces.

    :param docker_host: the cluster's ``docker_host`` setting (None: ``DOCKER_HOST`` or the
        default socket).
    :param owner: label value marking this cluster's Docker containers (its state directory).
    """
    from .namespace import NamespaceRuntime

    host = resolve_docker_host(docker_host)
    selector = RuntimeSelector(NamespaceRuntime(), DockerRuntime(host, owner=owner))
    if selector.docker_available():
        logger.info("Docker engine at %s: containers run in Docker", host)
    else:
        logger.info("no Docker engine at %s: every container runs in the namespace runtime", host)
    return selector
