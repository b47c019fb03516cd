"""Progress: Toil's progress bar counts the run's requests by Arvados state, and ``toil status``
on a Keep job store lists the run's container requests.

Why: Toil's own bar knows only jobs issued and done; on Arvados what a user waits for is
requests queued (Queued/Locked containers) and running, which only the request tracker knows.
The unit tests pin the counting (every state change, killed requests leaving the counts) and the
hook into Toil's leader without a server; the end-to-end tests run ``toil-cwl-runner`` on a
terminal (the bar is drawn only there) and ``toil status`` as a user does.
"""
from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import re
import struct
import subprocess
import termios
import textwrap
import threading
from pathlib import Path
from typing import Any

import enlighten
import pytest
from toil.leader import Leader

from toil_arvados import arvados_client, toil_patches
from toil_arvados.request_tracker import RequestCounts, RequestTracker
from toil_arvados.run_status import request_lines

from test_step_engine import FakeApi
from toil_cli import TOIL_CWL_RUNNER, VENV_BIN, run, workflow_id


# -- counting, without a server ---------------------------------------------------------------------

@pytest.fixture
def tracker(monkeypatch: pytest.MonkeyPatch):
    def no_events(*a: Any, **k: Any) -> Any:
        raise ConnectionError("no event bus here")

    monkeypatch.setattr(arvados_client, "subscribe_events", no_events)
    api = FakeApi()
    t = RequestTracker(api, poll_interval=3600)
    t.api_records = api.records  # type: ignore[attr-defined]
    yield t
    t.stop()


def _update(kind: str, uuid: str, state: str) -> dict:
    return {"object_uuid": uuid, "object_kind": f"arvados#{kind}", "event_type": "update",
            "properties": {"new_attributes": {"state": state}}}


def test_counts_follow_arvados_states_from_events(tracker: RequestTracker) -> None:
    for i in range(4):
        tracker.api_records["cr"][f"cr{i}"] = {"uuid": f"cr{i}", "state": "Final", "container_uuid": f"c{i}"}
        tracker.track({"uuid": f"cr{i}", "state": "Committed", "container_uuid": f"c{i}"}, lambda cr, c: None)
    assert tracker.counts() == RequestCounts(queued=4, running=0, finished=0)
    tracker._on_event(_update("container", "c0", "Locked"))  # still waiting for its node
    tracker._on_event(_update("container", "c1", "Running"))
    tracker._on_event(_update("container", "c1", "Running"))  # a repeated event counts once
    assert tracker.counts() == RequestCounts(queued=3, running=1, finished=0)
    tracker._on_event(_update("containerRequest", "cr1", "Final"))
    tracker._on_event(_update("containerRequest", "cr2", "Final"))  # ended without ever running
    assert tracker.counts() == RequestCounts(queued=2, running=0, finished=2)
    assert tracker.forget("cr3")  # killed by Toil: in no count
    assert tracker.counts() == RequestCounts(queued=1, running=0, finished=2)
    assert tracker.queued() == 1


def test_counts_from_batched_reconciliation_and_reuse(tracker: RequestTracker) -> None:
    records = tracker.api_records
    tracker.track({"uuid": "reused", "state": "Final", "container_uuid": "c-old"}, lambda cr, c: None)
    assert tracker.counts() == RequestCounts(finished=1), "a request reused at once is finished at once"
    for uuid, c_state in (("a", "Queued"), ("b", "Locked"), ("c", "Running")):
        records["cr"][uuid] = {"uuid": uuid, "state": "Committed", "container_uuid": f"c-{uuid}"}
        records["c"][f"c-{uuid}"] = {"uuid": f"c-{uuid}", "state": c_state}
        tracker.track({"uuid": uuid, "state": "Committed", "container_uuid": f"c-{uuid}"}, lambda cr, c: None)
    tracker._reconcile_all()  # the event bus missed everything: one batched look
    assert tracker.counts() == RequestCounts(queued=2, running=1, finished=1)
    tracker.track({"uuid": "again", "state": "Committed"}, lambda cr, c: None, running=True)  # re-attached
    assert tracker.counts() == RequestCounts(queued=2, running=2, finished=1)
    assert tracker.counts().summary() == "Arvados: 2 queued, 2 running, 1 finished"


