"""Content-addressed on-disk Keep block storage.

Blocks live at ``root/<md5[:3]>/<md5>`` like keepstore's unix volumes.
Writes go to a temp file in the same directory and are renamed into place,
so readers never observe partial blocks and concurrent writers of the same
block (same content by definition) are harmless.
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


def _check_md5(md5: str) -> str:
    if len(md5) != 32 or not _HEX.issuperset(md5):
        raise ValueError(f"not an md5 hex digest: {md5!r}")
    return md5


class BlockStore:
    """Blocks on a local filesystem, addressed by md5 hex digest."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

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
        if md5 == EMPTY_MD5 or self.path(md5).is_file():
            return md5
        dest = self.path(md5)
        dest.parent.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{md5}.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o444)
            os.replace(tmp, dest)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        logger.debug("stored block %s+%d", md5, len(data))
        return md5

    def get(self, md5: str) -> bytes:
        if md5 == EMPTY_MD5:
            return b""
        return self.path(md5).read_bytes()

    def read_segment(self, md5: str, offset: int, length: int) -> bytes:
        if length == 0:
            return b""
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
        with open(self.path(md5), "rb") as f:
            _copy_range(f.fileno(), offset, length, out_fd)


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
