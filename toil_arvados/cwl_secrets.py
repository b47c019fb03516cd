"""``cwltool:Secrets`` inputs of a native step: real values only in the request's ``secret_mounts``.

cwltool replaces each secret input with a placeholder ``(secret-<uuid>)`` as soon as it reads
the job order, and keeps the real value in ``runtimeContext.secret_store``; a local cwltool run
swaps the real values back in only at the last moment (command line, environment, and the
content of InitialWorkDir files it writes). A native step never runs the command itself, so
whatever it sends Arvados is what the tool sees, and everything it sends except
``secret_mounts`` is readable by whoever can read the container request, its container or their
``logs`` rows.

So, as ``arvados-cwl-runner`` does (``arvcontainer.py``):

* a file literal whose content holds a secret (an InitialWorkDir ``entry``, a File with
  ``contents``) becomes a ``{"kind": "text"}`` mount in ``secret_mounts`` at the file's path,
  with the real content; it is left out of the staging collection (which anyone who can read the
  project can read). Arvados never copies a secret mount into the output collection, and compares
  secret mounts for reuse only through their md5;
* a secret on the command line or in the environment is refused (:class:`SecretExposed`: the
  step fails as ``permanentFail`` with one error line, no container request made): both are
  stored in plain text in the request and its container, and a-c-r refuses them the same way
  ("only file literals may contain secrets"). A tool that needs a secret as an argument reads it
  from an InitialWorkDir file instead (e.g. ``$(cat secret.txt)`` under ShellCommandRequirement).

Secret mounts are read-only (Arvados' text mounts are): a writable file literal holding a secret
is refused rather than silently made read-only.
"""
from __future__ import annotations

import posixpath
from typing import Any, Iterable, Mapping, Protocol

from cwl_utils.errors import WorkflowException

from .cwl_staging import Entry

_LITERALS = ("CreateFile", "CreateWritableFile")


class SecretExposed(WorkflowException):
    """A secret would be stored readable in a request: the step fails, reported in one line."""


class SecretLookup(Protocol):
    """What is used of cwltool's ``SecretStore``."""

    def has_secret(self, value: Any) -> bool: ...

    def retrieve(self, value: Any) -> Any: ...


def refuse_visible_secrets(store: SecretLookup | None, step: str, body: Mapping[str, Any]) -> None:
    """Raise if a secret would be anywhere in a request body but its ``secret_mounts`` (pure).

    The command line and the environment are the places a tool can ask for one; anything else
    (a stdout file name, a mount path) is refused the same way.
    """
    if store is None:
        return
    for key, value in body.items():
        if key != "secret_mounts" and store.has_secret(value):
            where = {"command": "command line", "environment": "environment"}.get(key, f"request's {key}")
            raise SecretExposed(
                f"CWL step {step}: a cwltool:Secrets input is in its {where}, which Arvados stores readable in the "
                "container request; only file literals may contain secrets (write it with InitialWorkDir and read "
                "the file in the tool)")


def split_secret_entries(entries: Iterable[Entry], store: SecretLookup | None, step: str
                         ) -> tuple[list[Entry], dict[str, dict[str, Any]]]:
    """The entries to stage in Keep, and the ``secret_mounts`` for those holding a secret (pure).

    Only file literals can hold a secret's value (a File or Directory from a store holds bytes
    Toil already wrote somewhere, not a placeholder).
    """
    staged: list[Entry] = []
    secret_mounts: dict[str, dict[str, Any]] = {}
    for e in entries:
        if store is None or e.type not in _LITERALS or not store.has_secret(e.resolved):
            staged.append(e)
            continue
        if e.type == "CreateWritableFile":
            raise SecretExposed(
                f"CWL step {step}: writable file {e.target} would hold a cwltool:Secrets input; Arvados secret "
                "mounts are read-only (drop writable: true)")
        secret_mounts[posixpath.normpath(e.target)] = {"kind": "text", "content": str(store.retrieve(e.resolved))}
    return staged, secret_mounts
