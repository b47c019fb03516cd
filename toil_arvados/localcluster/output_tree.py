"""The output collection's tree, assembled from the layers the command saw (pure).

As crunch-run, the output is the output directory as the command left it, overlaid by every
mount below output_path (Arvados' "pre-populated output"), deeper mounts over shallower ones.
This module works out those layers from the container record and combines manifest trees
(relocating, dropping, grafting, globbing); the dispatcher reads and uploads the files.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import manifest as mf
from .mount_points import covering_mount, norm


@dataclass(frozen=True)
class Layer:
    """Something the command saw at or below output_path: the output directory or a mount."""

    rel: str                      # where it is in the output ("" is the output directory itself)
    host: Path | None = None      # its files on the host, as the command left them
    pdh: str | None = None        # or a read-only collection, spliced from its manifest
    coll_path: str = ""           # ... the file or directory of it that was mounted
    exclude: bool = False         # covers what is below it, but is not itself output


def output_layers(c: dict, mounts: list[dict]) -> list[Layer]:
    """The output directory and the mounts below output_path, outermost first.

    Secret mounts and mounts marked ``exclude_from_output`` still hide what is below them, but
    add nothing: a secret must not end up in a collection.
    """
    out = norm(c["output_path"])
    declared = {norm(p): m for p, m in (c.get("mounts") or {}).items() if p.startswith("/")}
    secret = {norm(p): m for p, m in (c.get("secret_mounts") or {}).items() if p.startswith("/")}
    declared.update(secret)
    host_of = {norm(m["path"]): Path(m["source"]) for m in mounts}
    layers: list[Layer] = []
    root = covering_mount(out, [{"path": p} for p in declared])
    if root is not None:
        rest = out[len(norm(root["path"])):].strip("/")
        top = norm(root["path"])
        layers.append(_layer(declared[top], "", rest, host_of.get(top)))
    below = out.rstrip("/") + "/"
    for p in sorted((p for p in declared if p.startswith(below)), key=lambda p: (p.count("/"), p)):
        m = declared[p]
        excluded = p in secret or bool(m.get("exclude_from_output"))
        layers.append(_layer(m, p[len(below):], "", host_of.get(p), exclude=excluded))
    return layers


def _layer(m: dict, rel: str, rest: str, host: Path | None, exclude: bool = False) -> Layer:
    """The layer a mount adds at *rel*; *rest* is the part of the mount output_path names."""
    if m.get("kind") == "collection" and not m.get("writable") and m.get("portable_data_hash"):
        coll_path = join((m.get("path") or "").strip("/"), rest)
        return Layer(rel, pdh=m["portable_data_hash"], coll_path=coll_path, exclude=exclude)
    return Layer(rel, host=host / rest if host is not None and rest else host, exclude=exclude)


def join(a: str, b: str) -> str:
    return f"{a}/{b}" if a and b else a or b


def relocated(tree: mf.ManifestTree, src: str, dest: str) -> mf.ManifestTree:
    """The file or directory at *src* in *tree* ("" is all of it), moved to *dest*."""
    out = mf.ManifestTree(dirs=set())
    if src in tree.files:
        out.files[dest] = tree.files[src]
        return out
    if src not in tree.dirs:
        return out
    prefix = src + "/" if src else ""
    for path, segments in tree.files.items():
        if path.startswith(prefix):
            out.files[join(dest, path[len(prefix):])] = segments
    for d in tree.dirs:
        if d == src or d.startswith(prefix):
            out.dirs.add(join(dest, d[len(prefix):]))
    return out


def drop(tree: mf.ManifestTree, rel: str) -> None:
    """Remove what a mount at *rel* covered: the entry there, everything below it, and any file
    standing where one of its parent directories must be."""
    if not rel:
        tree.files.clear()
        tree.dirs = {""}
        return
    below = rel + "/"
    for path in [p for p in tree.files if p == rel or p.startswith(below)]:
        del tree.files[path]
    parts = rel.split("/")
    for i in range(1, len(parts)):
        tree.files.pop("/".join(parts[:i]), None)
    tree.dirs = {d for d in tree.dirs if d != rel and not d.startswith(below)}


def graft(tree: mf.ManifestTree, part: mf.ManifestTree) -> None:
    """Add a layer's files and directories (already at their output paths) to *tree*."""
    tree.files.update(part.files)
    for path in list(part.dirs) + [p.rpartition("/")[0] for p in part.files]:
        while path not in tree.dirs:
            tree.dirs.add(path)
            path = path.rpartition("/")[0]


def filtered(tree: mf.ManifestTree, keep: Callable[[str], bool]) -> mf.ManifestTree:
    """Apply ``output_glob``: kept files, kept directories, and the directories holding them."""
    files = {p: s for p, s in tree.files.items() if keep(p)}
    out = mf.ManifestTree(files=files)
    graft(out, mf.ManifestTree(dirs={d for d in tree.dirs if d and keep(d)}))
    graft(out, mf.ManifestTree(files=files, dirs=set()))
    return out
