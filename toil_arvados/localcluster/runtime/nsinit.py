"""Run one Arvados container's command in its own mount + PID namespace.

Usage: ``python -I -S nsinit.py SPEC.json`` (or ``-`` to read the spec from stdin).

This file deliberately imports nothing but the standard library (and only cheap parts of it):
it runs once per container and the whole dispatch of ``true`` must take well under half a
second, so Python start-up plus this module is most of the budget.

Process layout (why three processes)::

    host asyncio  ->  nsinit "monitor" (host PID namespace, private mount namespace)
                        -> nsinit "init"  (PID 1 of a new PID namespace)
                             -> the container command (PID 2)

* The *monitor* is the process the dispatcher starts (crunch-run's part).  It unshares the
  mount and PID namespaces, forks the init, and on SIGTERM SIGKILLs the init: when PID 1 of a
  PID namespace dies the kernel kills every other process in it, and ``waitpid`` on PID 1
  returns only once they are all gone -- so "monitor exited" means "nothing of the container is
  left".  Like crunch-run it does not die with the dispatcher: it records who it is in
  ``runner_file`` when it starts and its outcome in ``status_file`` (and on stdout) when done,
  so a cluster process started later adopts a container that outlived the one that started it.
* The *init* (PID 1) builds the container's view of the filesystem -- an overlay of the
  image's unpacked layers with a private upper directory, the container's mounts bound at
  their exact paths, a fresh ``/proc`` for the new PID namespace and a minimal ``/dev``; no
  host directory -- pivots into it, forks the command, reaps orphans like a real init,
  forwards signals, and reports the command's wait status.
* The command runs as PID 2 with exactly the given environment (plus PATH/HOME defaults, as
  Docker provides), its cwd, and stdin/stdout/stderr redirected to host files.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import select
import signal
import stat
import sys
import time
import warnings  # noqa: F401 - os.execvpe imports it lazily, after the pivot it is not there

_libc = ctypes.CDLL(None, use_errno=True)

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MNT_DETACH = 2
CLONE_NEWNS = 0x00020000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
# For bringing up the loopback interface of a new network namespace (struct ifreq: a 16-byte
# name, then the flags as a short, in a 40-byte union on 64-bit Linux).
AF_INET, SOCK_DGRAM, SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 2, 2, 0x8913, 0x8914, 1
PR_SET_PDEATHSIG = 1
# pivot_root has no glibc wrapper; syscall numbers per architecture.
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "ppc64le": 203, "s390x": 217}

#: Where each container's tmpfs root is mounted (inside its private mount namespace only; the
#: host only ever sees the empty directory).  Marked unbindable so recursive binds skip it.
DEFAULT_NS_ROOT_DIR = "/run/toil-arvados-nsroot"
#: Docker's default PATH, used when the container environment has none.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Exit code of the monitor when the container could not be set up (Docker uses 125 too).
SETUP_FAILED = 125
#: Signals the init forwards to the command (SIGKILL/SIGSTOP cannot be caught anyway).
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT,
              signal.SIGUSR1, signal.SIGUSR2)


class SetupError(Exception):
    """The container's namespace could not be built; reported, not a command failure."""


# --------------------------------------------------------------------------- small helpers

def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise SetupError(f"{what}: {os.strerror(err)} (errno {err})")


def _mount(source: str | None, target: str, fstype: str | None, flags: int,
           data: str | None = None) -> None:
    _check(_libc.mount(source.encode() if source is not None else None, target.encode(),
                       fstype.encode() if fstype is not None else None, ctypes.c_ulong(flags),
                       data.encode() if data is not None else None),
           f"mount({source!r}, {target!r}, {fstype!r}, {flags:#x})")


def _umount(target: str) -> None:
    _check(_libc.umount2(target.encode(), MNT_DETACH), f"umount2({target!r})")


class CrunchLog:
    """Append timestamped lines, crunch-run style, to the container's crunch-run log.

    Opened O_APPEND so the dispatcher (and both nsinit processes) can interleave whole lines.
    """

    def __init__(self, path: str | None) -> None:
        self.fd = -1
        if path:
            try:
                self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                                  0o644)
            except OSError as e:
                print(f"nsinit: cannot open crunch log {path}: {e}", file=sys.stderr)

    def __call__(self, msg: str) -> None:
        now = time.time_ns()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now // 1_000_000_000))
        line = f"{stamp}.{now % 1_000_000_000:09d}Z {msg}\n".encode("utf-8", "replace")
        if self.fd >= 0:
            try:
                os.write(self.fd, line)
                return
            except OSError:
                pass
        try:
            os.write(2, line)
        except OSError:
            pass


