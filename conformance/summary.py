"""From cwltest's JUnit XML and the suite's tags to verdicts and a Markdown summary (pure functions).

Nothing here touches the disk, the network or a clock: ``run.py`` reads the files and passes text
and mappings in, so every rule (what counts as passed, which failure fails the run) is unit-tested
on small literal inputs (``tests/test_conformance_summary.py``).

A test's id is its ``id`` in conformance_tests.yaml; results are matched to ids by position (see
:func:`assign`). Outcomes:

* ``passed``
* ``failed``      the runner failed, or its output did not match
* ``timeout``     cwltest killed the runner after ``--timeout`` seconds
* ``unsupported`` the runner exited 33 (UnsupportedRequirement) on a test not tagged ``required``;
  cwltest does not count it as a failure, but it did not pass either, so it must be listed in the
  expected failures like any other test that cannot pass here
* ``missing``     selected, but absent from the XML (cwltest was interrupted or crashed)
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

PASSED, FAILED, TIMEOUT, UNSUPPORTED, MISSING = "passed", "failed", "timeout", "unsupported", "missing"
ALL = "all"


@dataclass(frozen=True)
class Result:
    """One test's outcome in one run."""

    status: str
    message: str = ""
    seconds: float = 0.0


@dataclass(frozen=True)
class Counts:
    passed: int = 0
    failed: int = 0

    @property
    def total(self) -> int:
        return self.passed + self.failed


@dataclass(frozen=True)
class Run:
    """One runner's results over the selection, for the summary."""

    name: str  # e.g. "arvados", "single_machine"
    results: Mapping[str, Result]
    wall_seconds: float


@dataclass(frozen=True)
class Verdict:
    """How a run's results compare with the expected-failures list."""

    unexpected_failures: list[str] = field(default_factory=list)
    unexpected_passes: list[str] = field(default_factory=list)
    expected_failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.unexpected_failures


def parse_junit(xml_text: str) -> list[tuple[str, Result]]:
    """(name, result) of each JUnit ``testcase`` cwltest wrote (``--junit-xml``), in file order.

    The name is the ``file`` attribute (cwltest's short name of the test). Use :func:`assign` to
    attach the results to test ids: with ``-n``, cwltest names the k-th case after the k-th test of
    the whole suite rather than the k-th test it ran, so only the position is reliable.
    """
    root = ET.fromstring(xml_text)
    cases: list[tuple[str, Result]] = []
    for case in root.iter("testcase"):
        name = case.get("file") or case.get("name") or ""
        seconds = float(case.get("time") or 0.0)
        failure = case.find("failure")
        if failure is None:
            failure = case.find("error")
        skipped = case.find("skipped")
        if failure is not None:
            message = failure.get("message") or (failure.text or "")
            status = TIMEOUT if "timed out" in message.lower() else FAILED
            hint = _error_hint(case.findtext("system-err") or "")
            if hint and ("non-zero exit status" in message or not message.strip()):
                message = hint
            cases.append((name, Result(status, _first_line(message), seconds)))
        elif skipped is not None:
            cases.append((name, Result(UNSUPPORTED, _first_line(skipped.get("message") or "Unsupported"), seconds)))
        else:
            cases.append((name, Result(PASSED, "", seconds)))
    return cases


def assign(cases: Sequence[tuple[str, Result]], selected: Sequence[str]) -> dict[str, Result]:
    """Results for exactly the selected tests, in their order; tests without a case are ``missing``.

    cwltest writes one case per selected test in selection order (an interrupted run writes a
    prefix), so the k-th case belongs to the k-th selected test.
    """
    results = {tid: result for tid, (_name, result) in zip(selected, cases)}
    return {tid: results.get(tid, Result(MISSING, "no result in the JUnit XML")) for tid in selected}


_LOG_TEST = re.compile(r"^Test \[(\d+)/\d+\] (\S+?):")
_LOG_FAILED = re.compile(r"^Test (\d+) (failed|timed out)")


