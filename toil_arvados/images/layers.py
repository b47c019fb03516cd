"""Image layers unpacked once per layer, shared by every container that uses them.

crunch-run runs a container in its image only: with Docker it loads the ``docker save`` archive
from Keep, with Singularity it converts the same archive once and caches it.  The namespace
runtime does what a container engine's layer store does: each layer of the archive is unpacked
once, into ``<cache>/<diff id>``, after its bytes are checked against the diff id the image
config names (so a forged archive cannot poison the cache), with Docker's whiteout files turned
into overlayfs whiteouts.  A container's root is then an overlay of its image's layers with a
private upper directory: it sees the image and its mounts, nothing of the host.

Thread safety: :meth:`LayerCache.unpack` may run in several dispatcher threads (and processes:
every cluster on the machine may share one cache); a per-layer ``flock`` and an atomic rename of
a finished directory make that safe.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from .cache import locked
from .archive import ArchiveError, RunSettings, layer_stream, read_index, run_settings

logger = logging.getLogger(__name__)

#: Shared by every cluster on the machine (like a node's image cache); TOIL_ARVADOS_LAYER_CACHE
#: moves it (the benchmark uses a fresh one to time unpacking).
DEFAULT_LAYER_CACHE = Path(os.environ.get("TOIL_ARVADOS_LAYER_CACHE") or
                           Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser()
                           / "toil-arvados" / "layers")
_WHITEOUT = ".wh."
_OPAQUE = ".wh..wh..opq"


@dataclass(frozen=True)
class UnpackedImage:
    """An image ready to run: its layer directories (top first) and its run settings."""

    image_id: str
    layers: tuple[str, ...]
    settings: RunSettings
    #: Seconds spent unpacking layers for this call (0.0 when all were cached).
    unpack_seconds: float


class LayerCache:
    """Unpacked layers under one directory, keyed by diff id."""

    def __init__(self, root: Path = DEFAULT_LAYER_CACHE) -> None:
        self.root = Path(root)

    def unpack(self, tarball: Path) -> UnpackedImage:
        """Every layer of the archive at *tarball*, unpacking those not cached yet."""
        started = time.monotonic()
        spent = False
        with open(tarball, "rb") as f:
            index = read_index(f)
            dirs = []
            for diff_id, member in index.layers:
                target, made = self._layer(f, diff_id, member)
                spent = spent or made
                dirs.append(str(target))
        return UnpackedImage(index.image_id, tuple(reversed(dirs)), run_settings(index.config),
                             time.monotonic() - started if spent else 0.0)

    def unpack_layer_tar(self, path: Path, diff_id: str) -> Path:
        """A single layer tar (not an image archive), unpacked once."""
        def chunks() -> Iterator[bytes]:
            with open(path, "rb") as f:
                yield from iter(lambda: f.read(1 << 20), b"")
        return self._ensure(diff_id, chunks)[0]

    def _layer(self, f, diff_id: str, member: str) -> tuple[Path, bool]:
        return self._ensure(diff_id, lambda: layer_stream(f, member))

    def _ensure(self, diff_id: str, chunks: Callable[[], Iterator[bytes]]) -> tuple[Path, bool]:
        if len(diff_id) != 64 or any(c not in "0123456789abcdef" for c in diff_id):
            raise ArchiveError(f"bad layer diff id {diff_id!r}")
        target = self.root / diff_id
        if target.is_dir():
            return target, False
        self.root.mkdir(parents=True, exist_ok=True)
        with locked(self.root / f".{diff_id}.lock"):
            if target.is_dir():
                return target, False
            partial = self.root / f".{diff_id}.partial"
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir()
            try:
                _extract_verified(chunks(), partial, diff_id)
                _convert_whiteouts(partial)
                partial.rename(target)
            except BaseException:
                shutil.rmtree(partial, ignore_errors=True)
                raise
        logger.info("unpacked image layer %s into %s", diff_id[:12], target)
        return target, True


def _extract_verified(chunks: Iterator[bytes], dest: Path, diff_id: str) -> None:
    """Feed the layer to GNU tar while hashing it; refuse it if the hash is not *diff_id*.

    GNU tar (not Python's tarfile) for speed, and because it already refuses ``..`` members and
    defers symlinks that point outside the tree.  Ownership and modes are kept (we run as root).
    """
    h = hashlib.sha256()
    proc = subprocess.Popen(["tar", "--numeric-owner", "-xpf", "-", "-C", str(dest)],
                            stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stderr is not None
    try:
        for chunk in chunks:
            h.update(chunk)
            proc.stdin.write(chunk)
    except BrokenPipeError:
        pass
    finally:
        proc.stdin.close()
    err = proc.stderr.read().decode(errors="replace").strip()
    if proc.wait() != 0:
        raise ArchiveError(f"unpacking layer {diff_id[:12]} failed: {err.splitlines()[-1:] or ''}")
    if h.hexdigest() != diff_id:
        raise ArchiveError(f"layer {diff_id[:12]} does not match its diff id (got {h.hexdigest()[:12]})")


def _convert_whiteouts(root: Path) -> None:
    """Docker's ``.wh.NAME`` files -> overlayfs whiteouts (0/0 character devices); opaque
    directory markers -> the ``trusted.overlay.opaque`` attribute."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*filenames, *dirnames]:
            if not name.startswith(_WHITEOUT):
                continue
            path = os.path.join(dirpath, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
            if name == _OPAQUE:
                os.setxattr(dirpath, "trusted.overlay.opaque", b"y")
            else:
                os.mknod(os.path.join(dirpath, name[len(_WHITEOUT):]), 0o600 | 0o020000,
                         os.makedev(0, 0))