def _norm(path: str) -> str:
    if not path.startswith("/"):
        raise SetupError(f"mount path {path!r} is not absolute")
    path = os.path.normpath(path)
    return "/" + path.lstrip("/")  # normpath keeps a leading '//'


def _depth(path: str) -> int:
    return 0 if path == "/" else path.count("/")


def _ancestors(path: str) -> list[str]:
    """Proper ancestors of *path*, outermost first, excluding '/'."""
    parts = path.strip("/").split("/")
    return ["/" + "/".join(parts[:i]) for i in range(1, len(parts))]


def _open_files(spec: dict) -> tuple[tuple[int, int, int], list[tuple[int, int]]]:
    """Open the command's stdin/stdout/stderr on the host, before any namespace change.

    A ``stdout``/``stderr`` mount (``spec["stdout"]``, ``spec["stderr"]``) is a plain file.
    Log destinations (``stdout_log``, ``stderr_log``) are pipes that the monitor copies into the
    log files with a timestamp at the start of every line, as crunch-run writes stdout.txt and
    stderr.txt (clients such as arvados-cwl-runner parse those timestamps). Returns the three
    fds for the command and the (pipe read end, log file fd) pairs to pump.
    """
    pumps: list[tuple[int, int]] = []

    def log_pipe(path: str) -> int:
        log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        r, w = os.pipe()  # both ends close-on-exec; the command gets w through dup2
        pumps.append((r, log_fd))
        return w

    stdin = spec.get("stdin")
    fd_in = os.open(stdin if stdin else os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    if spec.get("stdout"):
        fd_out = stream_file(spec["stdout"])
    elif spec.get("stdout_log"):
        fd_out = log_pipe(spec["stdout_log"])
    else:
        fd_out = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    if spec.get("stderr") and spec["stderr"] == spec.get("stdout"):
        fd_err = os.dup(fd_out)  # one file, one offset: the two streams interleave, not overwrite
    elif spec.get("stderr"):
        fd_err = stream_file(spec["stderr"])
    elif spec.get("stderr_log"):
        fd_err = log_pipe(spec["stderr_log"])
    else:
        fd_err = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    return (fd_in, fd_out, fd_err), pumps


def stream_file(path: str) -> int:
    """A ``stdout``/``stderr`` mount's file, created or truncated (crunch-run does the same);
    the stream goes there *instead of* the log, untimestamped, as the command wrote it."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)


def _stamp() -> bytes:
    now = time.time_ns()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now // 1_000_000_000))
    return f"{stamp}.{now % 1_000_000_000:09d}Z ".encode()


def _pump_logs(pumps: list[tuple[int, int]]) -> None:
    """Copy the command's output pipes into their log files, timestamping each line, until
    every writer is gone (the whole PID namespace has exited, or the command closed them)."""

    at_start = {r: True for r, _ in pumps}
    dest = dict(pumps)
    poller = select.poll()
    for r in dest:
        poller.register(r, select.POLLIN)
    while dest:
        for r, _events in poller.poll():
            data = os.read(r, 65536)
            if not data:
                poller.unregister(r)
                os.close(r)
                os.close(dest.pop(r))
                continue
            stamp = _stamp()
            out = bytearray()
            lines = data.split(b"\n")
            for i, piece in enumerate(lines):
                last = i == len(lines) - 1
                if last and not piece:
                    break
                if at_start[r]:
                    out += stamp
                out += piece
                if not last:
                    out += b"\n"
                at_start[r] = not last
            view = memoryview(out)
            while view:
                try:
                    view = view[os.write(dest[r], view):]
                except OSError:
                    break  # a full disk must not hang the container: drop the log line


# --------------------------------------------------------------------------- the new root

class RootBuilder:
    """Build the container's filesystem under *root*: its image, its mounts, nothing else.

    The root is an overlay of the image's unpacked layers (read-only, shared by every container
    of the image) with a private upper directory, as a container engine builds it.  The
    container's mounts are bound at their exact paths on top; ``/proc``, ``/sys`` (read-only),
    a minimal ``/dev`` and ``/etc/hosts``/``/etc/resolv.conf`` are what Docker adds.  No host
    directory is visible: not the dispatcher's state, not the leader's files or interpreter.
    """

    def __init__(self, root: str, spec: dict, log: CrunchLog) -> None:
        self.root = root
        self.log = log
        self.layers = [str(d) for d in spec.get("image_layers") or []]
        self.upper = spec.get("rootfs_upper") or ""
        self.work = spec.get("rootfs_work") or ""
        if not self.layers or not self.upper or not self.work:
            raise SetupError("no image root filesystem to run in (image_layers/rootfs_upper missing)")
        self.mounts = []
        for m in spec.get("mounts") or []:
            self.mounts.append({"path": _norm(m["path"]), "source": m["source"],
                                "writable": bool(m.get("writable"))})
        self.mounts.sort(key=lambda m: (_depth(m["path"]), m["path"]))
        self.paths = {m["path"] for m in self.mounts}
        if "/" in self.paths:
            raise SetupError("a mount at '/' is not supported")
        #: Mount points we had to create inside another mount's source (container paths).
        self.placeholders: list[tuple[str, bool]] = []

    def build(self) -> None:
        options = f"lowerdir={':'.join(self.layers)},upperdir={self.upper},workdir={self.work}"
        _mount("overlay", self.root, "overlay", MS_NOSUID, options)
        self._system_mounts()
        self._bind_mounts()

    def _system_mounts(self) -> None:
        """``/proc``, ``/sys``, ``/dev`` and the name-resolution files, as Docker provides them."""
        r = self.root
        for d in ("/proc", "/sys", "/dev", "/etc", "/tmp"):
            if not os.path.isdir(r + d):
                if os.path.lexists(r + d):
                    os.unlink(r + d)
                os.makedirs(r + d, 0o755)
        os.chmod(r + "/tmp", 0o1777)
        _mount("proc", r + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        try:
            _mount("sysfs", r + "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY)
        except SetupError as e:
            self.log(f"/sys not mounted: {e}")
        _mount("tmpfs", r + "/dev", "tmpfs", MS_NOSUID, "mode=0755,size=65536k")
        for name in ("null", "zero", "full", "random", "urandom", "tty"):
            target = f"{r}/dev/{name}"
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o666))
            _mount(f"/dev/{name}", target, None, MS_BIND)
        os.mkdir(r + "/dev/shm", 0o1777)
        _mount("tmpfs", r + "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=65536k")
        os.mkdir(r + "/dev/pts", 0o755)
        for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                             ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
            os.symlink(target, f"{r}/dev/{name}")
        _write_etc(r, "hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
        try:
            with open("/etc/resolv.conf", "rb") as f:
                _write_etc(r, "resolv.conf", f.read().decode("utf-8", "replace"))
        except OSError:
            pass

    def _bind_mounts(self) -> None:
        for m in self.mounts:
            src, path = m["source"], m["path"]
            try:
                st = os.stat(src)
            except OSError as e:
                raise SetupError(f"mount {path}: source {src}: {e.strerror}") from None
            is_dir = stat.S_ISDIR(st.st_mode)
            target = self._mount_point(path)
            inside = self._covered_by_other(path)
            # Missing parents inside another mount's source are created there (like Docker).
            for a in _ancestors(path):
                if not os.path.lexists(self.root + a):
                    os.mkdir(self.root + a, 0o755)
                    if inside:
                        self.placeholders.append((a, True))
            if not os.path.lexists(target):
                if is_dir:
                    os.mkdir(target, 0o755)
                else:
                    os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
                if inside:
                    self.placeholders.append((path, is_dir))
            elif os.path.isdir(target) != is_dir:
                raise SetupError(f"mount {path}: cannot mount a {'directory' if is_dir else 'file'}"
                                 " over an existing entry of another type")
            _mount(src, target, None, MS_BIND | MS_REC)
        # Read-only last, so mount points nested in a read-only mount could be created first.
        for m in self.mounts:
            if not m["writable"]:
                _mount(None, self.root + m["path"], None, MS_REMOUNT | MS_BIND | MS_RDONLY)

    def _mount_point(self, path: str) -> str:
        """*path* under the new root, refusing symlinks on the way (they could lead out)."""
        current = self.root
        for part in path.strip("/").split("/"):
            current = f"{current}/{part}"
            if os.path.islink(current):
                raise SetupError(f"mount {path}: {current[len(self.root):]} is a symlink in the "
                                 "image or a parent mount")
        return current

    def _covered_by_other(self, path: str) -> bool:
        return any(path != q and path.startswith(q + "/") for q in self.paths)


def _write_etc(root: str, name: str, text: str) -> None:
    path = f"{root}/etc/{name}"
    if os.path.islink(path) or os.path.isdir(path):
        return
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def _pivot(root: str) -> None:
    """Make *root* the root of this mount namespace and detach the host's tree."""
    os.chdir(root)
    nr = _SYS_PIVOT_ROOT.get(os.uname().machine)
    if nr is not None and _libc.syscall(ctypes.c_long(nr), b".", b".") == 0:
        _umount(".")
    else:
        os.chroot(".")
    os.chdir("/")