def log_failures(log_text: str) -> dict[str, Result]:
    """The tests cwltest's own output (``<runner>.cwltest.log``) reports as failed or timed out,
    by id, with the reason it prints (the line after the test's doc line).

    cwltest's JUnit XML does not record every failure: a ``should_fail`` test whose tool returned 0
    is written as a passing case, while cwltest's log and final count call it a failure."""
    ids: dict[str, str] = {}
    failed: dict[str, Result] = {}
    lines = log_text.splitlines()
    for i, line in enumerate(lines):
        test = _LOG_TEST.match(line)
        if test:
            ids[test.group(1)] = test.group(2)
            continue
        end = _LOG_FAILED.match(line)
        if end and end.group(1) in ids:
            reason = lines[i + 2].strip() if i + 2 < len(lines) else ""
            status = TIMEOUT if end.group(2) == "timed out" else FAILED
            failed[ids[end.group(1)]] = Result(status, _first_line(reason or f"cwltest: {end.group(2)}"))
    return failed


def with_log_failures(results: Mapping[str, Result], failures: Mapping[str, Result]) -> dict[str, Result]:
    """``results`` (from the JUnit XML), with the failures only cwltest's log names made failures."""
    merged = dict(results)
    for tid, failure in failures.items():
        if tid in merged and merged[tid].status == PASSED:
            merged[tid] = failure
    return merged


_ERROR_MARKERS = ("[E]", "[C]", "ERROR", "Error", "error:")
_EXCEPTION_LINE = re.compile(r"^[\w.]*(Error|Exception|Requirement|Fail\w*): \S")
_LOG_PREFIX = re.compile(r"^(\[[^\]]*\]\s*){3,4}")  # Toil's "[time] [thread] [E] [logger] "


def _error_hint(stderr: str) -> str:
    """The most telling line of a failed runner's stderr.

    The last exception line (``cwltool.errors.UnsupportedRequirement: ...``) names the cause
    best; else the last error-looking log line; else the last line. Toil's log prefix is dropped.
    """
    raw = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    lines = [_LOG_PREFIX.sub("", ln) for ln in raw]
    for line in reversed(lines):
        if _EXCEPTION_LINE.match(line):
            return line
    for original, line in zip(reversed(raw), reversed(lines)):
        if any(marker in original for marker in _ERROR_MARKERS):
            return line
    return lines[-1] if lines else ""


def _first_line(text: str, limit: int = 200) -> str:
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def tally(results: Mapping[str, Result], tags: Mapping[str, Sequence[str]]) -> dict[str, Counts]:
    """Per tag (and ``all``): how many of the given results passed and failed (anything not passed)."""
    passed: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    for tid, result in results.items():
        for tag in (*tags.get(tid, ()), ALL):
            (passed if result.status == PASSED else failed)[tag] += 1
    return {tag: Counts(passed[tag], failed[tag]) for tag in tag_order(set(passed) | set(failed))}


def tag_order(tags: set[str]) -> list[str]:
    """``required`` first, ``all`` last, the rest alphabetically: the order of the summary's rows."""
    middle = sorted(t for t in tags if t not in ("required", ALL))
    return (["required"] if "required" in tags else []) + middle + ([ALL] if ALL in tags else [])


#: How a run treats DockerRequirements: ``docker`` (an engine runs them) or ``none`` (--no-container).
CONTAINER_MODES = ("docker", "namespace", "none")


def parse_expected(data: Any, known_ids: set[str], containers: str = "none") -> dict[str, str]:
    """Validate the loaded expected-failures YAML; the entries that apply in mode ``containers``.

    The file maps test id -> reason. A reason is either text, which applies in every container
    mode, or a mapping of container mode (``none``, ``docker``) -> text, which applies only in
    the modes it names (a test that needs a Docker engine fails only without one). Every entry is
    validated, whichever mode is asked for, so a mistake shows up in any run.
    """
    if containers not in CONTAINER_MODES:
        raise ValueError(f"unknown container mode {containers!r}: one of {', '.join(CONTAINER_MODES)}")
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ValueError("the expected-failures file must be a mapping of test id to reason")
    expected: dict[str, str] = {}
    for key, value in data.items():
        if not isinstance(key, str) or key not in known_ids:
            raise ValueError(f"expected-failures lists {key!r}, which is not a test id of the suite")
        reasons = value if isinstance(value, Mapping) else {mode: value for mode in CONTAINER_MODES}
        if not reasons:
            raise ValueError(f"expected-failures entry {key!r} needs a reason (a non-empty string)")
        for mode, reason in reasons.items():
            if mode not in CONTAINER_MODES:
                raise ValueError(f"expected-failures entry {key!r}: {mode!r} is not a container mode "
                                 f"(one of {', '.join(CONTAINER_MODES)})")
            if not isinstance(reason, str) or not reason.strip():
                raise ValueError(f"expected-failures entry {key!r} needs a reason (a non-empty string)"
                                 + (f" for {mode!r}" if isinstance(value, Mapping) else ""))
        if containers in reasons:
            expected[key] = " ".join(reasons[containers].split())
    return expected


