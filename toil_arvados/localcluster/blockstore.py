"""Content-addressed on-disk Keep block storage.

Blocks live at ``root/<md5[:3]>/<md5>`` like keepstore's unix volumes.
Writes go to a temp file in the same directory, fsynced, renamed into place and
the directory fsynced, so readers never observe partial blocks, a block a PUT
confirmed survives a crash, and concurrent writers of the same block (same
content by definition) are harmless. Reads check the content against its md5,
as keepstore does: a damaged block file is an error, never wrong bytes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

BLOCK_SIZE = 64 * 1024 * 1024
EMPTY_MD5 = "d41d8cd98f00b204e9800998ecf8427e"
_HEX = frozenset("0123456789abcdef")


class BlockHashMismatch(ValueError):
    """Data did not hash to the digest the caller claimed."""


class BlockCorrupt(OSError):
    """A stored block no longer hashes to its name (disk damage, a stray write)."""

    def __init__(self, md5: str) -> None:
        super().__init__(f"checksum mismatch in stored data: block {md5}")
        self.md5 = md5


def _check_md5(md5: str) -> str:
    if len(md5) != 32 or not _HEX.issuperset(md5):
        raise ValueError(f"not an md5 hex digest: {md5!r}")
    return md5


class BlockStore:
    """Blocks on a local filesystem, addressed by md5 hex digest."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        # Blocks whose file was hashed and found intact, keyed by what changes if the file does
        # (inode, size, mtime): segment reads of a block then hash it once, not per segment.
        self._verified: dict[str, tuple[int, int, int]] = {}

    def remove_partial_writes(self) -> int:
        """Delete the temp files of PUTs a crash interrupted (``<dir>/.<md5>.*``); none of them
        was ever a block, since a block appears only by rename. Call it while no PUT runs (at
        start, under the state directory's lock). Returns how many were removed."""
        removed = 0
        for tmp in self.root.glob("*/.*"):
            try:
                tmp.unlink()
                removed += 1
            except OSError:
                pass
        return removed

    def path(self, md5: str) -> Path:
        _check_md5(md5)
        return self.root / md5[:3] / md5

    def exists(self, md5: str) -> bool:
        # The empty block needs no storage; Keep treats it as always present.
        return md5 == EMPTY_MD5 or self.path(md5).is_file()

    def size(self, md5: str) -> int:
        if md5 == EMPTY_MD5:
            return 0
        return self.path(md5).stat().st_size

    def put(self, data: bytes | bytearray | memoryview, expected_md5: str | None = None) -> str:
        """Store ``data``; returns its md5.  Idempotent.

        Hashing and writing take buffer views, so a 64 MiB block is never
        copied here; both release the GIL, so callers may run this in a
        thread pool.
        """
        md5 = hashlib.md5(data).hexdigest()
        if expected_md5 is not None and md5 != expected_md5:
            raise BlockHashMismatch(f"data hashes to {md5}, expected {expected_md5}")
        if md5 == EMPTY_MD5 or self._intact(md5):
            return md5
        dest = self.path(md5)
        if not dest.parent.is_dir():
            dest.parent.mkdir(exist_ok=True)
            _fsync_dir(self.root)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{md5}.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o444)
            os.replace(tmp, dest)  # also replaces a damaged copy
            _fsync_dir(dest.parent)
            # Its bytes were hashed just above: the first read need not hash them again.
            self._verified[md5] = _identity(dest.stat())
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        logger.debug("stored block %s+%d", md5, len(data))
        return md5

    def get(self, md5: str) -> bytes:
        """The block's bytes; :class:`BlockCorrupt` if they no longer hash to ``md5``."""
        if md5 == EMPTY_MD5:
            return b""
        path = self.path(md5)
        with open(path, "rb") as f:
            data = f.read()
            key = _identity(os.fstat(f.fileno()))
        if hashlib.md5(data).hexdigest() != md5:
            self._verified.pop(md5, None)
            logger.error("block %s is corrupt (%s)", md5, path)
            raise BlockCorrupt(md5)
        self._verified[md5] = key
        return data

    def verify(self, md5: str) -> None:
        """Raise :class:`BlockCorrupt` unless the stored block hashes to ``md5`` (hashed once
        while its file is unchanged)."""
        if md5 == EMPTY_MD5:
            return
        if self._verified.get(md5) != _identity(self.path(md5).stat()):
            self.get(md5)

    def _intact(self, md5: str) -> bool:
        """True if the block is stored and intact (a PUT of a damaged block rewrites it)."""
        try:
            self.verify(md5)
        except (FileNotFoundError, BlockCorrupt):
            return False
        return True

    def read_segment(self, md5: str, offset: int, length: int) -> bytes:
        if length == 0:
            return b""
        self.verify(md5)
        with open(self.path(md5), "rb") as f:
            f.seek(offset)
            data = f.read(length)
        if len(data) != length:
            raise ValueError(f"block {md5} shorter than {offset}+{length}")
        return data

    def copy_segment_to(self, md5: str, offset: int, length: int, out_fd: int) -> None:
        """Append a block range to an open file without user-space copies."""
        if length == 0:
            return
        self.verify(md5)
        with open(self.path(md5), "rb") as f:
            _copy_range(f.fileno(), offset, length, out_fd)


def _identity(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _fsync_dir(path: Path) -> None:
    """Make a rename or new entry in ``path`` durable (the file's own fsync does not)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_range(in_fd: int, offset: int, length: int, out_fd: int) -> None:
    remaining = length
    try:
        while remaining:
            n = os.copy_file_range(in_fd, out_fd, remaining, offset)
            if n == 0:
                raise ValueError("block shorter than segment")
            offset += n
            remaining -= n
        return
    except OSError as e:  # e.g. EXDEV on old kernels, unsupported filesystems
        logger.debug("copy_file_range unavailable (%s); falling back to pread", e)
    while remaining:
        chunk = os.pread(in_fd, min(remaining, 8 << 20), offset)
        if not chunk:
            raise ValueError("block shorter than segment")
        view = memoryview(chunk)
        while view:
            view = view[os.write(out_fd, view):]
        offset += len(chunk)
        remaining -= len(chunk)
