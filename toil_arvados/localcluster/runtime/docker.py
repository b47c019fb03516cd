"""Run containers in a Docker engine, as crunch-run does on a real Arvados cluster.

The image comes from its Keep collection: the dispatcher materializes the image collection
and passes the ``docker save`` tarball it holds (``<image id>.tar``, as ``arv-keepdocker``
stores it); it is ``docker load``-ed once per image id.  The container's mounts are bind
mounts at their paths (read-only unless writable), ``vcpus``/``ram`` become ``--cpus`` and
``--memory`` limits, and networking is off (``--network none``) unless the container asked
for API access -- which is also how arvados-cwl-runner expresses CWL ``NetworkAccess``
(``runtime_constraints.API``).  API access means host networking here: the cluster's API
server listens on the host's loopback address, which no other network mode can reach.

We talk to dockerd through the ``docker`` CLI: each step is one short subprocess, and
``docker start --attach`` relays the command's stdin/stdout/stderr exactly like a shell
redirection would.  Environment *values* never appear on a command line (``-e NAME`` takes the
value from the CLI's own environment), so a container's API token is not visible in ``ps``.

Run spec keys used besides those of :mod:`.namespace`::

    image_tarball   str   host path of the image collection's ``<image id>.tar``
    api             bool  the container asked for API access (host networking)
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import os
import re
import shutil
import signal
import time
from typing import Any, Optional

from . import ContainerSetupError, RunSpec

from ..crunch import memory_threshold_lines

logger = logging.getLogger(__name__)

#: dockerd refuses memory limits below 6 MiB.
MIN_DOCKER_RAM = 6 * 1024 * 1024
#: Label on every container we create: the state directory of the cluster that owns it, so a
#: restarted cluster removes only its own leftovers from a shared engine.
OWNER_LABEL = "org.toil-arvados.cluster"
UUID_LABEL = "org.toil-arvados.container-uuid"
_IMAGE_ID = re.compile(r"^[0-9a-f]{64}$")
# Docker's exit codes for "could not exec the command" (as a shell reports them).
_EXEC_FAILURES = (126, 127)


def _stamp() -> bytes:
    now = time.time_ns()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now // 1_000_000_000))
    return f"{stamp}.{now % 1_000_000_000:09d}Z ".encode()


def crunch_log(path: Optional[str], msg: str) -> None:
    """Append one timestamped line to the container's crunch-run log."""
    if not path:
        return
    try:
        with open(path, "ab") as f:
            f.write(_stamp() + msg.encode("utf-8", "replace") + b"\n")
    except OSError as e:
        logger.warning("cannot write crunch log %s: %s", path, e)


def container_name(uuid: str) -> str:
    return f"toil-arvados-{uuid}"


