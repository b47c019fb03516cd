"""Convert between collections (manifest + blocks) and local directory trees.

``materialize`` presents a collection mount to a container; it copies block
ranges kernel-side (``copy_file_range``) so even multi-GiB files never pass
through Python memory.  ``upload_directory`` captures container output: file
contents are streamed into 64 MiB blocks in manifest order, small files
sharing blocks, large files spanning them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

from . import manifest as mf
from .blockstore import BLOCK_SIZE, BlockStore

logger = logging.getLogger(__name__)

_READ_CHUNK = 8 << 20
_MIN_BUFFER = 64 << 10


def materialize(manifest_text: str, blockstore: BlockStore, dest: Path) -> None:
    """Write the collection's files and (empty) directories under ``dest``.

    Manifest parsing rejects ``..`` and absolute names, so nothing can be
    written outside ``dest``.
    """
    dest = Path(dest)
    tree = mf.parse(manifest_text)
    dest.mkdir(parents=True, exist_ok=True)
    for d in sorted(tree.dirs):
        if d:
            (dest / d).mkdir(parents=True, exist_ok=True)
    for path, segments in tree.files.items():
        fd = os.open(dest / path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for seg in segments:
                blockstore.copy_segment_to(seg.locator[:32], seg.offset, seg.length, fd)
        finally:
            os.close(fd)


class _BlockPacker:
    """Accumulates file bytes into blocks of at most BLOCK_SIZE."""

    def __init__(self, blockstore: BlockStore, size_hint: int = BLOCK_SIZE) -> None:
        self.store = blockstore
        # The buffer grows to BLOCK_SIZE only as bytes come: a 64 MiB zero-filled buffer per
        # upload was most of the cluster's CPU when containers write a few bytes of output.
        self.buf = bytearray(max(_MIN_BUFFER, min(BLOCK_SIZE, size_hint)))
        self.view = memoryview(self.buf)
        self.fill = 0
        # Segments waiting for the current block's locator: (path, offset, length).
        self.pending: list[tuple[str, int, int]] = []
        self.files: dict[str, list[mf.Segment]] = {}

    def add_file(self, path: str, src: Path) -> None:
        self.files.setdefault(path, [])
        with open(src, "rb", buffering=0) as f:
            while True:
                if self.fill == BLOCK_SIZE:
                    self.flush()
                elif self.fill == len(self.buf):
                    self._grow()
                room = min(_READ_CHUNK, len(self.buf) - self.fill)
                n = f.readinto(self.view[self.fill:self.fill + room])
                if not n:
                    break
                if self.pending and self.pending[-1][0] == path and \
                        self.pending[-1][1] + self.pending[-1][2] == self.fill:
                    p, off, ln = self.pending[-1]
                    self.pending[-1] = (p, off, ln + n)
                else:
                    self.pending.append((path, self.fill, n))
                self.fill += n

    def _grow(self) -> None:
        """Double the buffer (up to BLOCK_SIZE), keeping what it holds: block boundaries stay
        every BLOCK_SIZE bytes whatever the buffer's size."""
        bigger = bytearray(min(BLOCK_SIZE, 2 * len(self.buf)))
        bigger[:self.fill] = self.view[:self.fill]
        self.view.release()
        self.buf, self.view = bigger, memoryview(bigger)

    def flush(self) -> None:
        if not self.fill:
            return
        md5 = self.store.put(self.view[:self.fill])
        locator = f"{md5}+{self.fill}"
        for path, off, ln in self.pending:
            self.files[path].append(mf.Segment(locator, off, ln))
        self.pending.clear()
        self.fill = 0


def _walk(src: Path, rel: str, active: set[tuple[int, int]],
          out_files: list[tuple[str, Path]], out_dirs: set[str]) -> None:
    """Depth-first, files before subdirectories, both sorted: manifest order."""
    st = src.stat()
    key = (st.st_dev, st.st_ino)
    if key in active:
        logger.warning("skipping symlink loop at %s", src)
        return
    active.add(key)
    out_dirs.add(rel)
    files, dirs = [], []
    for entry in os.scandir(src):
        try:
            is_dir = entry.is_dir()  # follows symlinks
            is_file = entry.is_file()
        except OSError:
            is_dir = is_file = False
        if is_dir:
            dirs.append(entry.name)
        elif is_file:
            files.append(entry.name)
        else:
            logger.warning("skipping %s: not a regular file or directory", entry.path)
    for name in sorted(files):
        out_files.append((f"{rel}/{name}" if rel else name, src / name))
    for name in sorted(dirs):
        _walk(src / name, f"{rel}/{name}" if rel else name, active, out_files, out_dirs)
    active.discard(key)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def upload_directory(src: Path, blockstore: BlockStore,
                     include: Callable[[str], bool] | None = None) -> str:
    """Store a directory tree in Keep; returns normalized, unsigned manifest text.

    Symlinks to files and directories are followed (as Arvados does for
    container output); dangling links, sockets, etc. are skipped. ``include``
    (e.g. an ``output_glob`` matcher) keeps only the relative paths it accepts;
    directories are then kept only where something inside them is.
    """
    files: list[tuple[str, Path]] = []
    dirs: set[str] = set()
    _walk(Path(src), "", set(), files, dirs)
    if include is not None:
        files = [(rel, path) for rel, path in files if include(rel)]
        dirs = {d for d in dirs if include(d) if d} | {
            "/".join(rel.split("/")[:n]) for rel, _ in files for n in range(1, rel.count("/") + 1)}
    packer = _BlockPacker(blockstore, size_hint=sum(_size(path) for _, path in files))
    for rel, path in files:
        packer.add_file(rel, path)
    packer.flush()
    tree = mf.ManifestTree(files=packer.files, dirs=dirs | {""})
    return mf.render(tree)
