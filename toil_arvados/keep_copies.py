"""Local copies of Keep files, remembered so that storing one again references its blocks.

A native CWL step's outputs are in its container's output collection. cwltool binds outputs
from local files (globs, ``loadContents``, checksums), so the leader copies the collection into
the step's output directory; Toil then stores each output File in the job store. Without this
module that store would upload the bytes the leader has just read from Keep. With it, the job
store (``KeepJobStore.write_file``) asks :func:`manifest_of` first and, for a copy that is still
exactly as it was written, saves a record pointing at the same Keep blocks: no bytes go back.

"Exactly as written" is checked by the file's identity and state (device, inode, size,
modification and change times, in nanoseconds): a copy changed since, replaced or moved is
simply uploaded. Thread-safe (the leader runs steps in threads); bounded, oldest forgotten first.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Any

MAX_ENTRIES = 100_000  # a few hundred bytes each

_lock = threading.Lock()
_copies: OrderedDict[str, tuple[tuple[int, ...], str]] = OrderedDict()  # path -> (state, manifest)


def _state(path: str) -> tuple[int, ...] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def remember(path: str, manifest_text: str) -> None:
    """``path`` now holds a copy of the one file ``manifest_text`` describes (signed locators)."""
    state = _state(path)
    if state is None:
        return
    key = os.path.abspath(path)
    with _lock:
        _copies[key] = (state, manifest_text)
        _copies.move_to_end(key)
        while len(_copies) > MAX_ENTRIES:
            _copies.popitem(last=False)


def manifest_of(path: str) -> str | None:
    """The one-file manifest of the Keep file ``path`` is an unchanged copy of, else None."""
    key = os.path.abspath(path)
    with _lock:
        entry = _copies.get(key)
    if entry is None:
        return None
    if _state(path) != entry[0]:
        with _lock:
            _copies.pop(key, None)
        return None
    return entry[1]


def copy_collection(reader: Any, dest: str) -> int:
    """Write every file of the SDK collection ``reader`` under ``dest``, remembering each copy;
    returns the number of files."""
    count = 0
    os.makedirs(dest, exist_ok=True)
    for name, item in reader.items():
        target = os.path.join(dest, name)
        if hasattr(item, "items"):
            count += copy_collection(item, target)
            continue
        with reader.open(name, "rb") as src, open(target, "wb") as out:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                out.write(chunk)
        remember(target, item.manifest_text())
        count += 1
    return count
