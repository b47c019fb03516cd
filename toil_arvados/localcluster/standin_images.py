"""Build the Docker images the CWL conformance suite names, from Debian packages, into Keep.

No registry is reachable here, so ``docker pull debian:stable-slim`` cannot work.  Instead a
Debian root filesystem is made once with ``debootstrap --variant=minbase`` (cached as a tarball),
each image is ``docker import``-ed from it -- plus the packages and files its tests rely on, and
the ENTRYPOINT/CMD/ENV of the image it stands in for -- and then uploaded into the cluster's Keep
as ``arv-keepdocker`` would: one collection holding ``<image id>.tar`` (``docker save``), with
``docker_image_hash`` and ``docker_image_repo+tag`` links.

These images are real (they run in the Docker runtime); their collection properties say what
they stand in for and what they were built from.  They do *not* carry ``toil_arvados.stand_in``,
which marks the empty placeholder images that run in the namespace runtime (see images.py).

What the suite needs of each (tests in ``cwl-v1.2/tests`` that use them):

* ``debian:stable-slim``: a shell and coreutils (most DockerRequirement tests).
* ``python:3-slim``: ``python`` and ``python3`` with the standard library.
* ``bash:4.4``: ``bash``, and the official image's ENTRYPOINT, which prefixes ``bash`` when the
  first argument is an option (``docker-run-cmd.cwl`` runs ``["-c", "echo 'moo' > cow"]``).
* ``alpine:latest``: ``sh``, ``echo``, ``ln``, ``touch`` (symlink and writable-dir tests).
"""
from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from .control import ClusterError

logger = logging.getLogger(__name__)

SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "toil-arvados"
BASE_IMAGE = f"toil-arvados/debian-minbase:{SUITE}"
#: Image label recording which recipe (and base filesystem) built an image, to skip rebuilds.
RECIPE_LABEL = "org.toil-arvados.recipe"
#: Collection properties of an uploaded image.
STAND_IN_FOR = "toil_arvados.stand_in_for"
BUILT_FROM = "toil_arvados.built_from"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# The official bash image's entrypoint behaviour, written afresh: run bash when the first
# argument is an option (or there is none), else run the arguments as a command.
_BASH_ENTRYPOINT = """#!/bin/bash
set -e
if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; then
    set -- bash "$@"
fi
exec "$@"
"""


class StandInError(ClusterError):
    """Building or uploading a stand-in image failed; the message says what to do."""


@dataclass(frozen=True)
class Recipe:
    """How to build one image from the Debian base filesystem."""

    name: str
    #: Debian packages installed on top of minbase (needs the mirror, through host networking).
    packages: tuple[str, ...] = ()
    #: Files added: (path, content, mode).
    files: tuple[tuple[str, str, int], ...] = ()
    #: Dockerfile instructions for ``docker import/commit --change``.
    changes: tuple[str, ...] = ()
    #: Extra ``docker_image_repo+tag`` names (the suite writes ``docker.io/debian:stable-slim``).
    aliases: tuple[str, ...] = field(default=())

    def digest(self, base_id: str) -> str:
        blob = json.dumps([self.name, self.packages, self.files, self.changes, base_id])
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _hub_alias(name: str) -> tuple[str, ...]:
    return (f"docker.io/{name}",)


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("debian:stable-slim", changes=(f"ENV PATH={DEFAULT_PATH}", 'CMD ["bash"]'),
           aliases=_hub_alias("debian:stable-slim")),
    Recipe("python:3-slim", packages=("python3", "python-is-python3"),
           changes=(f"ENV PATH={DEFAULT_PATH}", "ENV LANG=C.UTF-8", 'CMD ["python3"]'),
           aliases=_hub_alias("python:3-slim")),
    Recipe("bash:4.4", files=(("/usr/local/bin/docker-entrypoint.sh", _BASH_ENTRYPOINT, 0o755),),
           changes=(f"ENV PATH={DEFAULT_PATH}", 'ENTRYPOINT ["docker-entrypoint.sh"]',
                    'CMD ["bash"]'),
           aliases=_hub_alias("bash:4.4")),
    Recipe("alpine:latest", changes=(f"ENV PATH={DEFAULT_PATH}", 'CMD ["/bin/sh"]'),
           aliases=_hub_alias("alpine:latest")),
)}


