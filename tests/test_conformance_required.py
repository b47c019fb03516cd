"""CI: every CWL v1.2 conformance test tagged ``required`` on ``--batchSystem arvados``.

Runs the real harness (``conformance/run.py --tags required``) as a user would, against its own
local cluster, so `.ci/run`'s single pytest command covers it. ``--containers none`` even where CI
starts a Docker engine (for the Docker runtime tests): the expected-failures list was measured
with ``--no-container``, and this test checks exactly that configuration. It fails on any failure
not on ``conformance/expected-failures.yaml``; the summary (per-tag table, lists) is printed either way.
Budget: under 15 minutes on 2 cores (measured figures in conformance/README.md).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RUN = REPO / "conformance" / "run.py"
BUDGET = 15 * 60


@pytest.mark.timeout(BUDGET + 120)
def test_required_conformance_tests_pass_on_arvados(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, str(RUN), "--tags", "required", "--containers", "none",
                             "--out", str(out)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = proc.communicate(timeout=BUDGET)
    except subprocess.TimeoutExpired:
        proc.terminate()  # run.py stops its runners and its cluster on SIGTERM
        output, _ = proc.communicate(timeout=90)
        pytest.fail(f"the required conformance tests took over {BUDGET // 60} minutes:\n{output[-5000:]}")
    summary_file = out / "summary.md"
    print(summary_file.read_text() if summary_file.exists() else output)
    assert proc.returncode == 0, f"conformance/run.py exited {proc.returncode}:\n{output[-8000:]}"
    assert (out / "arvados.junit.xml").exists()
