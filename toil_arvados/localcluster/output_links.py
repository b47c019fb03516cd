"""Symlinks a container leaves in its output, made safe to follow before the output is captured.

The output is read on the host, but a symlink means what it means *inside the container*:
``/var/spool/cwl/leak -> /etc/passwd`` names the image's file, and followed on the host it
would put the host's ``/etc/passwd`` in a collection. As crunch-run's copier does, a link is
resolved in the container's view (at most :data:`MAX_LINKS` links, relative targets against the
link's directory): a target inside one of the container's mounts is kept (by reference for a
read-only collection, else the link is pointed at that mount's host copy, so the uploader
follows it there); a target in a secret mount is left
out silently; any other target (the image, the host) is left out with a line in the log.
Nothing outside the container's own mount sources is ever read.
"""
from __future__ import annotations

import os
import posixpath
from pathlib import Path
from typing import Callable

#: crunch-run's limitFollowSymlinks.
MAX_LINKS = 10

HostOf = Callable[[str], "str | None"]


def mount_resolver(mounts: dict[str, str]) -> HostOf:
    """``container path -> host path`` through the longest mount prefix (None: not in a mount)."""
    def host_of(path: str) -> str | None:
        best = None
        for mpath in mounts:
            root = mpath.rstrip("/") or "/"
            if path == root or path.startswith(root.rstrip("/") + "/"):
                if best is None or len(root) > len(best):
                    best = root
        if best is None:
            return None
        rest = path[len(best):].strip("/")
        src = mounts[best] if best in mounts else mounts[best + "/"]
        return os.path.join(src, rest) if rest else src
    return host_of


def resolve_in_container(path: str, host_of: HostOf, max_links: int = MAX_LINKS) -> str | None:
    """*path* with every symlink on it resolved as the container would (lexically above
    mounts, by reading the link inside them). None for a loop or too many links."""
    parts = [p for p in path.split("/") if p]
    resolved = "/"
    links = 0
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            resolved = posixpath.dirname(resolved)
            continue
        candidate = posixpath.join(resolved, part)
        host = host_of(candidate)
        if host is not None and os.path.islink(host):
            links += 1
            if links > max_links:
                return None
            target = os.readlink(host)
            if target.startswith("/"):
                resolved = "/"
            parts = [p for p in target.split("/") if p] + parts
            continue
        resolved = candidate
    return resolved


def _inside(path: str, roots: set[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def contain_links(walk_roots: dict[str, str], mounts: dict[str, str], secret: set[str],
                  by_reference: set[str] = frozenset(), output_path: str = "") -> tuple[list[str], dict[str, str]]:
    """Rewrite or remove every symlink under the host directories in *walk_roots* (container
    path -> host directory) so the uploader, which follows links, stays in the mounts.

    *mounts* maps every mount point to its host source; *secret* lists secret mount points.
    A link under *output_path* whose target is in one of the *by_reference* mounts (read-only
    collections) is removed and returned, ``{link path: target path}``, for the caller to
    splice from the collection's manifest, as crunch-run does. Decisions are all made before
    anything changes (a rewritten link holds a host path, which must not be read as a container
    path). Returns log lines for the links left out, and the references.
    """
    host_of = mount_resolver(mounts)
    decisions: list[tuple[Path, str | None, str]] = []
    for ctr_root, host_root in walk_roots.items():
        if not os.path.isdir(host_root) or os.path.islink(host_root):
            continue
        for dirpath, dirnames, filenames in os.walk(host_root, followlinks=False):
            for name in dirnames + filenames:
                host = Path(dirpath) / name
                if not host.is_symlink():
                    continue
                rel = os.path.relpath(host, host_root)
                ctr = posixpath.join(ctr_root, rel)
                target = resolve_in_container(ctr, host_of)
                decisions.append((host, target, ctr))
    notes: list[str] = []
    refs: dict[str, str] = {}
    for host, target, ctr in decisions:
        if target is not None and _inside(target, secret):
            host.unlink()
            continue
        real = host_of(target) if target is not None else None
        if target is None or real is None:
            why = "symlink loop or too many links" if target is None else "target is outside the container's mounts"
            notes.append(f"not capturing symlink {ctr} -> {os.readlink(host)}: {why}")
            host.unlink()
            continue
        host.unlink()
        if output_path and _inside(ctr, {output_path}) and _inside(target, set(by_reference)):
            refs[ctr] = target
        else:
            host.symlink_to(real)
    return notes, refs
