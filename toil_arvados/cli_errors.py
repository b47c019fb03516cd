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
    invalid = _invalid_document(exc)
    if invalid is None and exc.__cause__ is not None and type(exc).__name__ == "WorkflowException":
        # cwltool's "Tool definition ... failed validation" for a step's embedded tool (e.g. a
        # hint with a value of the wrong type): the validation error says what is wrong.
        invalid = _invalid_document(exc.__cause__)
    if invalid is not None:
        return scrub(invalid)
    if isinstance(exc, InsufficientSystemResources):
        text = " ".join(str(exc).split())
        return scrub(f"{text} Lower the job's requirement or use a cluster with bigger nodes.")
    return None


def _invalid_document(exc: BaseException) -> str | None:
    """A CWL or YAML document that does not parse: its first problem, on one line."""
    kinds: list[type] = []
    try:
        from schema_salad.exceptions import ValidationException

        kinds.append(ValidationException)
    except ImportError:
        pass
    try:
        from ruamel.yaml.error import YAMLError

        kinds.append(YAMLError)
    except ImportError:
        pass
    if not kinds or not isinstance(exc, tuple(kinds)):
        return None
    lines = [" ".join(line.split()) for line in str(exc).splitlines() if line.strip()]
    text = "; ".join(lines[:3]) + (" ..." if len(lines) > 3 else "")
    return f"invalid CWL or YAML document: {text} (fix the document; `cwltool --validate FILE` shows every problem)"


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
