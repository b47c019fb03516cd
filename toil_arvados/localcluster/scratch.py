"""A container's scratch space: one filesystem as large as its ``tmp`` mounts ask, no larger.

On Arvados a container's ``tmp`` mounts live on its node's scratch disk, which dispatch-cloud
sizes from the sum of their capacities; a container that writes more finds the disk full.  Here
the same limit is a real one: each container gets a sparse ext4 image of that size, loop-mounted
under its work directory, and its ``tmp`` mounts are directories in it.  Writing past the
capacity fails with ENOSPC inside the container, as on a full node.

Where loop devices are unavailable (some sandboxes), the tmp mounts are plain directories and the
container's log says the capacity is not enforced.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterable

logger = logging.getLogger(__name__)

#: ext4's own metadata (inode tables, bitmaps; no journal) on top of the capacity asked for:
#: measured at 3-10% of the image, plus a fixed part that matters for tiny ones.
_OVERHEAD_FRACTION = 0.10
_OVERHEAD_FIXED = 1 << 20


def image_size(capacity: int) -> int:
    """Bytes of the image file that leaves at least about *capacity* bytes usable."""
    return capacity + int(capacity * _OVERHEAD_FRACTION) + _OVERHEAD_FIXED


class Scratch:
    """The scratch filesystem of one container (or a plain directory when not enforceable)."""

    def __init__(self, workdir: Path, capacity: int) -> None:
        self.root = workdir / "scratch"
        self.image = workdir / "scratch.img"
        self.capacity = capacity
        self.mounted = False
        self.note = ""

    def create(self) -> None:
        """Make the filesystem; on failure, fall back to a directory and say why in ``note``."""
        self.root.mkdir(parents=True, exist_ok=True)
        if self.capacity <= 0:
            return
        try:
            with open(self.image, "wb") as f:
                f.truncate(image_size(self.capacity))
            _run("mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal",
                 "-E", "lazy_itable_init=1,nodiscard", str(self.image))
            _run("mount", "-o", "loop,nosuid,nodev", str(self.image), str(self.root))
            self.mounted = True
            os.chmod(self.root, 0o755)
            shutil.rmtree(self.root / "lost+found", ignore_errors=True)
            self.note = f"enforcing tmp capacity: {self.capacity} bytes of scratch space"
        except (OSError, subprocess.CalledProcessError) as e:
            self.image.unlink(missing_ok=True)
            self.note = (f"tmp capacity {self.capacity} bytes requested: not enforced "
                         f"(no loop-mounted scratch filesystem: {_why(e)})")

    def state(self) -> dict:
        """What :meth:`restore` needs in another process (the container outlived this one)."""
        return {"capacity": self.capacity, "mounted": self.mounted}

    @classmethod
    def restore(cls, workdir: Path, state: dict) -> "Scratch":
        scratch = cls(workdir, int(state.get("capacity") or 0))
        scratch.mounted = bool(state.get("mounted"))
        return scratch

    def release(self) -> None:
        """Unmount and delete (idempotent)."""
        if self.mounted:
            try:
                _run("umount", str(self.root))
            except subprocess.CalledProcessError:
                _run_quiet("umount", "-l", str(self.root))
            self.mounted = False
        self.image.unlink(missing_ok=True)


def release_leftovers(work_root: Path, keep: Iterable[Path] = ()) -> None:
    """After a crash: unmount scratch filesystems left under the containers' work directories,
    except under those in *keep* (containers still running, adopted by this process)."""
    try:
        with open("/proc/self/mounts") as f:
            points = [line.split()[1] for line in f]
    except OSError:
        return
    prefix = str(work_root.resolve()) + "/"
    kept = tuple(str(Path(k).resolve()) + "/" for k in keep)
    for point in sorted((p for p in points if p.startswith(prefix)), reverse=True):
        if not point.startswith(kept):  # an empty tuple matches nothing
            _run_quiet("umount", "-l", point)


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def _run_quiet(*argv: str) -> None:
    subprocess.run(argv, check=False, capture_output=True)


def _why(e: BaseException) -> str:
    if isinstance(e, subprocess.CalledProcessError):
        return (e.stderr or b"").decode(errors="replace").strip().splitlines()[-1:][0] if e.stderr else str(e)
    return str(e)