# -- the hook into Toil's leader --------------------------------------------------------------------

class _Summarizing:
    def __init__(self) -> None:
        self.counts = RequestCounts()

    def progress_summary(self) -> str:
        return self.counts.summary()


def _leader(batch_system: Any) -> Leader:
    leader = Leader.__new__(Leader)  # only the attributes the bar uses
    leader.batchSystem = batch_system
    return leader


def test_progress_bar_description_carries_the_batch_systems_counts() -> None:
    toil_patches.progress_bar_shows_batch_system_summary()
    stream = io.StringIO()
    manager = enlighten.Manager(stream=stream, enabled=True)  # as on a terminal
    bs = _Summarizing()
    leader = _leader(bs)
    leader.progress_overall = manager.counter(total=0, desc="Workflow Progress", unit="jobs")
    failed = leader.progress_overall.add_subcounter((253, 199, 0))
    leader.progress_overall.total += 2  # as Leader.issueJob does
    bs.counts = RequestCounts(queued=1, running=1, finished=0)
    leader.progress_overall.update(incr=0, force=True)
    assert "Workflow Progress (Arvados: 1 queued, 1 running, 0 finished)" in stream.getvalue()
    bs.counts = RequestCounts(queued=0, running=0, finished=2)
    leader.progress_overall.update(incr=2)  # the last job: enlighten redraws at 100%
    manager.stop()
    assert "Workflow Progress (Arvados: 0 queued, 0 running, 2 finished)" in stream.getvalue()
    assert leader.progress_overall.total == 2 and leader.progress_overall.count == 2 and failed.count == 0


def test_progress_bar_untouched_without_a_summary_or_a_terminal() -> None:
    toil_patches.progress_bar_shows_batch_system_summary()
    on_terminal = enlighten.Manager(stream=io.StringIO(), enabled=True).counter(total=0, desc="W")
    other = _leader(object())  # a batch system without progress_summary
    other.progress_overall = on_terminal
    assert other.progress_overall is on_terminal
    off = enlighten.Manager(stream=io.StringIO(), enabled=False).counter(total=0, desc="W")
    ours = _leader(_Summarizing())
    ours.progress_overall = off
    assert ours.progress_overall is off, "a disabled bar (no terminal) costs nothing"
    ours.progress_overall = None
    assert ours.progress_overall is None


def test_status_lines_name_each_request_its_container_state_and_exit_code() -> None:
    requests = [{"uuid": "zzzzz-xvhdp-000000000000001", "name": "Toil workflow run w", "state": "Uncommitted"},
                {"uuid": "zzzzz-xvhdp-000000000000002", "name": "make", "state": "Final",
                 "container_uuid": "zzzzz-dz642-000000000000002"},
                {"uuid": "zzzzz-xvhdp-000000000000003", "name": "break", "state": "Committed",
                 "container_uuid": "zzzzz-dz642-000000000000003"}]
    containers = {"zzzzz-dz642-000000000000002": {"state": "Complete", "exit_code": 0},
                  "zzzzz-dz642-000000000000003": {"state": "Running", "exit_code": None}}
    lines = request_lines("w", requests, containers)
    assert lines[0] == "Arvados container requests of workflow w (3):"
    assert lines[1].split() == ["UUID", "STATE", "CONTAINER", "EXIT", "NAME"]
    assert lines[2].split() == ["zzzzz-xvhdp-000000000000001", "Uncommitted", "-", "-", "Toil", "workflow", "run", "w"]
    assert lines[3].split() == ["zzzzz-xvhdp-000000000000002", "Final", "Complete", "0", "make"]
    assert lines[4].split() == ["zzzzz-xvhdp-000000000000003", "Committed", "Running", "-", "break"]
    column = lines[1].index("STATE")
    assert all(line[column:].startswith(r["state"]) for line, r in zip(lines[2:], requests)), "aligned"
    assert request_lines("w", [], {}) == ["No Arvados container requests carry workflow id w."]


# -- end to end ---------------------------------------------------------------------------------------

