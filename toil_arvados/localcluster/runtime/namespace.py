"""Run containers in their own Linux mount + PID namespaces (no container engine).

There is no Docker on this machine, but an Arvados container's command must see its mounts
at the paths the container record names (``/var/spool/cwl``, ``/keep/<pdh>/...``, ``/tmp``,
single-file mounts such as ``/var/spool/cwl/cwl.input.json``).  Each container therefore gets
a private mount namespace whose root is its image (an overlay of the image's layers, unpacked
once per layer by :mod:`.layers`) with its mounts bound on top (see :mod:`.nsinit`, which does
the work inside the namespaces), and a PID namespace so that cancelling it kills every process
it started.  Nothing of the host is visible.

Run spec (JSON-serializable dict; host paths are resolved by the dispatcher)::

    container_uuid   str          used for naming (cgroups) and logs
    command          list[str]    argv; argv[0] is looked up in the container's PATH
    cwd              str          working directory inside the container ("" / "." = "/")
    environment      dict         exactly the command's environment (PATH/HOME defaulted)
    mounts           list[dict]   {"path": container path, "source": host path,
                                   "writable": bool}; files or directories, any order
    stdin            str | None   host file fed to stdin (None: /dev/null)
    stdout           str | None   host file receiving stdout (a stdout mount), truncated
    stdout_log       str          host file receiving stdout otherwise (appended)
    stderr           str | None   host file receiving stderr (a stderr mount), truncated;
                                  may equal stdout (then both streams share the file)
    stderr_log       str          host file receiving stderr otherwise (appended)
    crunch_log       str          host file for the runtime's own timestamped lines (appended)
    image            str          recorded in the crunch log
    image_layers     list[str]    the image's unpacked layer directories, top first
    rootfs_upper     str          empty host directory: the container's writable layer
    rootfs_work      str          empty host directory on the same filesystem (overlayfs)
    vcpus, ram       int          enforced with cgroup v1 or v2 cpu/memory when available
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

from ...images.archive import ArchiveError
from . import ContainerSetupError, RunSpec
from ...images.layers import LayerCache

from ..crunch import memory_threshold_lines
from .nsinit import process_start

logger = logging.getLogger(__name__)

NSINIT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nsinit.py")
#: Docker's (and crunch-run's) floor for a memory limit.
MIN_RAM = 4 * 1024 * 1024
_CGROUP_V1 = "/sys/fs/cgroup"


def _crunch_log(path: Optional[str], msg: str) -> None:
    """Append one timestamped line to the crunch log, in nsinit's format."""
    if not path:
        return
    now = time.time_ns()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now // 1_000_000_000))
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"{stamp}.{now % 1_000_000_000:09d}Z {msg}\n")
    except OSError as e:
        logger.warning("cannot write crunch log %s: %s", path, e)


def _cgroup_lines() -> list[str]:
    try:
        with open("/proc/self/cgroup") as f:
            return f.read().splitlines()
    except OSError:
        return []


def _own_cgroup(controller: str) -> Optional[tuple[str, str]]:
    """(hierarchy directory, our cgroup path) for *controller*: its v1 hierarchy if mounted,
    else the unified (v2) hierarchy when it offers the controller."""
    unified = None
    for line in _cgroup_lines():
        hid, ctrls, path = line.split(":", 2)
        if controller in ctrls.split(","):
            hierarchy = os.path.join(_CGROUP_V1, ctrls)
            if os.path.isdir(hierarchy):
                return hierarchy, path
        if hid == "0" and ctrls == "":
            unified = path
    if unified is not None and _v2_offers(unified, controller):
        return _CGROUP_V1, unified
    return None


def _v2_offers(path: str, controller: str) -> bool:
    """On cgroup v2: make *controller* available to our children (best effort)."""
    d = os.path.join(_CGROUP_V1, path.lstrip("/"))
    try:
        with open(os.path.join(d, "cgroup.controllers")) as f:
            if controller not in f.read().split():
                return False
        with open(os.path.join(d, "cgroup.subtree_control"), "w") as f:
            f.write(f"+{controller}")
        return True
    except OSError:
        return False