def _csv_field(fields: list[str]) -> str:
    """One ``--mount`` value: Docker parses it as a CSV line, so quote commas and quotes."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow(fields)
    return buf.getvalue()


def create_args(spec: RunSpec, image_id: str, *, owner: str,
                host_cpus: Optional[int] = None) -> tuple[list[str], dict[str, str]]:
    """``docker create`` arguments for *spec*, and the environment the CLI must run with.

    Pure (no I/O), so the mapping from run spec to Docker options is unit-tested on its own.
    Container environment values go into the returned environment and are named with
    ``-e NAME``; only ``DOCKER_*`` variables, which would reconfigure the CLI itself, are
    passed as ``-e NAME=VALUE``.
    """
    uuid = spec.get("container_uuid") or ""
    args = ["create", "--name", container_name(uuid), "--label", f"{OWNER_LABEL}={owner}",
            "--label", f"{UUID_LABEL}={uuid}", "--log-driver", "none",
            "--network", "host" if spec.get("api") else "none"]
    vcpus = spec.get("vcpus")
    if vcpus:
        # Docker refuses more CPUs than the host has; the cluster may be configured with more.
        args += ["--cpus", str(min(int(vcpus), host_cpus or os.cpu_count() or 1))]
    ram = int(spec.get("ram") or 0)
    if ram:
        ram = max(ram, MIN_DOCKER_RAM)
        args += ["--memory", str(ram), "--memory-swap", str(ram)]
    cwd = spec.get("cwd") or ""
    if cwd not in ("", "."):
        args += ["--workdir", cwd]
    cli_env: dict[str, str] = {}
    for name, value in (spec.get("environment") or {}).items():
        name, value = str(name), str(value)
        if not name or "=" in name:
            raise ContainerSetupError(f"invalid environment variable name {name!r}")
        if name.startswith("DOCKER_"):
            args += ["--env", f"{name}={value}"]
        else:
            args += ["--env", name]
            cli_env[name] = value
    for m in spec.get("mounts") or []:
        fields = ["type=bind", f"source={m['source']}", f"target={m['path']}"]
        if not m.get("writable"):
            fields.append("readonly")
        args += ["--mount", _csv_field(fields)]
    if spec.get("stdin"):
        args.append("--interactive")
    # Everything after the image is the command (the CLI parses no options there).
    args += [f"sha256:{image_id}"] + [str(a) for a in spec["command"]]
    return args, cli_env


def placeholders(mounts: list[dict]) -> list[tuple[str, bool]]:
    """Host paths Docker will create as mount points inside other mounts' sources.

    A mount nested in another (``/var/spool/cwl/cwl.input.json`` in ``/var/spool/cwl``) needs
    its mount point in the outer mount's source directory; Docker creates it there.  We note
    which did not exist beforehand -- (host path, is a directory), outermost first -- and remove
    them after the container, so they do not show up in the output collection.
    """
    norm = [(os.path.normpath(m["path"]), m) for m in mounts]
    out: list[tuple[str, bool]] = []
    for path, m in norm:
        outer = max((p for p, _ in norm if p != path and path.startswith(p.rstrip("/") + "/")),
                    key=len, default=None)
        if outer is None:
            continue
        src = next(om["source"] for p, om in norm if p == outer)
        rel = path[len(outer):].strip("/").split("/")
        for i in range(1, len(rel) + 1):
            host = os.path.join(src, *rel[:i])
            is_dir = i < len(rel) or os.path.isdir(m["source"])
            if not os.path.lexists(host) and (host, is_dir) not in out:
                out.append((host, is_dir))
    return out


def _remove_placeholders(paths: list[tuple[str, bool]]) -> None:
    for host, is_dir in reversed(paths):
        try:
            if is_dir:
                os.rmdir(host)
            elif os.path.getsize(host) == 0:
                os.unlink(host)
        except OSError:
            pass  # the command put something there: it is output now


def _stream_file(path: str) -> int:
    """A ``stdout``/``stderr`` mount's file, created or truncated as crunch-run does; the CLI
    relays the stream into it in place of the log."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)


