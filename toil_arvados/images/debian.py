"""Build Docker image layers from Debian packages, without a Docker engine.

The bottom layer is a slimmed ``debootstrap --variant=minbase`` root filesystem, made once and
cached as a tar.  A recipe's layer is built the way a container engine's layer store works: an
overlay of the layers below with an empty upper directory, packages installed by ``apt-get``
(and any setup script) in a chroot of that overlay, and the upper directory -- exactly what
changed -- packed as the layer tar, with overlayfs whiteouts turned into Docker's ``.wh.`` files.

Needs root (debootstrap, mount, chroot) and the Debian mirror apt is configured with.
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import logging
import os
import shutil
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


from .cache import DEFAULT_CACHE_DIR, cached_sha256, locked

logger = logging.getLogger(__name__)

SUITE = "bookworm"
#: The Python of that suite's ``python3`` package (the worker image's interpreter).
SUITE_PYTHON = "python3.11"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
_HOST_CA = "/etc/ssl/certs/ca-certificates.crt"
_BUILD_CA = ".toil-arvados-build-ca.crt"
_PROXY_VARS = ("http_proxy", "https_proxy", "no_proxy")
_CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ImageBuildError(Exception):
    """Building an image failed; the message says what to do."""


@dataclass(frozen=True)
class Layer:
    """A layer tar and its diff id (sha256 of the tar, hex)."""

    path: Path
    diff_id: str


def debian_mirror() -> str:
    """The Debian mirror apt is configured with here (debootstrap needs it explicitly)."""
    env = os.environ.get("TOIL_ARVADOS_DEBIAN_MIRROR")
    if env:
        return env
    for path in ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*")):
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


def _need_root(what: str) -> None:
    if os.geteuid() != 0:
        raise ImageBuildError(f"{what} needs root (debootstrap, mount, chroot)")


def base_layer(cache_dir: Path = DEFAULT_CACHE_DIR) -> Layer:
    """The Debian minbase root filesystem as a layer tar, made once per cache."""
    target = cache_dir / f"debian-{SUITE}-minbase.tar"
    with locked(cache_dir / ".base.lock"):
        if not target.exists():
            _build_base(cache_dir, target)
        return Layer(target, cached_sha256(target))


def _build_base(cache_dir: Path, target: Path) -> None:
    if shutil.which("debootstrap") is None:
        raise ImageBuildError("debootstrap is not installed: apt-get install debootstrap")
    _need_root("building the Debian base filesystem")
    mirror = debian_mirror()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".debootstrap-") as tmp:
        root = Path(tmp) / "rootfs"
        p = subprocess.run(["debootstrap", "--variant=minbase", SUITE, str(root), mirror],
                           capture_output=True)
        if p.returncode != 0:
            tail = " | ".join(p.stdout.decode(errors="replace").strip().splitlines()[-3:])
            raise ImageBuildError(f"debootstrap {SUITE} from {mirror} failed ({tail}); set "
                                  "TOIL_ARVADOS_DEBIAN_MIRROR to a reachable Debian mirror")
        slim(root)
        partial = Path(tmp) / "base.tar"
        pack(root, partial)
        os.replace(partial, target)
    logger.info("Debian base filesystem built in %.1fs: %s", time.monotonic() - started, target)


def slim(root: Path) -> None:
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


def pack(root: Path, out: Path) -> None:
    """Tar *root* as a layer: numeric owners, sorted names."""
    # mtimes are kept: compiled .pyc files are checked against their source's mtime.
    p = subprocess.run(["tar", "--numeric-owner", "--sort=name", "--xattrs",
                        "-C", str(root), "-cf", str(out), "."], capture_output=True)
    if p.returncode != 0:
        raise ImageBuildError(f"packing {root} failed: {p.stderr.decode(errors='replace').strip()}")


def build_layer(below: list[Layer], script: str, target: Path, *, files: dict[str, tuple[bytes, int]] | None = None,
                scratch: Path = DEFAULT_CACHE_DIR) -> Layer:
    """Run *script* (``sh -e``) in a chroot of *below* (bottom first) and pack what it changed.

    *files* are written first: ``{path: (content, mode)}``.  Host networking is used (apt and
    pip reach their registries); nothing of the host is left in the layer.
    """
    _need_root("building an image layer")
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch, prefix=".layer-") as tmp:
        t = Path(tmp)
        lowers = [_unpacked(layer, scratch) for layer in reversed(below)]
        for d in ("upper", "work", "merged"):
            (t / d).mkdir()
        for path, (content, mode) in (files or {}).items():
            dest = t / "upper" / path.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(content)
            dest.chmod(mode)
        _run_in_chroot(lowers, t, script)
        to_docker_whiteouts(t / "upper")
        partial = target.with_name(target.name + ".partial")
        pack(t / "upper", partial)
        os.replace(partial, target)
    return Layer(target, cached_sha256(target))


def _unpacked(layer: Layer, scratch: Path) -> str:
    """An unpacked copy of *layer* for building on (cached beside the build cache)."""
    from .layers import LayerCache

    cache = LayerCache(scratch / "build-layers")
    return str(cache.unpack_layer_tar(layer.path, layer.diff_id))


def _run_in_chroot(lowers: list[str], t: Path, script: str) -> None:
    merged = t / "merged"
    setup = (
        "set -e\n"
        f"mount -t overlay overlay -o lowerdir={':'.join(lowers)},upperdir={t / 'upper'},"
        f"workdir={t / 'work'} {merged}\n"
        f"mount --bind /dev {merged}/dev\n"
        f"mount -t proc proc {merged}/proc\n"
        f"rm -f {merged}/etc/resolv.conf; cp /etc/resolv.conf {merged}/etc/resolv.conf\n"
        f"if [ -f {_HOST_CA} ]; then cp {_HOST_CA} {merged}/{_BUILD_CA}; fi\n"
        f"exec chroot {merged} /bin/sh -ec \"$BUILD_SCRIPT\"\n"
    )
    env = {"PATH": _CHROOT_PATH, "HOME": "/root", "LANG": "C.UTF-8", "BUILD_SCRIPT": script,
           "DEBIAN_FRONTEND": "noninteractive",
           # The host's CA bundle, for this build only: it may trust a proxy the image does not.
           "PIP_CERT": f"/{_BUILD_CA}", "SSL_CERT_FILE": f"/{_BUILD_CA}",
           **{k: v for k, v in os.environ.items() if k.lower() in _PROXY_VARS}}
    p = subprocess.run(["unshare", "--mount", "--", "sh", "-c", setup], env=env,
                       capture_output=True)
    for leftover in ("etc/resolv.conf", _BUILD_CA):  # the build's, not the image's
        with contextlib.suppress(FileNotFoundError):
            (t / "upper" / leftover).unlink()
    if p.returncode != 0:
        out = (p.stdout + p.stderr).decode(errors="replace").strip().splitlines()
        raise ImageBuildError(f"image build step failed: {' | '.join(out[-4:])}")


def to_docker_whiteouts(upper: Path) -> None:
    """overlayfs whiteouts (0/0 character devices, opaque xattrs) -> Docker's ``.wh.`` files."""
    for dirpath, dirnames, filenames in os.walk(upper):
        try:
            if os.getxattr(dirpath, "trusted.overlay.opaque") == b"y":
                os.removexattr(dirpath, "trusted.overlay.opaque")
                Path(dirpath, ".wh..wh..opq").touch()
        except OSError:
            pass
        for name in filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                os.unlink(path)
                Path(dirpath, ".wh." + name).touch()


def digest(*parts: object) -> str:
    """A short cache key for a build's inputs."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]
