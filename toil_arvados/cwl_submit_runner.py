"""Inside the runner container of ``--arvadosSubmit``: run the Toil leader, publish its log, and
leave the workflow's outputs where Arvados saves them.

``python3 -m toil_arvados.cwl_submit_runner OUTPUT_DIR -- toil-cwl-runner ...``

* The leader's stderr goes to this container's stderr (Arvados keeps it in the request's log
  collection) and, a batch at a time, into ``logs`` records about this container
  (``event_type`` ``stderr``, the text in ``properties.text``, as crunch-run once wrote them):
  Arvados updates a running container's log collection only every 30 minutes, while the
  submitting command follows these records on the event bus as they come.
* The leader stages the outputs into ``OUTPUT_DIR`` (``--outdir``); its output object goes to
  ``OUTPUT_DIR/cwl.output.json`` with locations relative to the output collection, as
  arvados-cwl-runner writes it, so Workbench and the follower find the files.
* SIGTERM is passed on to the leader, whose shutdown cancels its steps.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable, TextIO

from .cwl_submit_request import OUTPUT_OBJECT, relocate_outputs

LOG_EVENT = "stderr"
_BATCH_SECONDS = 0.5  # how long log lines wait to be sent together
_BATCH_BYTES = 64 << 10


class LogPublisher:
    """Sends lines as ``logs`` records about this container, in batches, from its own thread, so
    the leader never waits on the API for its own logging. Failures only cost the live view:
    the log collection still has every line."""

    def __init__(self, send: Callable[[str], None]) -> None:
        self._send = send
        self._lines: list[str] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="log-publisher", daemon=True)
        self._thread.start()

    def add(self, line: str) -> None:
        with self._cond:
            self._lines.append(line)
            if sum(len(x) for x in self._lines) >= _BATCH_BYTES:
                self._cond.notify()

    def close(self, timeout: float = 30.0) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._closed:
                    self._cond.wait(_BATCH_SECONDS)
                batch, self._lines = self._lines, []
                closed = self._closed
            if batch:
                try:
                    self._send("".join(batch))
                except Exception as e:  # the log collection still has the lines
                    print(f"toil-arvados: could not publish log lines: {type(e).__name__}", file=sys.stderr)
            if closed:
                return


def api_sender() -> Callable[[str], None] | None:
    """A function creating one ``logs`` record about this container, or None outside one."""
    from . import arvados_client

    try:
        api = arvados_client.connect()
        container = arvados_client.unwrapped(api).containers().current().execute()
    except Exception:
        return None
    from .arvados_client import scrub

    def send(text: str) -> None:
        api.logs().create(body={"log": {"object_uuid": container["uuid"], "event_type": LOG_EVENT,
                                        "properties": {"text": scrub(text)}}}).execute()

    return send


def pump(stream: TextIO, sink: TextIO, publisher: LogPublisher | None) -> None:
    for line in stream:
        sink.write(line)
        sink.flush()
        if publisher is not None:
            publisher.add(line)


def write_output_object(raw: str, output_dir: Path) -> None:
    """The leader's output object, relative to the output collection, as cwl.output.json."""
    outputs = json.loads(raw) if raw.strip() else {}
    prefix = Path(output_dir).resolve().as_uri() + "/"
    (output_dir / OUTPUT_OBJECT).write_text(json.dumps(relocate_outputs(outputs, prefix, "", False), indent=2))


def run(output_dir: Path, command: list[str]) -> int:
    """Run the leader to its end; its exit status."""
    sender = api_sender()
    publisher = LogPublisher(sender) if sender is not None else None
    proc = subprocess.Popen([*command, "--outdir", str(output_dir)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, bufsize=1)
    signal.signal(signal.SIGTERM, lambda *_: proc.send_signal(signal.SIGTERM))
    signal.signal(signal.SIGINT, lambda *_: proc.send_signal(signal.SIGINT))
    chunks: list[str] = []
    reader = threading.Thread(target=lambda: chunks.append(proc.stdout.read() if proc.stdout else ""), daemon=True)
    reader.start()
    pump(proc.stderr, sys.stderr, publisher)  # type: ignore[arg-type]
    code = proc.wait()
    reader.join()
    if code == 0:
        try:
            write_output_object("".join(chunks), output_dir)
        except (ValueError, OSError) as e:
            print(f"toil-arvados: cannot write {OUTPUT_OBJECT}: {e}", file=sys.stderr)
            code = 1
    if publisher is not None:
        publisher.add(f"toil-arvados: workflow runner finished with exit code {code}\n")
        publisher.close()
    return code


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 3 or args[1] != "--":
        print("usage: python -m toil_arvados.cwl_submit_runner OUTPUT_DIR -- toil-cwl-runner ARGS...",
              file=sys.stderr)
        return 2
    os.environ.pop("TOIL_ARVADOS_STARTED", None)  # the leader's first contact fails fast
    return run(Path(args[0]), args[2:])


if __name__ == "__main__":
    sys.exit(main())
