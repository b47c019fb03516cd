"""Recipes for the images this project needs, built from Debian packages into ``docker save``
archives (cached), without a Docker engine.

* the Toil worker image (:mod:`.worker`), which Toil worker jobs and ``--no-container`` CWL
  tools run in;
* the images the CWL conformance suite names (``debian:stable-slim``, ``python:3-slim``,
  ``bash:4.4``, ``alpine:latest``): no registry is reachable here, so each is built from Debian
  packages with what the suite's tools call, and the ENTRYPOINT/CMD/ENV of the image it stands
  in for.  Their collection properties say so.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .archive import DEFAULT_PATH, image_config, write_archive
from .cache import DEFAULT_CACHE_DIR, cached_sha256, locked
from .debian import SUITE, Layer, base_layer, build_layer, digest

logger = logging.getLogger(__name__)

# The official bash image's entrypoint behaviour, written afresh: run bash when the first
# argument is an option (or there is none), else run the arguments as a command.
_BASH_ENTRYPOINT = """#!/bin/bash
set -e
if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; then
    set -- bash "$@"
fi
exec "$@"
"""


@dataclass(frozen=True)
class Recipe:
    """One image: Debian packages and a setup script on the base, then its run settings."""

    name: str
    packages: tuple[str, ...] = ()
    script: str = ""
    files: tuple[tuple[str, str, int], ...] = ()
    env: tuple[tuple[str, str], ...] = (("PATH", DEFAULT_PATH),)
    entrypoint: Optional[tuple[str, ...]] = None
    cmd: Optional[tuple[str, ...]] = None
    #: Extra ``docker_image_repo+tag`` names (the suite writes ``docker.io/debian:stable-slim``).
    aliases: tuple[str, ...] = ()
    #: Collection properties recorded with the image in Keep.
    properties: tuple[tuple[str, str], ...] = ()

    def setup_script(self) -> str:
        steps = []
        if self.packages:
            steps.append("apt-get update -qq && apt-get install -y -qq --no-install-recommends "
                         + " ".join(self.packages) + " >/dev/null && apt-get clean && "
                         "rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin")
        if self.script:
            steps.append(self.script)
        return "\n".join(steps) or "true"


@dataclass
class BuiltImage:
    """An image archive in the build cache."""

    name: str
    tarball: Path
    image_id: str
    seconds: float
    rebuilt: bool
    aliases: tuple[str, ...] = ()
    properties: dict[str, str] = field(default_factory=dict)

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


def _hub_alias(name: str) -> tuple[str, ...]:
    return (f"docker.io/{name}",)


def _stands_in(name: str, packages: str) -> tuple[tuple[str, str], ...]:
    return (("toil_arvados.stand_in_for", f"docker.io/{name}"),
            ("toil_arvados.built_from", f"Debian {SUITE} packages (debootstrap --variant=minbase"
                                        f"{' + ' + packages if packages else ''}); no registry "
                                        "is reachable here"))


SUITE_RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("debian:stable-slim", cmd=("bash",), aliases=_hub_alias("debian:stable-slim"),
           properties=_stands_in("debian:stable-slim", "")),
    Recipe("python:3-slim", packages=("python3", "python-is-python3"),
           env=(("PATH", DEFAULT_PATH), ("LANG", "C.UTF-8")), cmd=("python3",),
           aliases=_hub_alias("python:3-slim"),
           properties=_stands_in("python:3-slim", "python3, python-is-python3")),
    Recipe("bash:4.4", files=(("/usr/local/bin/docker-entrypoint.sh", _BASH_ENTRYPOINT, 0o755),),
           entrypoint=("docker-entrypoint.sh",), cmd=("bash",), aliases=_hub_alias("bash:4.4"),
           properties=_stands_in("bash:4.4", "")),
    Recipe("alpine:latest", cmd=("/bin/sh",), aliases=_hub_alias("alpine:latest"),
           properties=_stands_in("alpine:latest", "")),
)}


def build_image(recipe: Recipe, cache_dir: Path = DEFAULT_CACHE_DIR,
                extra_layers: tuple[Layer, ...] = ()) -> BuiltImage:
    """The archive of *recipe* (plus *extra_layers* on top), built unless cached."""
    started = time.monotonic()
    base = base_layer(cache_dir)
    layers = [base]
    setup = recipe.setup_script()
    files = {p: (c.encode(), m) for p, c, m in recipe.files}
    if setup != "true" or files:
        key = digest(base.diff_id, setup, sorted(files.items()))
        target = cache_dir / "image-layers" / f"{key}.tar"
        target.parent.mkdir(parents=True, exist_ok=True)
        with locked(target.with_suffix(".lock")):
            if target.exists():
                layers.append(Layer(target, cached_sha256(target)))
            else:
                layers.append(build_layer(layers, setup, target, files=files, scratch=cache_dir))
    layers.extend(extra_layers)
    config = image_config([l.diff_id for l in layers], env=dict(recipe.env),
                          entrypoint=list(recipe.entrypoint) if recipe.entrypoint else None,
                          cmd=list(recipe.cmd) if recipe.cmd else None,
                          comment=f"toil-arvados {recipe.name}")
    return _archive(recipe, layers, config, cache_dir, started)


def _archive(recipe: Recipe, layers: list[Layer], config: bytes, cache_dir: Path,
             started: float) -> BuiltImage:
    image_id = hashlib.sha256(config).hexdigest()
    out = cache_dir / "images" / f"{image_id}.tar"
    rebuilt = False
    with locked(cache_dir / "images" / ".lock"):
        if not out.exists():
            partial = out.with_suffix(".partial")
            write_archive(partial, [l.path for l in layers], config, [recipe.name])
            os.replace(partial, out)
            rebuilt = True
            _forget_older(out, recipe.name)
        else:
            os.utime(out)  # in use: see _forget_older
    logger.info("image %s sha256:%s %s in %.1fs", recipe.name, image_id[:12],
                "built" if rebuilt else "cached", time.monotonic() - started)
    return BuiltImage(recipe.name, out, image_id, time.monotonic() - started, rebuilt,
                      recipe.aliases, dict(recipe.properties))


_IN_USE_SECONDS = 3600


def _forget_older(archive: Path, name: str) -> None:
    """Keep one archive per image name in the cache (each is hundreds of MiB): the new one, and
    any other built or used within the hour (another checkout of another version may be storing
    it in its cluster right now)."""
    label = archive.with_suffix(".name")
    label.write_text(name)
    now = time.time()
    for other in archive.parent.glob("*.name"):
        tar = other.with_suffix(".tar")
        recent = tar.exists() and now - tar.stat().st_mtime < _IN_USE_SECONDS
        if other != label and other.read_text() == name and not recent:
            other.with_suffix(".tar").unlink(missing_ok=True)
            other.unlink(missing_ok=True)
