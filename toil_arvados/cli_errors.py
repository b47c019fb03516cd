"""One-line errors instead of tracebacks for problems the user must fix.

Toil's commands let exceptions from a batch system's constructor (bad token, unknown project,
missing image) and from job submission (a job bigger than any node) reach the interpreter, which
prints a traceback. The plugin installs this hook when Toil loads it, so those errors print as one
line naming the problem and the fix; every other exception keeps Python's usual report.
"""
from __future__ import annotations

import os
import sys
from types import TracebackType

_installed = False


def _one_line(exc: BaseException) -> str | None:
    from toil.batchSystems.abstractBatchSystem import InsufficientSystemResources

    from .arvados_client import ArvadosSetupError, scrub

    if isinstance(exc, ArvadosSetupError):
        return scrub(str(exc))
    if isinstance(exc, InsufficientSystemResources):
        text = " ".join(str(exc).split())
        return scrub(f"{text} Lower the job's requirement or use a cluster with bigger nodes.")
    return None


def install() -> None:
    """Wrap ``sys.excepthook`` once per process."""
    global _installed
    if _installed:
        return
    previous = sys.excepthook

    def hook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        try:
            line = _one_line(exc)
        except Exception:
            line = None
        if line is None:
            previous(exc_type, exc, tb)
            return
        prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "toil"
        print(f"{prog}: error: {line}", file=sys.stderr)

    sys.excepthook = hook
    _installed = True
