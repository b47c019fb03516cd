"""How the local dispatcher runs one Arvados container's command.

The dispatcher resolves the container's Arvados mounts to host paths and hands a *run spec*
(a JSON-serializable dict, documented in :mod:`toil_arvados.localcluster.runtime.namespace`)
to a :class:`Runtime`.  Keeping this interface tiny lets the dispatcher be tested with a fake
runtime, and lets a real container engine be slotted in later without touching it.
"""

from __future__ import annotations

from typing import Any, Optional, Protocol

RunSpec = dict[str, Any]


class ContainerSetupError(RuntimeError):
    """The container could not be started (bad mount, namespace failure...).

    Distinct from a non-zero exit code: Arvados reports a command's failure as a Complete
    container with ``exit_code != 0``, but a failure to *start* one as Cancelled, with the
    reason in ``runtime_status``.  ``wait()`` raises this so the dispatcher can tell them apart.
    """


class RunningContainer(Protocol):
    """A started container."""

    #: Host PID of the process the runtime owns for this container.
    pid: int
    #: After ``wait()``: the signal that killed the command (None if it exited).
    signal: Optional[int]
    #: After ``wait()``: True when the container was stopped by :meth:`kill`.
    killed: bool
    #: After ``wait()``: True when the container died from outside its command (its runtime
    #: process was killed); the dispatcher then cancels rather than completes it.
    lost: bool

    async def wait(self) -> int:
        """Wait for the command; return its exit code (128+signum for a signal death).

        Raises :class:`ContainerSetupError` when the container never got to run its command.
        """
        ...

    def kill(self) -> None:
        """Cancel: promptly kill every process of the container; ``wait()`` then returns."""
        ...

    def record(self) -> Optional[dict[str, Any]]:
        """What :meth:`Runtime.adopt` needs to follow this container from a cluster process
        started later (JSON, no secrets), or None when it cannot outlive this one."""
        ...


class Runtime(Protocol):
    """Starts containers from run specs."""

    async def start(self, spec: RunSpec) -> RunningContainer:
        """Start the container described by *spec*; return once its process exists."""
        ...

    def adopt(self, record: dict[str, Any]) -> Optional[RunningContainer]:
        """Follow a container an earlier cluster process started, from its ``record()``: as
        dispatch-cloud takes over the crunch-run processes it finds on its workers. None when
        it is gone without an outcome (the dispatcher then cancels it)."""
        ...


def __getattr__(name: str) -> Any:
    # Lazy, so ``import ...runtime`` stays cheap and nsinit never pulls in asyncio.
    if name in ("NamespaceRuntime", "NamespaceContainer"):
        from . import namespace

        return getattr(namespace, name)
    raise AttributeError(name)


__all__ = ["ContainerSetupError", "NamespaceContainer", "NamespaceRuntime", "RunSpec",
           "RunningContainer", "Runtime"]