class DockerCli:
    """Runs ``docker`` subcommands against one engine."""

    def __init__(self, docker_host: str, cli: Optional[str] = None) -> None:
        self.docker_host = docker_host
        self.cli = cli or shutil.which("docker") or "docker"

    def env(self, extra: Optional[dict[str, str]] = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        if extra:
            env = {"PATH": env.get("PATH", "/usr/bin:/bin"), **extra}
        env["DOCKER_HOST"] = self.docker_host
        return env

    async def run(self, *args: str, env: Optional[dict[str, str]] = None,
                  stdin: Any = asyncio.subprocess.DEVNULL) -> tuple[int, str, str]:
        """(exit status, stdout, stderr) of ``docker ARGS``."""
        proc = await asyncio.create_subprocess_exec(
            self.cli, *args, stdin=stdin, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=self.env(env))
        out, err = await proc.communicate()
        return proc.returncode or 0, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


async def _pump(reader: asyncio.StreamReader, path: str) -> None:
    """Copy a stream into a log file, a timestamp at the start of every line (crunch-run's
    stdout.txt/stderr.txt format, which arvados-cwl-runner parses)."""
    at_start = True
    with open(path, "ab") as f:
        while True:
            data = await reader.read(65536)
            if not data:
                return
            stamp = _stamp()
            out = bytearray()
            pieces = data.split(b"\n")
            for i, piece in enumerate(pieces):
                last = i == len(pieces) - 1
                if last and not piece:
                    break
                if at_start:
                    out += stamp
                out += piece
                if not last:
                    out += b"\n"
                at_start = not last
            try:
                f.write(out)
                f.flush()
            except OSError:
                pass  # a full disk must not hang the container: drop the log line


class DockerContainer:
    """A container started by :class:`DockerRuntime` (implements ``RunningContainer``)."""

    def __init__(self, runtime: "DockerRuntime", spec: RunSpec, name: str,
                 attach: asyncio.subprocess.Process, pumps: list[asyncio.Task],
                 created: list[tuple[str, bool]]) -> None:
        self._rt = runtime
        self._spec = spec
        self._name = name
        self._attach = attach
        self._pumps = pumps
        self._placeholders = created
        self.pid: int = attach.pid
        self.signal: Optional[int] = None
        self.signal_name: Optional[str] = None
        self.killed = False
        self.lost = False
        self.exit_code: Optional[int] = None
        self._kill_requested = False
        self._remove_task: Optional[asyncio.Task] = None
        self._task = asyncio.ensure_future(self._run())

    def record(self) -> None:
        """None: its output reaches the log files through this process's ``docker start
        --attach``, so a cluster process started later cannot take it over; it is cancelled
        (and retried) instead."""
        return None

    async def wait(self) -> int:
        return await asyncio.shield(self._task)

    def kill(self) -> None:
        """``docker rm --force``: SIGKILL to everything in the container, then remove it.

        Works at any point, even before the engine has started the container: the attach
        process then ends with an error, and ``wait()`` reports the container as killed.
        """
        if self._task.done() or self._kill_requested:
            return
        self._kill_requested = True
        self._remove_task = asyncio.ensure_future(self._rt.cli.run("rm", "--force", self._name))
        asyncio.get_running_loop().call_later(self._rt.kill_grace, self._force_kill)

    def _force_kill(self) -> None:
        if self._attach.returncode is None:
            logger.warning("container %s: docker attach still running after kill; killing it",
                           self._spec.get("container_uuid"))
            try:
                self._attach.kill()
            except ProcessLookupError:
                pass

    def _lost(self, attach_rc: int, why: str) -> int:
        """The container ended from outside its command: the dispatcher cancels it."""
        self.lost = True
        self.exit_code = attach_rc or 1
        crunch_log(self._spec.get("crunch_log"), f"container lost: {why}")
        logger.warning("container %s lost: %s", self._spec.get("container_uuid"), why)
        return self.exit_code

    async def _run(self) -> int:
        log = self._spec.get("crunch_log")
        try:
            attach_rc = await self._attach.wait()
            await asyncio.gather(*self._pumps, return_exceptions=True)
            if self._kill_requested:
                if self._remove_task is not None:
                    await self._remove_task
                self.killed = True
                self.signal, self.signal_name = signal.SIGKILL, "SIGKILL"
                self.exit_code = 128 + signal.SIGKILL
                crunch_log(log, "container killed (cancelled): docker rm --force")
                return self.exit_code
            rc, out, err = await self._rt.cli.run("inspect", "--type", "container",
                                                  "--format", "{{json .State}}", self._name)
            if rc != 0:
                return self._lost(attach_rc, f"docker container {self._name} disappeared "
                                             f"({err.strip() or 'docker inspect failed'})")
            state = json.loads(out)
            if state.get("Status") in ("removing", "dead"):
                # Someone else's ``docker rm --force``: the engine kills the container first.
                return self._lost(attach_rc, f"docker container {self._name} disappeared "
                                             "(removed outside the dispatcher while it ran)")
            if state.get("Running"):
                return self._lost(attach_rc, f"the docker CLI attached to it exited with status "
                                             f"{attach_rc} while it was still running")
            code = int(state.get("ExitCode") or 0)
            error = state.get("Error") or ""
            if error and code not in _EXEC_FAILURES:
                crunch_log(log, f"container setup failed: {error}")
                raise ContainerSetupError(f"container setup failed: {error}")
            if error:
                crunch_log(log, f"cannot start the container command: {error}")
            self.exit_code = code
            if state.get("OOMKilled"):
                self.signal, self.signal_name = signal.SIGKILL, "SIGKILL"
                ram = int(self._spec.get("ram") or 0)
                for line in memory_threshold_lines(ram, ram):  # the engine kills at the limit
                    crunch_log(log, line)
            crunch_log(log, f"container command exited with code {code}")
            return code
        finally:
            if not self._kill_requested:
                await self._rt.cli.run("rm", "--force", self._name)
            _remove_placeholders(self._placeholders)


class DockerRuntime:
    """Starts containers in a Docker engine (implements ``Runtime``)."""

    def __init__(self, docker_host: str, *, owner: str = "", cli: Optional[str] = None,
                 kill_grace: float = 10.0) -> None:
        """
        :param docker_host: the engine, as ``DOCKER_HOST`` names it (``unix:///path``).
        :param owner: value of the owner label on our containers (the cluster's state dir).
        :param kill_grace: seconds ``kill()`` waits for ``docker rm --force`` before it
            kills the attached CLI process itself.
        """
        self.cli = DockerCli(docker_host, cli)
        self.owner = owner
        self.kill_grace = kill_grace
        self._image_locks: dict[str, asyncio.Lock] = {}

    @property
    def docker_host(self) -> str:
        return self.cli.docker_host

    def describe(self) -> str:
        return f"docker (engine {self.docker_host})"

    def adopt(self, record: dict) -> None:
        """Nothing to adopt: see :meth:`DockerContainer.record`."""
        return None

    async def remove_leftovers(self) -> int:
        """Remove containers this cluster left in the engine (it stopped while they ran)."""
        rc, out, _ = await self.cli.run("ps", "--all", "--quiet", "--filter",
                                        f"label={OWNER_LABEL}={self.owner}")
        ids = out.split()
        if rc == 0 and ids:
            await self.cli.run("rm", "--force", *ids)
        return len(ids) if rc == 0 else 0

    async def ensure_image(self, tarball: str, log: Optional[str] = None) -> str:
        """The image id of *tarball*, ``docker load``-ing it only if the engine lacks it."""
        base = os.path.basename(tarball)
        stem = base[:-4] if base.endswith(".tar") else ""
        key = stem if _IMAGE_ID.match(stem) else tarball
        lock = self._image_locks.setdefault(key, asyncio.Lock())
        async with lock:
            if _IMAGE_ID.match(stem) and await self._has_image(stem):
                crunch_log(log, f"image sha256:{stem} already loaded in Docker")
                return stem
            started = time.monotonic()
            crunch_log(log, f"loading image {base} into Docker")
            with open(tarball, "rb") as f:
                rc, out, err = await self.cli.run("load", "--quiet", stdin=f)
            if rc != 0:
                raise ContainerSetupError(f"docker load of image {base} failed: {err.strip()}")
            image_id = self._loaded_id(out, stem)
            if image_id is None:
                m = re.search(r"Loaded image: (\S+)", out)
                if m:
                    rc, ident, _ = await self.cli.run("image", "inspect", "--format", "{{.Id}}",
                                                      m.group(1))
                    image_id = ident.strip().removeprefix("sha256:") if rc == 0 else None
            if image_id is None or not await self._has_image(image_id):
                raise ContainerSetupError(
                    f"image tarball {base} did not provide image sha256:{stem or '?'} "
                    f"(docker load said: {out.strip() or err.strip()})")
            crunch_log(log, f"loaded image sha256:{image_id} in "
                            f"{time.monotonic() - started:.1f}s")
            return image_id

    @staticmethod
    def _loaded_id(out: str, stem: str) -> Optional[str]:
        m = re.search(r"Loaded image ID: sha256:([0-9a-f]{64})", out)
        if m:
            return m.group(1)
        return stem if _IMAGE_ID.match(stem) else None

    async def _has_image(self, image_id: str) -> bool:
        rc, _, _ = await self.cli.run("image", "inspect", "--format", "{{.Id}}",
                                      f"sha256:{image_id}")
        return rc == 0

    async def start(self, spec: RunSpec) -> DockerContainer:
        """Load the image if needed, create the container, start it attached."""
        command = spec.get("command")
        if not isinstance(command, list) or not command:
            raise ContainerSetupError("container command must be a non-empty list")
        for m in spec.get("mounts") or []:
            if not str(m.get("path", "")).startswith("/") or not m.get("source"):
                raise ContainerSetupError(f"bad mount in run spec: {m!r}")
            if not os.path.exists(m["source"]):
                raise ContainerSetupError(f"mount {m['path']}: source {m['source']} does not exist")
        tarball = spec.get("image_tarball")
        if not tarball:
            raise ContainerSetupError(f"image {spec.get('image')}: no image tarball to load "
                                      "(the image collection holds no <image id>.tar)")
        log = spec.get("crunch_log")
        image_id = await self.ensure_image(tarball, log)
        crunch_log(log, f"runtime: docker (image sha256:{image_id}, collection "
                        f"{spec.get('image')}, engine {self.docker_host})")
        args, cli_env = create_args(spec, image_id, owner=self.owner)
        limits = []
        if spec.get("vcpus"):
            limits.append(f"vcpus {spec['vcpus']} as --cpus")
        if spec.get("ram"):
            limits.append(f"ram {max(int(spec['ram']), MIN_DOCKER_RAM)} bytes as --memory")
        if limits:
            crunch_log(log, "enforcing " + ", ".join(limits))
        crunch_log(log, "network: host (the container has API access)" if spec.get("api")
                   else "network: none (no API access requested)")
        name = container_name(spec.get("container_uuid") or "")
        created = placeholders(spec.get("mounts") or [])
        rc, _, err = await self.cli.run(*args, env=cli_env)
        if rc != 0 and "Conflict" in err:  # a leftover of a cluster that stopped mid-run
            await self.cli.run("rm", "--force", name)
            rc, _, err = await self.cli.run(*args, env=cli_env)
        if rc != 0:
            crunch_log(log, f"docker create failed: {err.strip()}")
            raise ContainerSetupError(f"docker create failed: {err.strip()}")
        crunch_log(log, f"running {json.dumps(command)} in {spec.get('cwd') or '/'}")
        attach = await self._start_attached(spec, name)
        pumps = []
        if attach.stdout is not None:
            pumps.append(asyncio.ensure_future(_pump(attach.stdout, spec["stdout_log"])))
        if attach.stderr is not None:
            pumps.append(asyncio.ensure_future(_pump(attach.stderr, spec["stderr_log"])))
        logger.debug("container %s: docker container %s started", spec.get("container_uuid"),
                     name)
        return DockerContainer(self, spec, name, attach, pumps, created)

    async def _start_attached(self, spec: RunSpec, name: str) -> asyncio.subprocess.Process:
        """``docker start --attach``: the CLI relays the command's standard streams."""
        stdin: Any = asyncio.subprocess.DEVNULL
        stdout: Any = asyncio.subprocess.DEVNULL
        stderr: Any = asyncio.subprocess.DEVNULL
        opened: list[int] = []
        try:
            args = ["start", "--attach"]
            if spec.get("stdin"):
                stdin = os.open(spec["stdin"], os.O_RDONLY | os.O_CLOEXEC)
                opened.append(stdin)
                args.append("--interactive")
            if spec.get("stdout"):
                stdout = _stream_file(spec["stdout"])
                opened.append(stdout)
            elif spec.get("stdout_log"):
                stdout = asyncio.subprocess.PIPE
            if spec.get("stderr") and spec["stderr"] == spec.get("stdout"):
                stderr = stdout  # one file, one offset: the streams interleave, not overwrite
            elif spec.get("stderr"):
                stderr = _stream_file(spec["stderr"])
                opened.append(stderr)
            elif spec.get("stderr_log"):
                stderr = asyncio.subprocess.PIPE
            return await asyncio.create_subprocess_exec(
                self.cli.cli, *args, name, stdin=stdin, stdout=stdout, stderr=stderr,
                env=self.cli.env(), start_new_session=True)
        except OSError as e:
            await self.cli.run("rm", "--force", name)
            raise ContainerSetupError(f"cannot start docker container {name}: {e}") from None
        finally:
            for fd in opened:
                os.close(fd)
