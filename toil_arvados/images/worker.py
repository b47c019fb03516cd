"""The Toil worker image: what every Toil worker job (and ``--no-container`` CWL tool) runs in.

Like the Toil appliance on Kubernetes, it must match the leader: Debian with its Python 3.11,
a virtualenv at ``/opt/toil-arvados`` holding ``toil[cwl]``, ``arvados-python-client`` and the
rest of this package's requirements *at the versions the leader has installed*, and this
package itself, copied from the installed version (with its ``.pth`` startup hook, so bare Toil
workers know the ``arvados:`` job store).  Three layers, so a change to this package rebuilds
only the small top one: Debian minbase; Python, Node.js (cwltool's expression engine) and the
dependencies; this package.

The versions are recorded as properties of the image's collection in Keep, and the leader
refuses a worker image whose versions differ from its own (:func:`version_mismatch`).
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import io
import logging
import os
import py_compile
import re
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

from .archive import DEFAULT_PATH
from .build import BuiltImage, Recipe, build_image
from .cache import DEFAULT_CACHE_DIR, cached_sha256, locked
from .debian import SUITE_PYTHON, Layer

logger = logging.getLogger(__name__)

VENV = "/opt/toil-arvados"
SITE_PACKAGES = f"{VENV}/lib/{SUITE_PYTHON}/site-packages"
#: Collection properties naming the versions inside a worker image.
TOIL_VERSION = "toil_arvados.toil_version"
PACKAGE_VERSION = "toil_arvados.version"
WORKER_MARK = "toil_arvados.worker_image"
#: Top-level modules this distribution installs beside the package.
_TOP_LEVEL = ("toil_batch_system_arvados", "toil_url_access_keep")


def package_version() -> str:
    try:
        return importlib.metadata.version("toil-arvados")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def default_image_name() -> str:
    """``toil-arvados/worker:<package version>``: the image this leader's workers need."""
    return f"toil-arvados/worker:{package_version()}"


def pinned_requirements() -> list[str]:
    """This package's requirements, pinned to the versions installed here (extras kept)."""
    pins = []
    for req in importlib.metadata.requires("toil-arvados") or []:
        if "extra ==" in req:
            continue
        m = re.match(r"\s*([A-Za-z0-9_.\-]+)(\[[^\]]*\])?", req)
        if not m:
            continue
        name, extras = m.group(1), m.group(2) or ""
        pins.append(f"{name}{extras}=={importlib.metadata.version(name)}")
    return sorted(pins)


def recipe() -> Recipe:
    deps = " ".join(f"'{p}'" for p in pinned_requirements())
    return Recipe(
        default_image_name(),
        packages=("python3", "python3-venv", "nodejs", "ca-certificates", "procps"),
        script=(f"python3 -m venv {VENV}\n"
                f"{VENV}/bin/pip install -q --no-cache-dir --disable-pip-version-check {deps}"),
        env=(("PATH", f"{VENV}/bin:{DEFAULT_PATH}"), ("LANG", "C.UTF-8")),
        cmd=("python3",),
        properties=versions())


def versions() -> tuple[tuple[str, str], ...]:
    return ((WORKER_MARK, "true"), (TOIL_VERSION, importlib.metadata.version("toil")),
            (PACKAGE_VERSION, package_version()))


def version_mismatch(properties: Mapping[str, object]) -> str | None:
    """Why a worker image with these collection properties cannot serve this leader, if so."""
    want = dict(versions())
    for key, label in ((TOIL_VERSION, "toil"), (PACKAGE_VERSION, "toil-arvados")):
        have = properties.get(key)
        if have is None:
            return f"it records no {label} version (it was not built by toil-arvados images build-worker)"
        if str(have) != want[key]:
            return f"it has {label} {have}, this leader runs {want[key]}"
    return None


def check_worker_image(api: Any, image: str) -> None:
    """Refuse, in one line saying how to fix it, a worker image built for other versions.

    An image without recorded versions (e.g. built from the Dockerfile and stored with plain
    ``arv-keepdocker``) is accepted with a warning: nothing says it is wrong.
    """
    from ..arvados_client import ArvadosSetupError
    from .keep import find_image

    coll = find_image(api, image)
    if coll is None:
        return  # check_image() already said it is missing
    properties = coll.get("properties") or {}
    if WORKER_MARK not in properties:
        logger.warning("worker image %s records no toil/toil-arvados versions; make sure it has "
                       "toil %s and toil-arvados %s", image, dict(versions())[TOIL_VERSION],
                       package_version())
        return
    problem = version_mismatch(properties)
    if problem:
        raise ArvadosSetupError(
            f"worker image {image} does not match this leader: {problem}; build and store the "
            "matching one with `toil-arvados images build-worker --upload`, or choose another "
            "with --arvadosWorkerImage")


