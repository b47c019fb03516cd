"""A private virtualenv holding ``arvados-cwl-runner``, used as an independent client of the cluster.

Why a separate venv: arvados-cwl-runner pins its own cwltool, which conflicts with the one Toil
needs, so it can never be a dependency of this package. The venv is created once per version under
``~/.cache/toil-arvados/acr-<version>`` (override the parent with ``TOIL_ARVADOS_CACHE``) and reused
by later runs; a marker file written after a successful install tells a finished venv from one
whose install was interrupted.

Run as a script (``python tests/acr_venv.py``) to create it ahead of the tests.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)

ACR_VERSION = "3.2.1"
_MARKER = ".toil-arvados-complete"


class AcrVenvError(Exception):
    """The arvados-cwl-runner venv could not be created; the message says what to do."""


def cache_root() -> Path:
    return Path(os.environ.get("TOIL_ARVADOS_CACHE", Path.home() / ".cache" / "toil-arvados"))


def venv_dir(version: str = ACR_VERSION) -> Path:
    return cache_root() / f"acr-{version}"


def acr_executable(version: str = ACR_VERSION) -> Path:
    return venv_dir(version) / "bin" / "arvados-cwl-runner"


def ensure_venv(version: str = ACR_VERSION, timeout: float = 1200.0) -> Path:
    """Create (or reuse) the venv for ``version``; return the path of its ``arvados-cwl-runner``."""
    root = venv_dir(version)
    exe = acr_executable(version)
    if (root / _MARKER).is_file() and exe.is_file():
        return exe
    if root.exists():
        log.info("removing incomplete arvados-cwl-runner venv at %s", root)
        shutil.rmtree(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    log.info("creating arvados-cwl-runner %s venv at %s", version, root)
    _run([sys.executable, "-m", "venv", str(root)], timeout)
    pip = [str(root / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    _run(pip + [f"arvados-cwl-runner=={version}"], timeout)
    if not exe.is_file():
        raise AcrVenvError(f"pip installed arvados-cwl-runner {version} into {root} but {exe} is missing; "
                           f"delete {root} and retry")
    (root / _MARKER).write_text(version + "\n")
    return exe


def _run(cmd: list[str], timeout: float) -> None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise AcrVenvError(f"{' '.join(cmd[:4])} ... took over {timeout:.0f}s; retry, or create the venv "
                           f"with `python tests/acr_venv.py`") from exc
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise AcrVenvError(f"{' '.join(cmd[:4])} ... failed (exit {proc.returncode}): {tail}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(ensure_venv())