# --------------------------------------------------------------------------- init (PID 1)

def _set_oom_score_adj(value: str) -> str | None:
    """Set our OOM score adjustment; return the previous one (None if unavailable)."""
    try:
        with open("/proc/self/oom_score_adj", "r+") as f:
            old = f.read().strip()
            f.seek(0)
            f.write(value)
        return old
    except OSError:
        return None


def _exec_command(spec: dict, fds: tuple[int, int, int]) -> None:
    """In the forked child: become the container command.  Never returns."""
    try:
        for sig in _FORWARDED + (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)  # Python ignores SIGPIPE; exec would keep that
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        for i, fd in enumerate(fds):
            os.dup2(fd, i)
        os.umask(0o022)
        env = {str(k): str(v) for k, v in (spec.get("environment") or {}).items()}
        env.setdefault("PATH", DEFAULT_PATH)
        env.setdefault("HOME", "/root")
        cwd = spec.get("cwd") or "/"
        if cwd == ".":
            cwd = "/"
        try:
            os.chdir(cwd)
        except FileNotFoundError:
            os.makedirs(cwd, exist_ok=True)  # Docker creates a missing working directory
            os.chdir(cwd)
        argv = [str(a) for a in spec["command"]]
        if not argv:
            os.write(2, b"nsinit: empty command\n")
            os._exit(127)
    except BaseException as e:  # noqa: BLE001 - report anything, then exit like a shell
        os.write(2, f"nsinit: cannot start container command: {e}\n".encode())
        os._exit(126)
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as e:
        os.write(2, f"nsinit: {argv[0]}: {e.strerror}\n".encode("utf-8", "replace"))
        os._exit(127 if e.errno in (errno.ENOENT, errno.ENOTDIR) else 126)
    os._exit(127)


