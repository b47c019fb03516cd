"""Finding, fetching and selecting the CWL v1.2 suite (conformance/suite.py), without the network.

The download path is exercised against a ``file://`` URL serving an archive built here, shaped like
GitHub's (``cwl-v1.2-<commit>/...``), so the same code that fetches the pinned suite is tested offline.
"""
from __future__ import annotations

import io
import sys
import tarfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "conformance"))

import suite  # noqa: E402
from suite import ConformanceTest  # noqa: E402

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _archive(path: Path, top: str) -> None:
    with tarfile.open(path, "w:gz") as tar:
        data = b"- id: t1\n  doc: one\n  tool: tests/t.cwl\n  output: {}\n"
        info = tarfile.TarInfo(f"{top}/{suite.TESTS_FILE}")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def test_download_unpacks_the_pinned_archive(tmp_path, monkeypatch):
    _archive(tmp_path / f"{COMMIT}.tar.gz", f"cwl-v1.2-{COMMIT}")
    monkeypatch.setattr(suite, "ARCHIVE_URL", f"file://{tmp_path}/{{commit}}.tar.gz")
    target = tmp_path / "cache" / f"cwl-v1.2-{COMMIT}"
    assert suite.download(COMMIT, target) == target
    assert (target / suite.TESTS_FILE).read_text().startswith("- id: t1")
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no temp leftovers


def test_download_failure_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setattr(suite, "ARCHIVE_URL", f"file://{tmp_path}/absent/{{commit}}.tar.gz")
    with pytest.raises(suite.SuiteError) as e:
        suite.download(COMMIT, tmp_path / "cache" / "x")
    message = str(e.value)
    assert "\n" not in message
    assert "cannot download the CWL v1.2 suite" in message and "--suite DIR" in message


def test_download_rejects_an_archive_of_something_else(tmp_path, monkeypatch):
    _archive(tmp_path / f"{COMMIT}.tar.gz", "other-project")
    monkeypatch.setattr(suite, "ARCHIVE_URL", f"file://{tmp_path}/{{commit}}.tar.gz")
    with pytest.raises(suite.SuiteError, match="has no"):
        suite.download(COMMIT, tmp_path / "cache" / "x")


def test_pinned_commit_comes_from_the_source_file(tmp_path):
    source = tmp_path / "SOURCE"
    source.write_text(f"source: common-workflow-language/cwl-v1.2 at {COMMIT} (Apache-2.0)\n")
    assert suite.pinned_commit(source) == COMMIT
    assert suite.pinned_commit(tmp_path / "absent") == suite.PINNED_COMMIT


def test_locate_rejects_a_directory_without_the_suite(tmp_path):
    with pytest.raises(suite.SuiteError, match="no conformance_tests.yaml"):
        suite.locate(tmp_path)


TESTS = [ConformanceTest("a", ("required", "command_line_tool")), ConformanceTest("b", ("docker",)),
         ConformanceTest("c", ("required",)), ConformanceTest("d", ("workflow",)),
         ConformanceTest("e", ("required", "workflow"))]


def test_select_by_tags_and_ids():
    assert [t.id for t in suite.select(TESTS, {"required"})] == ["a", "c", "e"]
    assert [t.id for t in suite.select(TESTS, {"docker", "workflow"})] == ["b", "d", "e"]
    assert [t.id for t in suite.select(TESTS, {"required"}, {"c", "d"})] == ["c"]
    with pytest.raises(suite.SuiteError, match="nope"):
        suite.select(TESTS, None, {"nope"})


def test_number_ranges_select_positions_for_cwltest():
    assert suite.number_ranges(TESTS, [TESTS[0], TESTS[2], TESTS[3], TESTS[4]]) == "1,3-5"
    assert suite.number_ranges(TESTS, [TESTS[1]]) == "2"
    assert suite.number_ranges(TESTS, TESTS) == "1-5"


def test_the_shared_suite_loads_with_ids_and_tags():
    if not (suite.SHARED_SUITE / suite.TESTS_FILE).is_file():
        pytest.skip(f"no suite at {suite.SHARED_SUITE}")  # the download path is tested above
    tests = suite.load_tests(suite.SHARED_SUITE)
    ids = [t.id for t in tests]
    assert len(ids) == len(set(ids)) > 300
    assert "cl_basic_generation" in ids
    assert any("required" in t.tags for t in tests)
