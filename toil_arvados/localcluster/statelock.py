"""One cluster process per state directory: an exclusive ``flock`` on ``<state dir>/lock``.

Why a lock and not only ``server.pid``: two processes writing one SQLite file and one Keep
directory would each keep their own in-memory view and hand out the same log ids; a pid file
cannot prevent that (it is written late, and survives a ``kill -9``, when its pid may be reused).
The kernel drops a ``flock`` when its holder dies however it dies, so a crashed cluster never
leaves a stale lock behind.
"""
from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

LOCK_FILE = "lock"
PID_FILE = "server.pid"


class StateDirLocked(Exception):
    """Another live process holds the state directory."""

    def __init__(self, state_dir: Path, pid: int | None) -> None:
        who = f"process {pid}" if pid else "another process"
        super().__init__(f"the cluster state directory {state_dir} is in use by {who}: "
                         "stop it with `toil-arvados cluster down` first")
        self.pid = pid


def acquire(state_dir: Path) -> int:
    """Lock ``state_dir`` for this process's lifetime and record our pid; returns the lock's fd
    (keep it open). Raises :class:`StateDirLocked` if another process holds it."""
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + 0.5  # a `status` probe holds the lock for microseconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise StateDirLocked(state_dir, recorded_pid(state_dir)) from None
            time.sleep(0.01)
    tmp = state_dir / f".{PID_FILE}.tmp"
    tmp.write_text(str(os.getpid()))
    os.replace(tmp, state_dir / PID_FILE)
    return fd


def holder(state_dir: Path) -> int | None:
    """The pid of the process holding ``state_dir`` (0 if unknown), or None if nobody does."""
    path = Path(state_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return recorded_pid(Path(state_dir)) or 0
    finally:
        os.close(fd)  # also releases our probe's shared lock
    return None


def recorded_pid(state_dir: Path) -> int | None:
    try:
        return int((Path(state_dir) / PID_FILE).read_text())
    except (OSError, ValueError):
        return None