@dataclass
class BuiltImage:
    name: str
    image_id: str  # hex, without "sha256:"
    seconds: float  # building (or finding) it in the engine
    rebuilt: bool
    pdh: Optional[str] = None
    upload_seconds: float = 0.0  # storing it in Keep (0 when already there)


# --------------------------------------------------------------------------- Docker CLI

class Docker:
    """Synchronous ``docker`` CLI calls against one engine (this is a client-side command)."""

    def __init__(self, docker_host: str) -> None:
        self.docker_host = docker_host
        self.cli = shutil.which("docker")
        if self.cli is None:
            raise StandInError("the docker CLI is not installed: apt-get install docker.io")

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        env["DOCKER_HOST"] = self.docker_host
        return env

    def run(self, *args: str, check: bool = True, input: Optional[bytes] = None) -> str:
        p = subprocess.run([self.cli, *args], input=input, capture_output=True, env=self.env())  # type: ignore[list-item]
        if check and p.returncode != 0:
            raise StandInError(f"docker {args[0]} failed: {p.stderr.decode(errors='replace').strip()}")
        return p.stdout.decode(errors="replace").strip()

    def image_label(self, ref: str, label: str) -> Optional[str]:
        """The image's *label* value, or None when there is no such image."""
        out = subprocess.run([self.cli, "image", "inspect", "--format",  # type: ignore[list-item]
                              "{{json .Config.Labels}}", ref], capture_output=True, env=self.env())
        if out.returncode != 0:
            return None
        labels = json.loads(out.stdout or b"null") or {}
        return labels.get(label, "")

    @contextlib.contextmanager
    def save(self, ref: str) -> Iterator[Any]:
        """A readable stream of ``docker save REF``."""
        proc = subprocess.Popen([self.cli, "save", ref], stdout=subprocess.PIPE,  # type: ignore[list-item]
                                stderr=subprocess.PIPE, env=self.env())
        try:
            yield proc.stdout
        finally:
            assert proc.stdout is not None and proc.stderr is not None
            proc.stdout.close()
            err = proc.stderr.read().decode(errors="replace").strip()
            if proc.wait() != 0:
                raise StandInError(f"docker save {ref} failed: {err}")


# --------------------------------------------------------------------------- base filesystem

def debian_mirror() -> str:
    """The Debian mirror apt is configured with here (debootstrap needs it explicitly)."""
    env = os.environ.get("TOIL_ARVADOS_DEBIAN_MIRROR")
    if env:
        return env
    files = ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*"))
    for path in files:
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        if path.endswith(".sources"):  # deb822: "URIs: ..." then "Suites: ..."
            for stanza in text.split("\n\n"):
                fields = dict(line.split(":", 1) for line in stanza.splitlines()
                              if ":" in line and not line.startswith(("#", " ")))
                uris = fields.get("URIs", "").split()
                if uris and SUITE in fields.get("Suites", "").split() and "security" not in uris[0]:
                    return uris[0]
        else:
            for line in text.splitlines():
                parts = [p for p in line.split() if not p.startswith("[")]
                if len(parts) >= 3 and parts[0] == "deb" and parts[2] == SUITE:
                    return parts[1]
    return DEFAULT_MIRROR


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def base_tarball(cache_dir: Path = DEFAULT_CACHE_DIR) -> Path:
    """A tarball of a slimmed ``debootstrap --variant=minbase`` root filesystem, made once."""
    target = cache_dir / f"debian-{SUITE}-minbase.tar"
    with _locked(cache_dir / ".base.lock"):
        if target.exists():
            return target
        if shutil.which("debootstrap") is None:
            raise StandInError("debootstrap is not installed: apt-get install debootstrap")
        if os.geteuid() != 0:
            raise StandInError("building the Debian base filesystem needs root (debootstrap)")
        mirror = debian_mirror()
        started = time.monotonic()
        logger.info("debootstrap --variant=minbase %s from %s", SUITE, mirror)
        with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".debootstrap-") as tmp:
            root = Path(tmp) / "rootfs"
            p = subprocess.run(["debootstrap", "--variant=minbase", SUITE, str(root), mirror],
                               capture_output=True)
            if p.returncode != 0:
                tail = " | ".join(p.stdout.decode(errors="replace").strip().splitlines()[-3:])
                raise StandInError(f"debootstrap {SUITE} from {mirror} failed ({tail}); set "
                                   "TOIL_ARVADOS_DEBIAN_MIRROR to a reachable Debian mirror")
            _slim(root)
            partial = Path(tmp) / "base.tar"
            subprocess.run(["tar", "--numeric-owner", "-C", str(root), "-cf", str(partial), "."],
                           check=True)
            os.replace(partial, target)
        logger.info("Debian base filesystem built in %.1fs: %s", time.monotonic() - started, target)
    return target