def _init(spec: dict, fds: tuple[int, int, int], status_w: int, go_r: int,
          log: CrunchLog) -> int:
    """PID 1 of the container: build the root, run the command, reap, report its status."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    # If the memory limit is hit, the OOM killer must pick the command, not PID 1 (whose
    # death would look like a lost container); the command gets the old score back.
    oom_adj = _set_oom_score_adj("-1000")
    cmd_pid = 0
    pending: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        if cmd_pid:
            try:
                os.kill(cmd_pid, signum)
            except ProcessLookupError:
                pass
        else:
            pending.append(signum)

    for sig in _FORWARDED:
        signal.signal(sig, forward)

    result: dict = {}
    try:
        # A mount namespace of its own: pivot_root moves the root of every process sharing the
        # namespace, and the monitor must stay on the host (cgroups, log files, its imports).
        _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
        _mount(None, "/", None, MS_REC | MS_PRIVATE)
        root = spec.get("ns_root_dir") or DEFAULT_NS_ROOT_DIR
        os.makedirs(root, exist_ok=True)
        builder = RootBuilder(root, spec, log)
        builder.build()
        _mount(None, root, None, MS_UNBINDABLE)
        _pivot(root)
    except (SetupError, OSError) as e:
        result = {"error": f"container setup failed: {e}"}
        os.write(status_w, json.dumps(result).encode())
        return SETUP_FAILED

    if os.read(go_r, 1) != b"g":  # the monitor is gone: do not start anything
        return SETUP_FAILED
    os.close(go_r)
    cmd_pid = os.fork()
    if cmd_pid == 0:
        if oom_adj is not None:
            _set_oom_score_adj(oom_adj)
        _exec_command(spec, fds)
    for fd in fds:
        os.close(fd)
    for signum in pending:
        forward(signum, None)

    status = 0
    while True:  # reap everything; stop when the command itself exits
        try:
            pid, st = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        if pid == cmd_pid:
            status = st
            break

    # Remove mount points we created inside other mounts' sources, so they do not show up
    # in the output (best effort: everything still in the namespace dies when we exit).
    for path, is_dir in reversed(builder.placeholders):
        try:
            if path in builder.paths:
                _umount(path)
            if is_dir:
                os.rmdir(path)
            elif os.stat(path).st_size == 0:
                os.unlink(path)
        except (OSError, SetupError):
            pass

    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        result = {"exit_code": 128 + signum, "signal": signum, "core_dumped": os.WCOREDUMP(status)}
    else:
        result = {"exit_code": os.waitstatus_to_exitcode(status), "signal": None}
    os.write(status_w, json.dumps(result).encode())
    return 0


# --------------------------------------------------------------------------- monitor

def process_start(pid: int, running: bool = False) -> int:
    """When process *pid* started (clock ticks since boot, /proc/PID/stat field 22): with the
    pid, it names one process for good, though pids are reused. 0 if there is no such process
    (or, with *running*, if it has exited and waits to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return 0 if running and fields[0] == b"Z" else int(fields[19])
    except (OSError, IndexError, ValueError):
        return 0


def _write_atomically(path: str | None, data: dict) -> None:
    """*data* as JSON at *path*, whole or not at all (a reader never sees half a file)."""
    if not path:
        return
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as f:
            f.write(json.dumps(data))
        os.replace(tmp, path)
    except OSError:
        pass


def _describe(spec: dict) -> str:
    return (f"runtime: namespace; image {spec.get('image') or '(none)'} ({len(spec.get('image_layers') or [])} "
            "layer(s)) as the root filesystem, own mount and PID namespaces; "
            + ("network: host (the container has API access)" if spec.get("api")
               else "network: none (no API access requested)"))


def _namespaces(spec: dict) -> int:
    """What the container unshares. As crunch-run (``EnableNetwork`` only with
    ``runtime_constraints.API``; Docker ``--network none``, Singularity ``--network=none``
    otherwise), a container without API access gets a network namespace of its own with only a
    loopback interface: it cannot reach the cluster, the host's services or the Internet."""
    return CLONE_NEWNS | CLONE_NEWPID | (0 if spec.get("api") else CLONE_NEWNET)


def _loopback_up() -> None:
    """Bring ``lo`` up in this (new) network namespace, as Docker's "none" network has it."""
    fd = _libc.socket(AF_INET, SOCK_DGRAM, 0)
    _check(0 if fd >= 0 else fd, "socket()")
    try:
        ifreq = ctypes.create_string_buffer(b"lo", 40)
        _check(_libc.ioctl(fd, SIOCGIFFLAGS, ifreq), "ioctl(SIOCGIFFLAGS, lo)")
        flags = int.from_bytes(ifreq.raw[16:18], sys.byteorder) | IFF_UP
        ctypes.memmove(ctypes.addressof(ifreq) + 16, flags.to_bytes(2, sys.byteorder), 2)
        _check(_libc.ioctl(fd, SIOCSIFFLAGS, ifreq), "ioctl(SIOCSIFFLAGS, lo)")
    finally:
        os.close(fd)


def main(argv: list[str]) -> int:
    """Monitor: unshare, fork the init, relay its outcome as one JSON line on stdout."""
    child = 0
    killed = False

    def on_term(signum: int, _frame: object) -> None:
        nonlocal killed
        killed = True
        if child:
            try:
                os.kill(child, signal.SIGKILL)  # kernel then kills the whole PID namespace
            except ProcessLookupError:
                pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_term)
    # No PR_SET_PDEATHSIG: as crunch-run outlives a dispatcher that stops or crashes, the
    # container keeps running; the next cluster process adopts it (runner_file, status_file).

    if len(argv) != 2:
        print("usage: nsinit SPEC.json|-", file=sys.stderr)
        return 2
    if argv[1] == "-":
        spec = json.loads(sys.stdin.buffer.read())
    else:
        with open(argv[1], "rb") as f:
            spec = json.loads(f.read())

    log = CrunchLog(spec.get("crunch_log"))
    _write_atomically(spec.get("runner_file"), {"pid": os.getpid(), "start": process_start(os.getpid())})

    def report(result: dict, code: int) -> int:
        # The file first: whoever runs the cluster when the container ends reads it there.
        _write_atomically(spec.get("status_file"), result)
        try:
            os.write(1, (json.dumps(result) + "\n").encode())
        except OSError:
            pass  # the dispatcher that started us is gone
        return code

    log(_describe(spec))
    for line in spec.get("limits_log") or []:
        log(line)
    try:
        fds, pumps = _open_files(spec)
        flags = _namespaces(spec)
        _check(_libc.unshare(flags), f"unshare({flags:#x})")
        if flags & CLONE_NEWNET:
            _loopback_up()
        _mount(None, "/", None, MS_REC | MS_PRIVATE)
    except (OSError, SetupError) as e:
        log(f"container setup failed: {e}")
        return report({"error": f"container setup failed: {e}"}, SETUP_FAILED)
    if killed:
        return report({"exit_code": 128 + signal.SIGKILL, "signal": signal.SIGKILL,
                       "killed": True}, 128 + signal.SIGKILL)

    status_r, status_w = os.pipe()
    go_r, go_w = os.pipe()
    log(f"running {json.dumps(spec.get('command'))} in {spec.get('cwd') or '/'}")
    child = os.fork()
    if child == 0:
        os.close(status_r)
        os.close(go_w)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        code = 1
        try:
            code = _init(spec, fds, status_w, go_r, log)
        except BaseException as e:  # noqa: BLE001 - never let PID 1 unwind into the monitor
            try:
                os.write(status_w, json.dumps({"error": f"nsinit failed: {e!r}"}).encode())
            except OSError:
                pass
        os._exit(code)

    os.close(status_w)
    os.close(go_r)
    for fd in fds:
        os.close(fd)
    # Move the init into the limit cgroups while it builds its root (a cgroup v1 migration
    # costs ~6 ms each, so doing it here rather than before the fork hides that latency);
    # it waits for "go" before forking the command, so everything it starts is inside.
    for procs in spec.get("cgroup_procs") or []:
        try:
            with open(procs, "w") as f:
                f.write(str(child))
        except OSError as e:
            log(f"could not join cgroup {os.path.dirname(procs)}: {e}; limit not enforced")
    try:
        os.write(go_w, b"g")
    except OSError:
        pass
    os.close(go_w)
    if killed:  # SIGTERM arrived while forking
        on_term(signal.SIGTERM, None)
    _pump_logs(pumps)
    while True:
        try:
            _, st = os.waitpid(child, 0)
            break
        except ChildProcessError:
            st = 0
            break
    chunks = []
    while True:
        b = os.read(status_r, 65536)
        if not b:
            break
        chunks.append(b)
    raw = b"".join(chunks)
    result = json.loads(raw) if raw else {}
    if killed:
        result = {"exit_code": 128 + signal.SIGKILL, "signal": signal.SIGKILL, "killed": True}
        log("container killed (cancelled): SIGKILL sent to its PID namespace")
    elif "error" in result:
        log(result["error"])
        return report(result, SETUP_FAILED)
    elif not result:
        signum = os.WTERMSIG(st) if os.WIFSIGNALED(st) else None
        msg = (f"container init died unexpectedly (signal {signal.Signals(signum).name})"
               if signum else f"container init died unexpectedly (status {st})")
        log(msg)
        code = 128 + signum if signum else SETUP_FAILED
        return report({"lost": True, "message": msg, "exit_code": code, "signal": signum}, code)
    if result.get("signal"):
        name = signal.Signals(result["signal"]).name
        log(f"container command killed by signal {result['signal']} ({name}); "
            f"exit code {result['exit_code']}")
        result["signal_name"] = name
    else:
        log(f"container command exited with code {result['exit_code']}")
    return report(result, result["exit_code"])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