def limit_knobs(controller: str, value: float, v2: bool, period: int = 100_000) -> dict[str, str]:
    """The cgroup files that enforce *value* (bytes of ram, or CPUs) on cgroup v1 or v2."""
    if controller == "memory":
        return {"memory.max" if v2 else "memory.limit_in_bytes": str(int(value))}
    quota = int(value * period)
    if v2:
        return {"cpu.max": f"{quota} {period}"}
    return {"cpu.cfs_period_us": str(period), "cpu.cfs_quota_us": str(quota)}


class _Limits:
    """Per-container cgroups (v1 or v2) enforcing ``ram`` and ``vcpus``, best effort.

    Why nested under *our own* cgroup: the container stays accounted to whatever limits the
    dispatcher itself runs under, and we never touch cgroups we did not create.
    """

    def __init__(self, uuid: str, vcpus: Any, ram: Any) -> None:
        self.dirs: list[str] = []
        self.procs: list[str] = []
        self.log: list[str] = []
        self.memory_dir: Optional[str] = None
        self.ram = 0
        self.v2 = False
        name = "toil-arvados-" + (uuid or f"pid{os.getpid()}-{time.monotonic_ns()}")
        if ram:
            ram = max(int(ram), MIN_RAM)
            d = self._make("memory", name)
            if d and self._apply(d, limit_knobs("memory", ram, self.v2)):
                self.memory_dir = d
                self.ram = ram
                self.log.append(f"enforcing ram: memory limit {ram} bytes (cgroup {d})")
            else:
                self.log.append(f"ram {ram} bytes requested: not enforced (no usable memory "
                                "cgroup)")
        if vcpus:
            d = self._make("cpu", name)
            if d and self._apply(d, limit_knobs("cpu", float(vcpus), self.v2)):
                self.log.append(f"enforcing vcpus: cpu quota {vcpus} CPU(s) (cgroup {d})")
            else:
                self.log.append(f"vcpus {vcpus} requested: not enforced (no usable cpu cgroup)")

    def _make(self, controller: str, name: str) -> Optional[str]:
        own = _own_cgroup(controller)
        if own is None:
            return None
        self.v2 = own[0] == _CGROUP_V1  # v1 hierarchies are subdirectories of it
        d = os.path.join(own[0], own[1].lstrip("/"), name)
        try:
            os.makedirs(d, exist_ok=True)
        except OSError as e:
            logger.debug("cannot create cgroup %s: %s", d, e)
            return None
        if d not in self.dirs:
            self.dirs.append(d)
            self.procs.append(os.path.join(d, "cgroup.procs"))
        return d

    @staticmethod
    def _apply(d: str, knobs: dict[str, str]) -> bool:
        try:
            for knob, value in knobs.items():
                with open(os.path.join(d, knob), "w") as f:
                    f.write(value)
            return True
        except OSError as e:
            logger.debug("cannot set limits in %s: %s", d, e)
            return False

    def memory_limit_hit(self) -> bool:
        """True when the memory cgroup ever refused an allocation (i.e. likely OOM)."""
        if not self.memory_dir:
            return False
        try:
            if self.v2:
                with open(os.path.join(self.memory_dir, "memory.events")) as f:
                    events = dict(line.split() for line in f if line.strip())
                return int(events.get("oom_kill", 0)) > 0 or int(events.get("max", 0)) > 0
            with open(os.path.join(self.memory_dir, "memory.failcnt")) as f:
                return int(f.read()) > 0
        except (OSError, ValueError):
            return False

    def memory_peak(self) -> int:
        """The most memory the cgroup used (bytes); its limit where the kernel does not say."""
        name = "memory.peak" if self.v2 else "memory.max_usage_in_bytes"
        try:
            with open(os.path.join(self.memory_dir or "", name)) as f:
                return int(f.read())
        except (OSError, ValueError):
            return self.ram

    def state(self) -> dict[str, Any]:
        """What :meth:`restore` needs to read and remove these cgroups from another process."""
        return {"dirs": self.dirs, "memory_dir": self.memory_dir, "ram": self.ram, "v2": self.v2}

    @classmethod
    def restore(cls, state: dict[str, Any]) -> "_Limits":
        """The cgroups of a container that an earlier cluster process started."""
        limits = cls("", None, None)
        limits.dirs = list(state.get("dirs") or [])
        limits.memory_dir = state.get("memory_dir")
        limits.ram = int(state.get("ram") or 0)
        limits.v2 = bool(state.get("v2"))
        return limits

    async def remove(self) -> None:
        """Remove our cgroups; they are busy for a moment while killed processes exit."""
        for d in self.dirs:
            for _ in range(100):
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if e.errno != errno.EBUSY:
                        logger.warning("cannot remove cgroup %s: %s", d, e)
                        break
                    await asyncio.sleep(0.02)  # polling interval while killed processes exit
            else:
                logger.warning("cgroup %s still busy; left behind", d)


