"""The image build cache under ``~/.cache/toil-arvados``: shared by every build and cluster on
the machine (and by concurrent ones: everything written there is guarded by a file lock and
appears by rename)."""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

from .archive import sha256_file

DEFAULT_CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "toil-arvados"


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on *path* (across processes: builds share one cache)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def cached_sha256(path: Path) -> str:
    """sha256 of a cached file, remembered beside it (keyed by size and mtime)."""
    st = path.stat()
    memo = path.with_name(path.name + ".sha256")
    key = f"{st.st_size}-{st.st_mtime_ns}"
    try:
        saved_key, digest = memo.read_text().split()
        if saved_key == key:
            return digest
    except (OSError, ValueError):
        pass
    digest = sha256_file(path)
    memo.write_text(f"{key} {digest}\n")
    return digest
