"""The conformance harness's pure parts: JUnit parsing, per-tag tallies, the expected-failures rules."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "conformance"))

import summary  # noqa: E402
from summary import FAILED, MISSING, PASSED, TIMEOUT, UNSUPPORTED, Result, Run  # noqa: E402

# The shape cwltest 2.x writes: one testcase per test, ``file`` = the test's short name.
JUNIT = """<?xml version="1.0" ?>
<testsuites disabled="0" errors="0" failures="2" tests="4" time="40.0">
  <testsuite disabled="0" errors="0" failures="2" name="conformance_tests" skipped="1" tests="4" time="40.0">
    <testcase name="General test" time="10.5" class="required, command_line_tool" file="cl_basic_generation">
      <system-out>{}</system-out>
    </testcase>
    <testcase name="Env test" time="3.0" class="required, env_var" file="env_home_tmpdir">
      <failure type="failure" message="Command 'toil-cwl-runner x.cwl' returned non-zero exit status 1.">out</failure>
      <system-err>[2026-11-25T12:00:00+0000] [MainThread] [I] [toil] Running
[2026-11-25T12:00:01+0000] [MainThread] [E] [toil.worker] Job failed: HOME is not the output dir
[2026-11-25T12:00:02+0000] [MainThread] [I] [toil] done</system-err>
    </testcase>
    <testcase name="Slow" time="600" class="timelimit" file="timelimit_basic">
      <failure type="failure" message="Test timed out">Test timed out</failure>
    </testcase>
    <testcase name="Net" time="1.0" class="networkaccess" file="networkaccess">
      <skipped type="skipped" message="Unsupported"/>
    </testcase>
  </testsuite>
</testsuites>
"""


def test_parse_junit_reads_each_outcome_in_order():
    cases = summary.parse_junit(JUNIT)
    assert [name for name, _ in cases] == ["cl_basic_generation", "env_home_tmpdir", "timelimit_basic", "networkaccess"]
    results = [r for _, r in cases]
    assert [r.status for r in results] == [PASSED, FAILED, TIMEOUT, UNSUPPORTED]
    assert results[0].seconds == 10.5
    # A bare "returned non-zero exit status" is replaced by the runner's last error line.
    assert "HOME is not the output dir" in results[1].message
    assert results[2].message == "Test timed out"


def test_assign_goes_by_position_and_marks_missing_tests():
    cases = summary.parse_junit(JUNIT)[:2]
    # Names in the XML may be wrong (cwltest's -n naming): the position decides.
    results = summary.assign(cases, ["a", "b", "c"])
    assert list(results) == ["a", "b", "c"]
    assert results["a"].status == PASSED
    assert results["b"].status == FAILED
    assert results["c"].status == MISSING


def test_tally_counts_per_tag_with_all_last_and_required_first():
    results = {"t1": Result(PASSED), "t2": Result(FAILED), "t3": Result(UNSUPPORTED), "t4": Result(PASSED)}
    tags = {"t1": ["required", "workflow"], "t2": ["required"], "t3": ["networkaccess"], "t4": ["workflow"]}
    counts = summary.tally(results, tags)
    assert list(counts) == ["required", "networkaccess", "workflow", "all"]
    assert (counts["required"].passed, counts["required"].failed, counts["required"].total) == (1, 1, 2)
    assert (counts["networkaccess"].passed, counts["networkaccess"].failed) == (0, 1)
    assert (counts["workflow"].passed, counts["workflow"].total) == (2, 2)
    assert (counts["all"].passed, counts["all"].failed, counts["all"].total) == (2, 2, 4)


def test_parse_expected_validates_ids_and_reasons():
    known = {"a", "b"}
    assert summary.parse_expected(None, known) == {}
    assert summary.parse_expected({"a": "needs  a\nDocker engine"}, known) == {"a": "needs a Docker engine"}
    with pytest.raises(ValueError, match="'zzz'.*not a test id"):
        summary.parse_expected({"zzz": "reason"}, known)
    with pytest.raises(ValueError, match="needs a reason"):
        summary.parse_expected({"a": ""}, known)
    with pytest.raises(ValueError, match="mapping"):
        summary.parse_expected(["a"], known)


def test_judge_fails_only_on_unlisted_failures():
    results = {"ok": Result(PASSED), "listed": Result(FAILED), "new": Result(TIMEOUT),
               "fixed": Result(PASSED), "gone": Result(MISSING)}
    verdict = summary.judge(results, {"listed": "r1", "fixed": "r2"})
    assert verdict.unexpected_failures == ["new", "gone"]
    assert verdict.unexpected_passes == ["fixed"]
    assert verdict.expected_failures == ["listed"]
    assert not verdict.ok
    assert summary.judge({"ok": Result(PASSED), "listed": Result(UNSUPPORTED)}, {"listed": "r"}).ok


def test_by_reason_groups_most_common_first():
    expected = {"a": "no docker", "b": "network", "c": "no docker"}
    assert summary.by_reason(["a", "b", "c"], expected) == [("no docker", ["a", "c"]), ("network", ["b"])]


def test_format_duration():
    assert summary.format_duration(59.6) == "1m00s"
    assert summary.format_duration(3725) == "1h02m05s"


def test_render_shows_both_runs_and_every_list():
    tags = {"t1": ["required"], "t2": ["required"], "t3": ["docker"], "t4": ["docker"]}
    arv = {"t1": Result(PASSED), "t2": Result(FAILED, "boom"), "t3": Result(FAILED, "no engine"),
           "t4": Result(PASSED)}
    base = {"t1": Result(PASSED), "t2": Result(PASSED), "t3": Result(FAILED), "t4": Result(FAILED)}
    expected = {"t3": "needs a Docker engine", "t4": "needs a Docker engine"}
    verdict = summary.judge(arv, expected)
    text = summary.render(title="T", facts=["date: today"], tags=tags, expected=expected, verdict=verdict,
                          runs=[Run("arvados", arv, 65), Run("single_machine", base, 30)])
    assert text.startswith("# T\n")
    assert "- date: today" in text
    assert "- wall time `arvados`: 1m05s" in text
    assert "| tag | arvados passed | failed | total | single_machine passed | failed | total |" in text
    assert "| required | 1 | 1 | 2 | 2 | 0 | 2 |" in text
    assert "| **all** | 2 | 2 | 4 | 2 | 2 | 4 |" in text
    assert "## Unexpected failures on arvados (1)" in text and "- `t2` (required) failed: boom" in text
    assert "## Unexpected passes on arvados (1)" in text and "- `t4` (docker) passed" in text
    assert "## Passed on single_machine but not on arvados (1)" in text
    assert "## Expected failures (1)" in text and "- needs a Docker engine (1): `t3`" in text
