"""Where a container's mounts are on the host, and the mount points made for nested mounts.

Helpers of the dispatcher that need no dispatcher state: which mount covers a path inside the
container (the longest prefix, as the kernel resolves it), where that path is on the host, the
files literal (``json``/``text``) mounts and the standard streams are written to, and the mount
points created inside writable mounts (and removed again so they are not mistaken for output).
"""
from __future__ import annotations

import json
import os
from pathlib import Path


def norm(path: str) -> str:
    return path.rstrip("/") or "/"


def covering_mount(container_path: str, mounts: list[dict]) -> dict | None:
    """The mount whose target is the longest prefix of *container_path* (what the command sees)."""
    best = None
    for m in mounts:
        p = norm(m["path"])
        if container_path == p or container_path.startswith(p.rstrip("/") + "/"):
            if best is None or len(p) > len(norm(best["path"])):
                best = m
    return best


def make_mount_points(mounts: list[dict]) -> list[tuple[Path, bool]]:
    """Create the mount points of mounts nested in a writable mount, in that mount's host
    directory (``inputs/a.txt`` in the output tmp directory for ``/var/spool/cwl/inputs/a.txt``).

    Why here and not in the runtime: both runtimes then find a target of the right type (file or
    directory) to bind over, whatever the engine would do with a missing one, and we know which
    ones to remove afterwards so they do not show up in the output as stray empty entries.
    Returns what was created, outermost first.
    """
    created: list[tuple[Path, bool]] = []
    for m in sorted(mounts, key=lambda m: norm(m["path"]).count("/")):
        path = norm(m["path"])
        outer = covering_mount(path, [o for o in mounts if norm(o["path"]) != path])
        if outer is None or not outer["writable"] or not Path(outer["source"]).is_dir():
            continue  # nothing is ever created inside a read-only (shared, cached) source
        parts = path[len(norm(outer["path"])):].strip("/").split("/")
        is_dir = Path(m["source"]).is_dir()
        host = Path(outer["source"])
        for i, part in enumerate(parts):
            host = host / part
            last_is_file = i == len(parts) - 1 and not is_dir
            if os.path.lexists(host):
                continue
            if last_is_file:
                host.touch()
            else:
                host.mkdir()
            created.append((host, not last_is_file))
    return created


def remove_mount_points(created: list[tuple[Path, bool]]) -> None:
    """Remove the mount points :func:`make_mount_points` made, unless the command put something
    there (a directory it wrote into is output)."""
    for host, is_dir in reversed(created):
        try:
            if is_dir:
                host.rmdir()
            elif host.is_file() and not host.is_symlink() and host.stat().st_size == 0:
                host.unlink()
        except OSError:
            pass


def host_path(container_path: str, host_of: dict[str, str]) -> str | None:
    """Where a path inside the container lives on the host (longest mount prefix wins)."""
    best = None
    for mpath, src in host_of.items():
        if container_path == mpath or container_path.startswith(mpath.rstrip("/") + "/"):
            if best is None or len(mpath) > len(best[0]):
                best = (mpath, src)
    if best is None:
        return None
    rest = container_path[len(best[0]):].lstrip("/")
    return str(Path(best[1]) / rest) if rest else best[1]


def stream_target(name: str, all_mounts: dict, mounts: list[dict]) -> str | None:
    """The host file a ``stdout``/``stderr`` mount sends the stream to, its directory created.

    The path must be inside a writable mount (crunch-run requires output_path): writing through
    a read-only mount's host directory would change a shared collection cache.
    """
    m = all_mounts.get(name)
    if m is None:
        return None
    target = str(m.get("path") or "")
    outer = covering_mount(target, mounts)
    if outer is None or not outer["writable"] or norm(outer["path"]) == norm(target):
        raise RuntimeError(f"{name} mount path {target!r} must be a file under a writable mount "
                           "(usually output_path)")
    host = host_path(target, {outer["path"]: outer["source"]})
    assert host is not None
    Path(host).parent.mkdir(parents=True, exist_ok=True)
    return host


def literal_file(m: dict, dest: Path) -> Path:
    """Write a ``json`` or ``text`` mount's content to *dest* (the file the command will see)."""
    content = m.get("content")
    dest.write_text(json.dumps(content) if m.get("kind") == "json" else str(content or ""))
    return dest
