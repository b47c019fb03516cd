"""``python -m toil_arvados.worker COMMAND``: the entrypoint of every Arvados container Toil submits.

Toil's worker must open the job store named on its command line, and Toil 9 only knows the
``arvados:`` job store once this plugin has registered it. So the container runs this module
first: it registers the plugin, then runs Toil's worker in the same process (or, for a plain
shell command such as the batch system tests send, runs it through ``/bin/sh``).
"""
from __future__ import annotations

import os
import shlex
import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m toil_arvados.worker 'COMMAND'", file=sys.stderr)
        return 2
    command = argv[0]
    words = shlex.split(command)
    if words and os.path.basename(words[0]) == "_toil_worker":
        try:
            from toil_arvados.jobstore.registration import register_job_store
        except ModuleNotFoundError:
            # Without the job store package, Toil's own job stores (file:, aws:...) still work.
            if " arvados:" in command:
                raise
        else:
            register_job_store()
        from toil.worker import main as toil_worker_main

        result = toil_worker_main(words)
        return int(result or 0)
    os.execv("/bin/sh", ["/bin/sh", "-c", command])
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main())
