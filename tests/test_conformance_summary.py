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


def test_parse_expected_applies_mode_specific_entries_only_in_their_mode():
    known = {"a", "b", "c", "d"}
    data = {"a": "always", "b": {"none": "needs a  Docker engine"},
            "c": {"none": "needs Docker", "docker": "needs the Internet"}, "d": {"docker": "docker bug"}}
    assert summary.parse_expected(data, known) == {"a": "always", "b": "needs a Docker engine", "c": "needs Docker"}
    assert summary.parse_expected(data, known, "none") == summary.parse_expected(data, known)
    assert summary.parse_expected(data, known, "docker") == {"a": "always", "c": "needs the Internet", "d": "docker bug"}


def test_parse_expected_validates_mode_entries_in_every_mode():
    known = {"a"}
    for mode in ("none", "docker"):
        # A mistake in the other mode's reason is still an error.
        with pytest.raises(ValueError, match="'a' needs a reason.*'docker'"):
            summary.parse_expected({"a": {"none": "ok", "docker": " "}}, known, mode)
        with pytest.raises(ValueError, match="'podman' is not a container mode"):
            summary.parse_expected({"a": {"podman": "r"}}, known, mode)
        with pytest.raises(ValueError, match="needs a reason"):
            summary.parse_expected({"a": {}}, known, mode)
        with pytest.raises(ValueError, match="'zzz'.*not a test id"):
            summary.parse_expected({"zzz": {"none": "r"}}, known, mode)
    with pytest.raises(ValueError, match="unknown container mode"):
        summary.parse_expected({}, known, "auto")


def test_a_no_container_only_entry_that_passes_in_docker_is_a_plain_pass():
    data = {"needs_docker": {"none": "needs a Docker engine"}, "no_net": {"docker": "no Internet"}}
    results = {"needs_docker": Result(PASSED), "no_net": Result(FAILED)}
    docker = summary.judge(results, summary.parse_expected(data, set(data), "docker"))
    assert docker.ok and docker.unexpected_passes == [] and docker.expected_failures == ["no_net"]
    # Without Docker the same list fails on the network test, which is not expected there.
    none = summary.judge({"needs_docker": Result(FAILED), "no_net": Result(FAILED)},
                         summary.parse_expected(data, set(data), "none"))
    assert none.unexpected_failures == ["no_net"] and none.expected_failures == ["needs_docker"]


def test_the_repository_list_is_valid_in_both_modes():
    import yaml

    import suite

    known = {t.id for t in suite.load_tests(suite.locate(None, fetch=False))} if suite.SHARED_SUITE.exists() else None
    if known is None:
        pytest.skip("no ../shared/cwl-v1.2 copy of the suite")
    data = yaml.safe_load((Path(summary.__file__).parent / "expected-failures.yaml").read_text())
    none, docker = (summary.parse_expected(data, known, m) for m in ("none", "docker"))
    # Tests that need a Docker engine are expected failures only without one.
    assert "docker_entrypoint" in none and "docker_entrypoint" not in docker
    assert "networkaccess" in none and "networkaccess" in docker  # no Internet here, in either mode


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


def _case(file: str, failed: bool = False) -> str:
    failure = '<failure type="failure" message="boom">boom</failure>' if failed else ""
    return f'<testcase name="{file}" time="1.0" class="docker" file="{file}">{failure}</testcase>'


def test_record_mode_reads_the_stored_mode_else_the_containers_fact():
    import run

    assert run._record_mode({"containers": "docker", "facts": []}) == "docker"
    assert run._record_mode({"containers": "none", "facts": ["containers: Docker engine 20.10 (Docker)"]}) == "none"
    # Records written before the mode was stored: their containers fact says it.
    assert run._record_mode({"facts": ["date: x", "containers: Docker engine 20.10 (Docker)"]}) == "docker"
    assert run._record_mode({"facts": ["containers: --no-container (asked)"]}) == "none"
    assert run._record_mode({}) == "none"


@pytest.mark.parametrize("record_mode, in_docker", [("docker", True), ("none", False)])
def test_summary_only_judges_with_the_runs_container_mode(tmp_path, monkeypatch, record_mode, in_docker):
    import json

    import run
    import suite

    if not (suite.SHARED_SUITE / suite.TESTS_FILE).exists():
        pytest.skip("no ../shared/cwl-v1.2 copy of the suite")
    listing = tmp_path / "expected.yaml"
    listing.write_text("docker_entrypoint: {none: needs a Docker engine}\nnetworkaccess: {docker: no Internet}\n")
    monkeypatch.setattr(run, "EXPECTED_FILE", listing)
    out = tmp_path / "out"
    out.mkdir()
    record = {"facts": [], "containers": record_mode, "tests": ["docker_entrypoint", "networkaccess"],
              "runs": [{"name": "arvados", "wall_seconds": 2.0}]}
    (out / "run.json").write_text(json.dumps(record))
    # docker_entrypoint passes (in Docker), networkaccess fails (no Internet).
    (out / "arvados.junit.xml").write_text(
        f"<testsuites><testsuite>{_case('docker_entrypoint')}{_case('networkaccess', failed=True)}"
        "</testsuite></testsuites>")
    rc = run.main(["--summary-only", "--out", str(out)])
    text = (out / "summary.md").read_text()
    if in_docker:
        assert rc == 0
        assert "- no Internet (1): `networkaccess`" in text
        # The --no-container-only entry of a test that passes in Docker is no "unexpected pass".
        assert "## Unexpected passes on arvados (0)" in text
    else:
        # The same results judged as a --no-container run: the Docker-only entry does not apply.
        assert rc == 1
        assert "- `networkaccess` (" in text.split("## Unexpected failures on arvados (1)")[1]
        assert "- `docker_entrypoint` (" in text.split("## Unexpected passes on arvados (1)")[1]


def test_failures_only_cwltests_log_names_override_a_junit_pass():
    """cwltest writes a should_fail test whose tool returned 0 as a passing JUnit case; its log
    (and its final count) say it failed, and so must the summary."""
    log = """Test [1/3] cl_basic_generation: General test of command line generation

Test [2/3] illegal_symlink: symlink to file outside of working directory should NOT be retrieved

Test 2 failed: toil-cwl-runner tests/symlink-illegal.cwl tests/empty.json
symlink to file outside of working directory should NOT be retrieved
Returned zero but it should be non-zero

Test [3/3] slow_one: takes long
Test 3 timed out: toil-cwl-runner tests/slow.cwl
takes long
Test timed out after 10 seconds
"""
    failures = summary.log_failures(log)
    assert failures == {"illegal_symlink": Result(FAILED, "Returned zero but it should be non-zero"),
                        "slow_one": Result(TIMEOUT, "Test timed out after 10 seconds")}
    junit = {"cl_basic_generation": Result(PASSED), "illegal_symlink": Result(PASSED),
             "slow_one": Result(TIMEOUT, "timed out")}
    merged = summary.with_log_failures(junit, failures)
    assert merged["cl_basic_generation"].status == PASSED
    assert merged["illegal_symlink"] == Result(FAILED, "Returned zero but it should be non-zero")
    assert merged["slow_one"] == Result(TIMEOUT, "timed out")  # the XML's own account stays