def build_worker_image(cache_dir: Path = DEFAULT_CACHE_DIR) -> BuiltImage:
    """Build (or find in the cache) the worker image for the installed versions."""
    top = package_layer(cache_dir)
    return build_image(recipe(), cache_dir, extra_layers=(top,))


def store_worker_image(api: Any, cache_dir: Path = DEFAULT_CACHE_DIR) -> tuple[BuiltImage, str]:
    """The worker image built (or found in the cache) and stored in Keep: (image, its PDH)."""
    from .keep import store_image

    built = build_worker_image(cache_dir)
    return built, store_image(api, built.tarball, built.image_id, built.names, properties=built.properties)


# --------------------------------------------------------------------------- package layer

def _package_files() -> Iterator[tuple[str, Path]]:
    """(path in the image, installed file) for this distribution's importable files."""
    import toil_arvados

    pkg = Path(toil_arvados.__file__).resolve().parent
    for path in sorted(pkg.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            yield f"{SITE_PACKAGES}/toil_arvados/{path.relative_to(pkg)}", path
    for name in _TOP_LEVEL:
        spec = importlib.util.find_spec(name)
        if spec and spec.origin:
            yield f"{SITE_PACKAGES}/{name}.py", Path(spec.origin)
    pth = _startup_hook()
    if pth is not None:
        yield f"{SITE_PACKAGES}/toil_arvados.pth", pth


def _startup_hook() -> Path | None:
    """The installed ``toil_arvados.pth`` (or the checkout's copy for an editable install)."""
    import site
    import sysconfig

    for d in [sysconfig.get_paths()["purelib"], *site.getsitepackages()]:
        if (Path(d) / "toil_arvados.pth").is_file():
            return Path(d) / "toil_arvados.pth"
    import toil_arvados

    candidate = Path(toil_arvados.__file__).resolve().parent.parent / "toil_arvados.pth"
    return candidate if candidate.is_file() else None


def package_layer(cache_dir: Path = DEFAULT_CACHE_DIR) -> Layer:
    """A layer with this package's files (byte-compiled), keyed by their content."""
    files = list(_package_files())
    h = hashlib.sha256()
    for dest, src in files:
        h.update(dest.encode() + b"\0" + src.read_bytes() + b"\0")
    target = cache_dir / "image-layers" / f"toil-arvados-{h.hexdigest()[:16]}.tar"
    target.parent.mkdir(parents=True, exist_ok=True)
    with locked(target.with_suffix(".lock")):
        if not target.exists():
            partial = target.with_name(target.name + ".partial")
            _write_package_tar(partial, files)
            os.replace(partial, target)
    return Layer(target, cached_sha256(target))


def _write_package_tar(out: Path, files: list[tuple[str, Path]]) -> None:
    with tarfile.open(out, "w", format=tarfile.GNU_FORMAT) as tar:
        dirs: set[str] = set()
        for dest, src in files:
            data = src.read_bytes()
            _add_dirs(tar, dest, dirs)
            _add(tar, dest, data, 0o644)
            if dest.endswith(".py"):
                _add(tar, _pyc_path(dest), _compiled(src), 0o644)
        _add_dist_info(tar, dirs)


def _add_dist_info(tar: tarfile.TarFile, dirs: set[str]) -> None:
    info = f"{SITE_PACKAGES}/toil_arvados-{package_version()}.dist-info"
    _add_dirs(tar, info + "/METADATA", dirs)
    _add(tar, info + "/METADATA", f"Metadata-Version: 2.1\nName: toil-arvados\nVersion: "
                                   f"{package_version()}\n".encode(), 0o644)
    _add(tar, info + "/top_level.txt", "\n".join(("toil_arvados", *_TOP_LEVEL)).encode() + b"\n", 0o644)


def _add_dirs(tar: tarfile.TarFile, dest: str, dirs: set[str]) -> None:
    parts = dest.strip("/").split("/")[:-1]
    for i in range(1, len(parts) + 1):
        d = "/".join(parts[:i])
        if d not in dirs:
            dirs.add(d)
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)


def _add(tar: tarfile.TarFile, dest: str, data: bytes, mode: int) -> None:
    info = tarfile.TarInfo(dest.lstrip("/"))
    info.size, info.mode, info.mtime = len(data), mode, 0
    tar.addfile(info, io.BytesIO(data))


def _pyc_path(dest: str) -> str:
    d, name = dest.rsplit("/", 1)
    tag = SUITE_PYTHON.replace("python", "cpython-").replace(".", "")
    return f"{d}/__pycache__/{name[:-3]}.{tag}.pyc"


def _compiled(src: Path) -> bytes:
    """Byte code that is valid whatever the file's mtime in the image (hash-checked .pyc)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "x.pyc"
        py_compile.compile(str(src), cfile=str(out), doraise=True,
                           invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
        return out.read_bytes()


__all__ = ["build_worker_image", "check_worker_image", "default_image_name", "version_mismatch"]
