"""``python -m toil_arvados.worker [--cwl-local] COMMAND``: how Toil jobs start under ``--batchSystem arvados``.

It is the entrypoint of every Arvados container Toil submits, and (with ``--cwl-local``) of the
leader-side processes that run CWL's small bookkeeping jobs (workflow expansion, expressions).

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
    argv = list(sys.argv[1:] if argv is None else argv)
    cwl_local = bool(argv) and argv[0] == "--cwl-local"
    if cwl_local:
        argv.pop(0)
    if len(argv) != 1:
        print("usage: python -m toil_arvados.worker [--cwl-local] 'COMMAND'", file=sys.stderr)
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
        if cwl_local:
            _exit_with_leader()
        else:
            _prepare_user_script()
        if cwl_local:
            from toil_arvados.toil_patches import inplace_updates_in_job_process

            inplace_updates_in_job_process()
        from toil.worker import main as toil_worker_main

        result = toil_worker_main(words)
        return int(result or 0)
    os.execv("/bin/sh", ["/bin/sh", "-c", command])
    return 127  # not reached


def _prepare_user_script() -> None:
    """Let Toil's worker fetch the user's script from the job store (auto-deployment).

    The batch system puts the script's resource description in the environment, as
    ``Resource.register()`` would; this does the rest of what Toil's contained executor does:
    a private directory to download into, and ``keep:`` URLs for ``urlopen``.
    """
    from toil.resource import Resource

    prefix = Resource.resourceEnvNamePrefix
    if not any(k.startswith(prefix) and k != prefix + "ROOT" for k in os.environ):
        return
    from toil_arvados import keep_urllib

    keep_urllib.install()
    if prefix + "ROOT" not in os.environ:
        Resource.prepareSystem()


def _exit_with_leader() -> None:
    """A leader-side job process must not outlive its leader (``kill -9``, a crash): left
    running, it would finish its job in the job store while a restarted leader runs the same job
    again."""
    import ctypes
    import signal

    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGHUP), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the leader's shutdown still cancels leftovers
        return
    if os.getppid() != parent:  # the leader died before prctl took effect
        os._exit(1)


if __name__ == "__main__":
    sys.exit(main())