_TWO_STEPS = textwrap.dedent("""\
    cwlVersion: v1.2
    class: Workflow
    requirements: {ScatterFeatureRequirement: {}}
    inputs:
      words: string[]
      code: int
    outputs: []
    steps:
      say:
        run:
          class: CommandLineTool
          baseCommand: echo
          inputs: {word: {type: string, inputBinding: {position: 1}}}
          outputs: {said: stdout}
          stdout: said.txt
        scatter: word
        in: {word: words}
        out: [said]
      end:
        run:
          class: CommandLineTool
          baseCommand: [sh, -c]
          arguments: ["exit $(inputs.code)"]
          inputs: {code: int, said: "File[]"}
          outputs: []
        in: {code: code, said: say/said}
        out: []
    """)


def _workflow(where: Path, words: list[str], code: int) -> tuple[Path, Path]:
    wf, inputs = where / "two-steps.cwl", where / "inputs.json"
    wf.write_text(_TWO_STEPS)
    inputs.write_text(json.dumps({"words": words, "code": code}))
    return wf, inputs


def _run_on_terminal(args: list[str], env: dict[str, str], cwd: Path, timeout: float) -> tuple[int, str]:
    """Run with stderr on a pseudo-terminal (120 columns), as a user at a terminal does."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        proc = subprocess.Popen(args, env={**env, "TERM": "xterm"}, cwd=cwd, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=slave)
        os.close(slave)
        code = proc.wait(timeout=timeout)
    finally:
        reader.join(timeout=10)
        os.close(master)
    return code, b"".join(chunks).decode("utf-8", "replace")


_BAR = re.compile(r"Workflow Progress \(Arvados: (\d+) queued, (\d+) running, (\d+) finished\)")


def test_progress_bar_on_a_terminal_counts_the_runs_requests(api, clean_project, env, tmp_path: Path) -> None:
    wf, inputs = _workflow(tmp_path, ["one", "two", "three"], 0)
    code, output = _run_on_terminal(
        [TOIL_CWL_RUNNER, "--batchSystem", "arvados", "--arvadosProject", clean_project, "--noArvadosStepReuse",
         "--jobStore", f"arvados:{clean_project}/progress-bar", "--outdir", str(tmp_path / "out"),
         str(wf), str(inputs)], env, tmp_path, timeout=600)
    assert code == 0, output[-4000:]
    bars = [tuple(map(int, m.groups())) for m in _BAR.finditer(output)]
    assert bars, f"no progress bar with Arvados counts on the terminal:\n{output[-3000:]}"
    assert bars[-1] == (0, 0, 4), f"at the end every step request (3 + 1) is finished: {bars[-3:]}"
    assert all(q + r + f <= 4 for q, r, f in bars), bars


def test_toil_status_lists_the_runs_container_requests(api, clean_project, env, tmp_path: Path) -> None:
    wf, inputs = _workflow(tmp_path, ["one", "two"], 3)
    store = f"arvados:{clean_project}/status-of-a-failed-run"
    failed = run([TOIL_CWL_RUNNER, "--batchSystem", "arvados", "--arvadosProject", clean_project,
                  "--noArvadosStepReuse", "--retryCount", "0", "--jobStore", store,
                  "--outdir", str(tmp_path / "out"), str(wf), str(inputs)], env, tmp_path, timeout=600)
    assert failed.returncode != 0, failed.describe()
    status = run([str(VENV_BIN / "toil"), "status", store], env, tmp_path, timeout=300)
    assert status.returncode == 0, status.describe()
    out = status.stdout
    wid = workflow_id(failed.stderr)
    assert f"Arvados container requests of workflow {wid} (4):" in out, out  # 2 + 1 steps, the run's record
    rows = [line.split(None, 4)[1:] for line in out.splitlines() if "-xvhdp-" in line]  # state .. name
    assert [row[:3] for row in rows if row[3] == f"Toil workflow run {wid}"] == [["Uncommitted", "-", "-"]], out
    steps = sorted(row for row in rows if row[3] != f"Toil workflow run {wid}")
    assert [row[:3] for row in steps] == [["Final", "Complete", "0"]] * 2 + [["Final", "Complete", "3"]], out
    assert ".end." in steps[-1][3], "the failed request is the step that exits 3"
    assert "Of the" in out, "Toil's own report comes first, unchanged"
