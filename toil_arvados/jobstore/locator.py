"""Parse the part of an ``arvados:`` job-store locator after the colon.

``arvados:<project-uuid>/<name>`` keeps the job store in a subproject ``<name>`` of that project;
``arvados:<name>`` uses the user's home project. Pure parsing, no I/O.
"""
from __future__ import annotations

from dataclasses import dataclass

from toil_arvados.jobstore.naming import PROJECT_UUID_RE

PREFIX = "arvados"


class BadLocatorError(ValueError):
    """The locator cannot name a job store; the message says what form to use."""


@dataclass(frozen=True)
class JobStoreLocation:
    parent_uuid: str | None  # None: the current user's home project
    name: str

    def locator(self) -> str:
        rest = f"{self.parent_uuid}/{self.name}" if self.parent_uuid else self.name
        return f"{PREFIX}:{rest}"


def parse(rest: str) -> JobStoreLocation:
    """Split ``<project-uuid>/<name>`` or ``<name>``; reject anything else with the expected form."""
    usage = (f"invalid job store locator {PREFIX}:{rest}: use {PREFIX}:<project-uuid>/<name> "
             f"or {PREFIX}:<name> (a subproject of your home project)")
    parent: str | None = None
    name = rest
    if "/" in rest:
        parent, _, name = rest.partition("/")
        if not PROJECT_UUID_RE.match(parent):
            raise BadLocatorError(usage)
    if not name or "/" in name or name != name.strip() or not name.isprintable():
        raise BadLocatorError(usage)
    return JobStoreLocation(parent, name)
