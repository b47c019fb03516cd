"""Helpers for end-to-end tests that run Toil's real commands against the session's local cluster.

Why subprocesses: what the user runs is ``toil-cwl-runner`` (or a Toil script) as its own process,
which discovers the plugin, parses options, prints errors and reacts to signals. Only a real
process shows all of that.  Containers see nothing of this machine (only their image and
mounts), so a Toil script reaches its workers through the job store, as on any cluster.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TypeVar

T = TypeVar("T")

VENV_BIN = Path(sys.executable).parent
TOIL_CWL_RUNNER = str(VENV_BIN / "toil-cwl-runner")

# A whole Toil log record on one line: "[time] [thread] [E] [logger] message".
_LOG_ERROR = re.compile(r"^\[[^\]]+\] \[[^\]]+\] \[[EC]\] \[[^\]]+\] \S")


def poll_until(fetch: Callable[[], T], done: Callable[[T], bool], timeout: float, what: str,
               interval: float = 0.25) -> T:
    """Call ``fetch`` until ``done`` holds for its value; fail at the deadline with the last value.

    The interval is modest because each poll is a few API calls while a workflow runs for tens of
    seconds; the deadline, not the interval, bounds the wait.
    """
    deadline = time.monotonic() + timeout
    value = fetch()
    while not done(value):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last value: {value!r}"[:4000])
        time.sleep(interval)
        value = fetch()
    return value


def toil_env(cluster_env: Mapping[str, str]) -> dict[str, str]:
    """The environment for a Toil subprocess: the cluster's ARVADOS_* and the venv's bin first.

    single_machine starts ``_toil_worker`` by name, so the venv's bin must be on PATH.
    """
    env = dict(os.environ)
    env.pop("TOIL_ARVADOS_STARTED", None)  # set in this process by in-process batch systems
    env.update(cluster_env)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


@dataclass
class Finished:
    """A finished command: exit status, output, and how long it took."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def describe(self) -> str:
        """The end of the log, for assertion messages."""
        return f"exit {self.returncode} after {self.seconds:.0f}s; stderr tail:\n{self.stderr[-4000:]}"


def _default_sigint() -> None:
    # A process started from a non-interactive shell in the background inherits SIGINT as
    # "ignored", and Python then never raises KeyboardInterrupt; a leader must react to Ctrl-C.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run(args: Sequence[str], env: Mapping[str, str], cwd: Path, timeout: float) -> Finished:
    """Run a command to the end (killed at ``timeout``, which fails the caller's assertions)."""
    t0 = time.monotonic()
    try:
        p = subprocess.run(list(args), env=dict(env), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, timeout=timeout, preexec_fn=_default_sigint)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        raise AssertionError(f"{args[0]} did not finish within {timeout:.0f}s; stderr tail:\n{err[-4000:]}"
                             f"\nstdout tail:\n{out[-1000:]}") from None
    return Finished(p.returncode, p.stdout, p.stderr, time.monotonic() - t0)


class Background:
    """A command running in the background with its output in files (no pipe to fill up)."""

    def __init__(self, args: Sequence[str], env: Mapping[str, str], cwd: Path, name: str) -> None:
        self.stdout_path = cwd / f"{name}.stdout"
        self.stderr_path = cwd / f"{name}.stderr"
        self.started = time.monotonic()
        with open(self.stdout_path, "w") as out, open(self.stderr_path, "w") as err:
            self.proc = subprocess.Popen(list(args), env=dict(env), cwd=cwd, stdout=out, stderr=err,
                                         preexec_fn=_default_sigint)

    def wait(self, timeout: float) -> Finished:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"process did not exit within {timeout:.0f}s; stderr tail:\n"
                                 f"{self.stderr_path.read_text()[-4000:]}") from None
        return Finished(code, self.stdout_path.read_text(), self.stderr_path.read_text(),
                        time.monotonic() - self.started)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stderr(self) -> str:
        return self.stderr_path.read_text()


def upload_text(api: Any, project: str, filename: str, data: bytes, name: str) -> str:
    """Save ``data`` as ``filename`` in a new collection in ``project``; its ``keep:`` URL."""
    import arvados.collection

    coll = arvados.collection.Collection(api_client=api)
    with coll.open(filename, "wb") as f:
        f.write(data)
    coll.save_new(name=name, owner_uuid=project, ensure_unique_name=True)
    return f"keep:{coll.portable_data_hash()}/{filename}"


def list_all(resource: Any, filters: list, select: list[str] | None = None) -> list[dict]:
    """Every matching record, over as many pages as the server sends (the plugin's own paging)."""
    from toil_arvados.arvados_client import list_all as gateway_list_all

    return gateway_list_all(resource.list, filters, select)


def project_requests(api: Any, project: str) -> list[dict]:
    """The container requests owned by ``project`` (what one test's workflows submitted)."""
    return list_all(api.container_requests(), [["owner_uuid", "=", project]])


def containers_by_uuid(api: Any, requests: list[dict]) -> dict[str, dict]:
    """The containers of these requests, in one batched call."""
    uuids = sorted({cr["container_uuid"] for cr in requests if cr.get("container_uuid")})
    if not uuids:
        return {}
    return {c["uuid"]: c for c in list_all(api.containers(), [["uuid", "in", uuids]])}


def cancel_all(api: Any, project: str) -> None:
    """Cancel whatever a test left running in its project, so later tests get the cluster's cores."""
    for cr in list_all(api.container_requests(), [["owner_uuid", "=", project], ["state", "=", "Committed"],
                                                  ["priority", ">", 0]], ["uuid"]):
        try:
            api.container_requests().update(uuid=cr["uuid"], body={"container_request": {"priority": 0}}).execute()
        except Exception:
            pass


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def is_one_line_error(line: str, prog: str = "toil-cwl-runner") -> bool:
    """``prog: error: ...`` (the plugin's own report) or one Toil error log record."""
    return line.startswith(f"{prog}: error:") or bool(_LOG_ERROR.match(line))


def workflow_id(stderr: str) -> str:
    """The Toil workflow id the leader logged ("Recording workflow creation of <id> in ...")."""
    m = re.search(r"Recording workflow creation of (\S+) in ", stderr) or re.search(r"Workflow (\S+) stopped", stderr)
    assert m, "the leader's log names no workflow id"
    return m.group(1)