class NamespaceContainer:
    """A container run by an nsinit monitor (implements ``RunningContainer``): one this process
    started (*child*), or one an earlier cluster process started and this one adopted.

    The monitor is followed through a pidfd, which works for a process that is not our child
    and cannot signal another process that reuses its pid; its outcome is the status file it
    writes when done (and, for a child, the line it prints).
    """

    def __init__(self, pid: int, start: int, spec: RunSpec, limits: _Limits, kill_grace: float,
                 child: Optional[subprocess.Popen] = None) -> None:
        self._spec = spec
        self._limits = limits
        self._kill_grace = kill_grace
        self._child = child
        self.pid: int = pid
        self._start = start
        self._pidfd = _pidfd(pid, start)
        self._done = self._pidfd is None and child is None  # an adopted one that has ended
        self.signal: Optional[int] = None
        self.signal_name: Optional[str] = None
        self.killed = False
        #: True when the container's processes died from outside the command (nsinit or its
        #: PID 1 killed): the exit code then says nothing about the command.
        self.lost = False
        self.exit_code: Optional[int] = None
        self._kill_requested = False
        self._task = asyncio.ensure_future(self._run())

    def record(self) -> dict[str, Any]:
        """What :meth:`NamespaceRuntime.adopt` needs to follow this container from a cluster
        process started later (JSON; no secret in it)."""
        return {"runtime": "namespace", "pid": self.pid, "start": self._start,
                "container_uuid": self._spec.get("container_uuid"),
                "status_file": self._spec.get("status_file"), "crunch_log": self._spec.get("crunch_log"),
                "limits": self._limits.state(), "kill_grace": self._kill_grace}

    async def wait(self) -> int:
        """The command's exit code (128+signum for a signal death; see ``signal``)."""
        return await asyncio.shield(self._task)

    def kill(self) -> None:
        """Kill everything in the container now.

        SIGTERM makes nsinit's monitor SIGKILL PID 1 of the container's PID namespace (the
        kernel then kills every other process in it) and reap it, so ``wait()`` returns only when
        nothing is left.  If the monitor does not exit within ``kill_grace`` seconds, its
        whole process group gets SIGKILL.
        """
        if self._done:
            return
        self._kill_requested = True
        if self._send(signal.SIGTERM):
            asyncio.get_running_loop().call_later(self._kill_grace, self._force_kill)

    def _send(self, signum: int) -> bool:
        try:
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, signum)
            else:  # our child (not yet reaped, so its pid is still its own), without pidfds
                os.kill(self.pid, signum)
            return True
        except OSError:
            return False

    def _force_kill(self) -> None:
        if not self._done:
            logger.warning("container %s: nsinit ignored SIGTERM; SIGKILL to its group",
                           self._spec.get("container_uuid"))
            self._send(signal.SIGKILL)
            if process_start(self.pid) == self._start:  # still the same process: its group too
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass

    async def _exited(self) -> Optional[int]:
        """Wait until the monitor has exited; its exit status when it is our child."""
        if self._pidfd is not None:
            loop = asyncio.get_running_loop()
            gone = loop.create_future()
            loop.add_reader(self._pidfd, lambda: gone.done() or gone.set_result(None))
            try:
                await gone
            finally:
                loop.remove_reader(self._pidfd)
            return self._child.wait() if self._child is not None else None  # exited: no blocking
        return await asyncio.to_thread(self._child.wait) if self._child is not None else None

    async def _run(self) -> int:
        try:
            rc = await self._exited()
        finally:
            self._done = True
            if self._pidfd is not None:
                os.close(self._pidfd)
            if self._limits.dirs:
                oom = self._limits.memory_limit_hit()
                peak = self._limits.memory_peak()
                await self._limits.remove()
            else:
                oom, peak = False, 0
        result = self._outcome()
        uuid = self._spec.get("container_uuid")
        if not result:
            if self._kill_requested:
                result = {"exit_code": 128 + signal.SIGKILL, "signal": signal.SIGKILL,
                          "killed": True}
            else:  # nsinit itself was killed from outside
                if rc is None:
                    why = "container runtime (nsinit) ended without a result"
                    sig, rc = None, 1
                else:
                    sig = -rc if rc < 0 else None
                    why = f"container runtime (nsinit) exited with status {rc}"
                result = {"lost": True, "exit_code": 128 + sig if sig else rc, "signal": sig,
                          "message": why}
                _crunch_log(self._spec.get("crunch_log"), f"container lost: {result['message']}")
        if result.get("lost"):
            self.lost = True
            logger.warning("container %s lost: %s", uuid, result.get("message"))
        elif "error" in result:
            raise ContainerSetupError(result["error"])
        self.exit_code = int(result["exit_code"])
        self.signal = result.get("signal")
        self.killed = bool(result.get("killed")) or self._kill_requested
        if self.signal:
            self.signal_name = signal.Signals(self.signal).name
            if oom and self.signal == signal.SIGKILL and not self.killed:
                for line in memory_threshold_lines(max(peak, self._limits.ram), self._limits.ram):
                    _crunch_log(self._spec.get("crunch_log"), line)
        logger.debug("container %s: exit code %s signal %s killed %s", uuid, self.exit_code,
                     self.signal_name, self.killed)
        return self.exit_code

    def _outcome(self) -> dict[str, Any]:
        """The monitor's report: its status file, else (a child's) last line on stdout."""
        raw = b""
        try:
            with open(self._spec.get("status_file") or "", "rb") as f:
                raw = f.read()
        except OSError:
            if self._child is not None and self._child.stdout is not None:
                lines = self._child.stdout.read().strip().splitlines()
                raw = lines[-1] if lines else b""
        if self._child is not None and self._child.stdout is not None:
            self._child.stdout.close()
        try:
            result = json.loads(raw) if raw else {}
        except ValueError:
            result = {}
        return result if isinstance(result, dict) else {}


