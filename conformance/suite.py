"""Where the CWL v1.2 conformance suite comes from, and which of its tests a run selects.

The suite is data (``conformance_tests.yaml`` + ``tests/``, Apache-2.0). A checkout beside the repo
(``../shared/cwl-v1.2``) is used when present, so runs need no network; otherwise the pinned commit's
archive is downloaded once into a cache directory. Pinning matters: the figures in the README are
only comparable between runs of the same tests.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
SHARED_SUITE = REPO.parent / "shared" / "cwl-v1.2"
#: The commit ../shared/cwl-v1.2 was taken from (its SOURCE file names it); used when that copy is absent.
PINNED_COMMIT = "551d58d409ef2a0fa2e3ab93b85167dd7d4b1833"
ARCHIVE_URL = "https://github.com/common-workflow-language/cwl-v1.2/archive/{commit}.tar.gz"
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "toil-arvados"
TESTS_FILE = "conformance_tests.yaml"


class SuiteError(Exception):
    """The suite cannot be found or fetched; the message says what to do."""


@dataclass(frozen=True)
class ConformanceTest:
    """One entry of conformance_tests.yaml: its id (cwltest's short name) and tags."""

    id: str
    tags: tuple[str, ...]
    should_fail: bool = False


def pinned_commit(source_file: Path = SHARED_SUITE / "SOURCE") -> str:
    """The commit named by the shared copy's SOURCE file, else :data:`PINNED_COMMIT`."""
    try:
        match = re.search(r"\b([0-9a-f]{40})\b", source_file.read_text())
    except OSError:
        match = None
    return match.group(1) if match else PINNED_COMMIT


def locate(explicit: Path | None = None, *, fetch: bool = True) -> Path:
    """The suite directory: ``explicit``, else the shared copy, else the pinned download."""
    if explicit is not None:
        if not (explicit / TESTS_FILE).is_file():
            raise SuiteError(f"{explicit} has no {TESTS_FILE}: pass the root of a cwl-v1.2 checkout to --suite")
        return explicit.resolve()
    if (SHARED_SUITE / TESTS_FILE).is_file():
        return SHARED_SUITE
    commit = pinned_commit()
    cached = CACHE_DIR / f"cwl-v1.2-{commit}"
    if (cached / TESTS_FILE).is_file():
        return cached
    if not fetch:
        raise SuiteError(f"no CWL v1.2 suite at {SHARED_SUITE} or {cached}")
    return download(commit, cached)


def download(commit: str, target: Path, timeout: float = 60.0) -> Path:
    """Fetch the pinned commit's archive and unpack it at ``target`` (atomically, by rename)."""
    url = ARCHIVE_URL.format(commit=commit)
    logger.info("Downloading the CWL v1.2 conformance suite at %s", commit)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        archive = Path(tmp) / "suite.tar.gz"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(archive, "wb") as out:
                shutil.copyfileobj(response, out)
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", None) or e
            raise SuiteError(f"cannot download the CWL v1.2 suite from {url} ({reason}); offline? "
                             f"put a checkout of commit {commit[:12]} at {SHARED_SUITE} or pass --suite DIR") from None
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        unpacked = Path(tmp) / f"cwl-v1.2-{commit}"
        if not (unpacked / TESTS_FILE).is_file():
            raise SuiteError(f"the archive from {url} has no cwl-v1.2-{commit}/{TESTS_FILE}")
        try:
            unpacked.rename(target)
        except OSError:
            if not (target / TESTS_FILE).is_file():  # not a concurrent run that won the race
                raise
    return target


def load_tests(suite: Path) -> list[ConformanceTest]:
    """Every test of the suite in file order, ``$import``-ed index files included (as cwltest reads them)."""
    from cwltest.utils import load_and_validate_tests, shortname

    entries, _metadata = load_and_validate_tests(str(suite / TESTS_FILE))
    tests = []
    for entry in entries:
        test_id = entry.get("id") or entry.get("label")
        if not isinstance(test_id, str):
            raise SuiteError(f"a test in {suite / TESTS_FILE} has no string id: {entry.get('doc', '')[:60]!r}")
        tests.append(ConformanceTest(shortname(test_id),  # the name cwltest writes to JUnit (``file``)
                                     tuple(entry.get("tags") or ("required",)),
                                     bool(entry.get("should_fail", False))))
    return tests


def select(tests: list[ConformanceTest], tags: set[str] | None = None,
           ids: set[str] | None = None) -> list[ConformanceTest]:
    """The tests a run covers: any of ``tags`` (cwltest's ``--tags`` rule) and, if given, only ``ids``."""
    chosen = [t for t in tests if not tags or tags.intersection(t.tags)]
    if ids:
        unknown = ids - {t.id for t in tests}
        if unknown:
            raise SuiteError(f"no such test id(s) in the suite: {', '.join(sorted(unknown))}")
        chosen = [t for t in chosen if t.id in ids]
    return chosen


def number_ranges(tests: list[ConformanceTest], chosen: list[ConformanceTest]) -> str:
    """cwltest's ``-n`` value (1-based positions, ranges joined: ``1-3,7``) selecting ``chosen``.

    Why numbers and not ``-s`` short names: cwltest treats the first test's index 0 as "not found".
    """
    wanted = {t.id for t in chosen}
    numbers = [i for i, t in enumerate(tests, start=1) if t.id in wanted]
    parts: list[str] = []
    start = prev = None
    for n in numbers + [None]:
        if start is not None and (n is None or n != prev + 1):
            parts.append(str(start) if start == prev else f"{start}-{prev}")
            start = None
        if n is not None and start is None:
            start = n
        prev = n
    return ",".join(parts)