def judge(results: Mapping[str, Result], expected: Mapping[str, str]) -> Verdict:
    """Failures not on the list fail the run; listed tests that passed are reported for pruning."""
    verdict = Verdict()
    for tid, result in results.items():
        if result.status == PASSED:
            if tid in expected:
                verdict.unexpected_passes.append(tid)
        elif tid in expected:
            verdict.expected_failures.append(tid)
        else:
            verdict.unexpected_failures.append(tid)
    return verdict


def by_reason(ids: Sequence[str], expected: Mapping[str, str]) -> list[tuple[str, list[str]]]:
    """Expected failures grouped by reason, most common reason first."""
    groups: dict[str, list[str]] = {}
    for tid in ids:
        groups.setdefault(expected[tid], []).append(tid)
    return sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def render(*, title: str, facts: Sequence[str], runs: Sequence[Run], tags: Mapping[str, Sequence[str]],
           expected: Mapping[str, str], verdict: Verdict) -> str:
    """The Markdown summary: per-tag table (one column group per run), then the lists.

    ``verdict`` is the first run's (the runner under test); the others are baselines.
    """
    main = runs[0]
    counts = [tally(run.results, tags) for run in runs]
    rows = tag_order(set().union(*(c.keys() for c in counts)))
    lines = [f"# {title}", ""]
    lines += [f"- {fact}" for fact in facts]
    lines += [f"- wall time `{run.name}`: {format_duration(run.wall_seconds)}" for run in runs]
    lines.append("")
    header = "| tag | " + " | ".join(f"{run.name} passed | failed | total" for run in runs) + " |"
    lines += [header, "|---" * (1 + 3 * len(runs)) + "|"]
    for tag in rows:
        cells = []
        for c in counts:
            n = c.get(tag, Counts())
            cells.append(f"{n.passed} | {n.failed} | {n.total}")
        name = f"**{tag}**" if tag == ALL else tag
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")

    def listing(heading: str, ids: Sequence[str], results: Mapping[str, Result], note: str = "") -> None:
        lines.append(f"## {heading} ({len(ids)})")
        lines.append("")
        if note:
            lines.extend([note, ""])
        for tid in ids:
            r = results[tid]
            detail = f": {r.message}" if r.message else ""
            lines.append(f"- `{tid}` ({', '.join(tags.get(tid, ()))}) {r.status}{detail}")
        if ids:
            lines.append("")

    listing(f"Unexpected failures on {main.name}", verdict.unexpected_failures, main.results,
            "These fail the run: fix them, or list them in conformance/expected-failures.yaml with the true reason.")
    listing(f"Unexpected passes on {main.name}", verdict.unexpected_passes, main.results,
            "Listed as expected failures but passed: remove them from conformance/expected-failures.yaml.")
    for run in runs[1:]:
        worse = [t for t in main.results if main.results[t].status != PASSED
                 and run.results.get(t, Result(MISSING)).status == PASSED]
        listing(f"Passed on {run.name} but not on {main.name}", worse, main.results)
        other = [t for t in run.results if run.results[t].status != PASSED and t not in expected]
        listing(f"Failed on {run.name}, not on the expected-failures list", other, run.results,
                "For information only: the list describes the runner under test.")
    lines.append(f"## Expected failures ({len(verdict.expected_failures)})")
    lines.append("")
    for reason, ids in by_reason(verdict.expected_failures, expected):
        lines.append(f"- {reason} ({len(ids)}): " + ", ".join(f"`{t}`" for t in ids))
    lines.append("")
    return "\n".join(lines)