def _pidfd(pid: int, start: int) -> Optional[int]:
    """A pidfd for process *pid* if it is still the one that started at *start*, else None."""
    try:
        fd = os.pidfd_open(pid)
    except (ProcessLookupError, OSError):
        return None
    if process_start(pid) != start:  # the pid names another process now
        os.close(fd)
        return None
    return fd


class NamespaceRuntime:
    """Runs each container under ``nsinit`` in fresh mount + PID namespaces (needs root)."""

    def __init__(self, python: str = sys.executable, ns_root_dir: Optional[str] = None,
                 enforce_limits: bool = True, kill_grace: float = 2.0,
                 layer_cache: Optional[LayerCache] = None) -> None:
        """
        :param python: interpreter for nsinit (stdlib only, run with ``-I -S`` for speed); it
            runs on the host, before the container's root exists, and is never visible in it.
        :param ns_root_dir: empty host directory each container mounts its overlay root over,
            inside its own mount namespace (default ``/run/toil-arvados-nsroot``).
        :param enforce_limits: create per-container cgroups for ``ram``/``vcpus``.
        :param kill_grace: seconds ``kill()`` waits before SIGKILLing nsinit itself.
        :param layer_cache: where image layers are unpacked (default: the user's cache).
        """
        self.python = python
        self.ns_root_dir = ns_root_dir
        self.enforce_limits = enforce_limits
        self.kill_grace = kill_grace
        self.layer_cache = layer_cache or LayerCache()

    async def _image_root(self, spec: RunSpec) -> RunSpec:
        """*spec* with the image applied: its layers as the root, its ENV under the container's
        environment, its ENTRYPOINT before the command and its WORKDIR when cwd is unset."""
        tarball, scratch = spec.get("image_tarball"), spec.get("rootfs_scratch")
        if not tarball or not scratch:
            raise ContainerSetupError(f"image {spec.get('image')}: no image archive to run in")
        try:
            image = await asyncio.to_thread(self.layer_cache.unpack, Path(tarball))
        except (ArchiveError, OSError) as e:
            raise ContainerSetupError(f"image {spec.get('image')}: {e}") from None
        if image.unpack_seconds:
            _crunch_log(spec.get("crunch_log"), f"unpacked image sha256:{image.image_id} in "
                                                f"{image.unpack_seconds:.1f}s (once per layer)")
        upper, work = Path(scratch) / "upper", Path(scratch) / "work"
        upper.mkdir(exist_ok=True)
        work.mkdir(exist_ok=True)
        cwd = spec.get("cwd") or "."
        return {**spec, "image_layers": list(image.layers), "rootfs_upper": str(upper),
                "rootfs_work": str(work), "command": image.settings.argv(list(spec["command"])),
                "environment": image.settings.environment(dict(spec.get("environment") or {})),
                "cwd": image.settings.workdir if cwd in ("", ".") and image.settings.workdir else cwd}

    async def start(self, spec: RunSpec) -> NamespaceContainer:
        """Start the container; returns as soon as nsinit is running."""
        command = spec.get("command")
        if not isinstance(command, list) or not command:
            raise ContainerSetupError("container command must be a non-empty list")
        for m in spec.get("mounts") or []:
            if not str(m.get("path", "")).startswith("/") or not m.get("source"):
                raise ContainerSetupError(f"bad mount in run spec: {m!r}")
        spec = await self._image_root(spec)
        child_spec = dict(spec)
        if self.ns_root_dir:
            child_spec["ns_root_dir"] = self.ns_root_dir
        if self.enforce_limits:
            limits = _Limits(spec.get("container_uuid", ""), spec.get("vcpus"), spec.get("ram"))
        else:
            limits = _Limits("", None, None)
            limits.log.append("resource limits (vcpus, ram) recorded, not enforced")
        child_spec["cgroup_procs"] = limits.procs
        child_spec["limits_log"] = limits.log

        scratch = Path(spec["rootfs_scratch"])  # host-only, one per container
        spec["status_file"] = child_spec["status_file"] = str(scratch / "status.json")
        child_spec["runner_file"] = str(scratch / "runner.json")
        stderr_fd: Optional[int] = None
        if spec.get("crunch_log"):
            # nsinit's own Python errors, if any, land in the crunch log too.
            stderr_fd = os.open(spec["crunch_log"],
                                os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            proc = await asyncio.to_thread(self._spawn, json.dumps(child_spec).encode(), stderr_fd)
        except BaseException:
            await limits.remove()
            raise
        finally:
            if stderr_fd is not None:
                os.close(stderr_fd)
        logger.debug("container %s: nsinit pid %s", spec.get("container_uuid"), proc.pid)
        return NamespaceContainer(proc.pid, process_start(proc.pid), spec, limits, self.kill_grace,
                                  child=proc)

    def _spawn(self, spec_json: bytes, stderr_fd: Optional[int]) -> subprocess.Popen:
        """Start nsinit in a session of its own, given its spec on stdin. Not an asyncio
        subprocess: asyncio kills a child whose transport it closes, and the container must
        outlive this process if it stops (``down --keep-containers``) or crashes."""
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        proc = subprocess.Popen([self.python, "-I", "-S", NSINIT, "-"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=stderr_fd, env=env,
                                start_new_session=True, close_fds=True)
        assert proc.stdin is not None
        try:
            proc.stdin.write(spec_json)
            proc.stdin.close()
        except (BrokenPipeError, ConnectionResetError):
            pass  # nsinit died early; wait() reports it
        return proc

    def adopt(self, record: dict[str, Any]) -> Optional[NamespaceContainer]:
        """Follow a container an earlier cluster process started (``record`` is what its
        :meth:`NamespaceContainer.record` said): still running, or finished meanwhile with its
        outcome in its status file. None when it is gone without one (lost)."""
        try:
            pid, start, status_file = int(record["pid"]), int(record["start"]), str(record["status_file"])
        except (KeyError, TypeError, ValueError):
            return None
        if process_start(pid, running=True) != start and not os.path.exists(status_file):
            return None  # died without saying how it ended: lost
        spec = {"container_uuid": record.get("container_uuid"), "status_file": status_file,
                "crunch_log": record.get("crunch_log")}
        return NamespaceContainer(pid, start, spec, _Limits.restore(record.get("limits") or {}),
                                  float(record.get("kill_grace") or self.kill_grace))