def _slim(root: Path) -> None:
    """Drop what slim images drop: package caches and lists, manuals, translations."""
    for pattern in ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*",
                    "usr/share/man/*", "usr/share/locale/*", "usr/share/info/*"):
        for p in glob.glob(str(root / pattern)):
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p, ignore_errors=True)
            else:
                os.unlink(p)
    for dirpath, _dirs, files in os.walk(root / "usr/share/doc"):
        for f in files:
            if f != "copyright":
                os.unlink(os.path.join(dirpath, f))


# --------------------------------------------------------------------------- building

def _ensure_base_image(docker: Docker, tarball: Path) -> str:
    """Import the base filesystem once (keyed by the tarball's size and mtime)."""
    st = tarball.stat()
    key = f"{st.st_size}-{int(st.st_mtime)}"
    if docker.image_label(BASE_IMAGE, RECIPE_LABEL) != key:
        docker.run("import", "--change", f"LABEL {RECIPE_LABEL}={key}",
                   "--change", f"ENV PATH={DEFAULT_PATH}", str(tarball), BASE_IMAGE)
    return docker.run("image", "inspect", "--format", "{{.Id}}", BASE_IMAGE)


def _files_tar(files: tuple[tuple[str, str, int], ...]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path, content, mode in files:
            data = content.encode()
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode, info.mtime = len(data), mode, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def build_image(docker: Docker, recipe: Recipe, cache_dir: Path = DEFAULT_CACHE_DIR) -> BuiltImage:
    """Build *recipe* into the engine as ``recipe.name`` unless an identical build is there."""
    started = time.monotonic()
    tarball = base_tarball(cache_dir)
    base_id = _ensure_base_image(docker, tarball)
    digest = recipe.digest(base_id)
    rebuilt = docker.image_label(recipe.name, RECIPE_LABEL) != digest
    if rebuilt:
        changes = [a for c in (*recipe.changes, f"LABEL {RECIPE_LABEL}={digest}")
                   for a in ("--change", c)]
        if not recipe.packages and not recipe.files:
            docker.run("import", *changes, str(tarball), recipe.name)
        else:
            _build_on_base(docker, recipe, changes)
    image_id = docker.run("image", "inspect", "--format", "{{.Id}}", recipe.name)
    return BuiltImage(recipe.name, image_id.removeprefix("sha256:"),
                      time.monotonic() - started, rebuilt)


def _build_on_base(docker: Docker, recipe: Recipe, changes: list[str]) -> None:
    """Add files and packages in a container of the base image, then commit it."""
    script = "true"
    network = "none"
    if recipe.packages:
        network = "host"  # apt reaches the Debian mirror, as debootstrap did
        script = ("set -e; export DEBIAN_FRONTEND=noninteractive; apt-get update -qq; "
                  "apt-get install -y -qq --no-install-recommends " + " ".join(recipe.packages) +
                  " >/dev/null; apt-get clean; rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin")
    ctr = docker.run("create", "--network", network, BASE_IMAGE, "sh", "-c", script)
    try:
        if recipe.files:
            docker.run("cp", "-", f"{ctr}:/", input=_files_tar(recipe.files))
        if recipe.packages:
            p = subprocess.run([docker.cli, "start", "--attach", ctr], capture_output=True,  # type: ignore[list-item]
                               env=docker.env())
            if p.returncode != 0:
                err = p.stderr.decode(errors="replace").strip().splitlines()[-3:]
                raise StandInError(f"installing {' '.join(recipe.packages)} for {recipe.name} "
                                   f"failed: {' | '.join(err)}")
        docker.run("commit", *changes, ctr, recipe.name)
    finally:
        docker.run("rm", "--force", ctr, check=False)


# --------------------------------------------------------------------------- uploading

def upload_image(api: Any, docker: Docker, built: BuiltImage, recipe: Recipe,
                 owner_uuid: Optional[str] = None) -> str:
    """Store the image in Keep as ``arv-keepdocker`` does (once per image id); its PDH."""
    import arvados.collection

    owner = owner_uuid or api.users().current().execute()["uuid"]
    hash_name = f"sha256:{built.image_id}"
    coll = None
    for link in api.links().list(filters=[["link_class", "=", "docker_image_hash"],
                                          ["name", "=", hash_name]]).execute()["items"]:
        found = api.collections().list(filters=[["uuid", "=", link["head_uuid"]]]).execute()["items"]
        if found:
            coll = found[0]
            break
    created = docker.run("image", "inspect", "--format", "{{.Created}}", recipe.name)
    timestamp = created.split(".")[0].rstrip("Z") + "Z" if created else \
        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if coll is None:
        new = arvados.collection.Collection(api_client=api)
        with new.open(f"{built.image_id}.tar", "wb") as out, docker.save(recipe.name) as stream:
            while True:
                chunk = stream.read(1 << 20)
                if not chunk:
                    break
                out.write(chunk)
        new.save_new(name=f"Docker image {recipe.name} sha256:{built.image_id[:12]}",
                     owner_uuid=owner, ensure_unique_name=True, properties={
                         "docker-image-repo-tag": recipe.name,
                         STAND_IN_FOR: f"docker.io/{recipe.name}",
                         BUILT_FROM: f"Debian {SUITE} packages (debootstrap --variant=minbase"
                                     + (f" + {', '.join(recipe.packages)}" if recipe.packages else "")
                                     + "); no registry is reachable here"})
        coll = {"uuid": new.manifest_locator(), "portable_data_hash": new.portable_data_hash()}
        api.links().create(body={"link": {
            "link_class": "docker_image_hash", "name": hash_name, "head_uuid": coll["uuid"],
            "owner_uuid": owner, "properties": {"image_timestamp": timestamp}}}).execute()
    have = {link["name"] for link in api.links().list(filters=[
        ["link_class", "=", "docker_image_repo+tag"], ["head_uuid", "=", coll["uuid"]]]).execute()["items"]}
    for tag in (recipe.name, *recipe.aliases):
        if tag not in have:
            api.links().create(body={"link": {
                "link_class": "docker_image_repo+tag", "name": tag, "head_uuid": coll["uuid"],
                "owner_uuid": owner, "properties": {"image_timestamp": timestamp}}}).execute()
    return coll["portable_data_hash"]


def build_and_upload(api: Any, docker_host: str, names: Optional[list[str]] = None, *,
                     cache_dir: Path = DEFAULT_CACHE_DIR,
                     owner_uuid: Optional[str] = None) -> list[BuiltImage]:
    """Build the named images (default: all the suite names) and load them into Keep."""
    from .runtime.selection import engine_answers

    unknown = sorted(set(names or ()) - set(RECIPES))
    if unknown:
        raise StandInError(f"no recipe for image {unknown[0]}: choose from {', '.join(RECIPES)}")
    if not engine_answers(docker_host):
        raise StandInError(f"no Docker engine answers at {docker_host}: start dockerd (see "
                           ".ci/start-docker) or pass --docker-host")
    docker = Docker(docker_host)
    results = []
    for name in names or list(RECIPES):
        recipe = RECIPES[name]
        built = build_image(docker, recipe, cache_dir)
        started = time.monotonic()
        built.pdh = upload_image(api, docker, built, recipe, owner_uuid)
        built.upload_seconds = time.monotonic() - started
        results.append(built)
    return results
