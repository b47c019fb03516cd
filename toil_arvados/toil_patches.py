"""The one home of changes to Toil's own behaviour, each guarded by the Toil version it was
written against.

Every patch here exists because this plugin runs Toil code somewhere Toil does not expect
(e.g. a job body in a thread of the leader). A Toil upgrade must revisit each of them, so
applying one to another Toil version fails loudly instead of silently misbehaving.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

logger = logging.getLogger(__name__)

TESTED_TOIL = ("9.6.",)


class ToilVersionError(RuntimeError):
    """The installed Toil is not one these patches were written for."""


def check_toil_version() -> None:
    from toil.version import baseVersion

    if not baseVersion.startswith(TESTED_TOIL):
        raise ToilVersionError(
            f"toil-arvados supports Toil {', '.join(v + 'x' for v in TESTED_TOIL)}, but Toil {baseVersion} is "
            "installed: install toil[cwl]==9.6.0 (pip install 'toil[cwl]==9.6.0')")


class PerThreadSet:
    """A set-like object holding one set per thread.

    Toil keeps the promise files a job has read in one class-wide set, ``Promise.filesToDelete``,
    which its job executor deletes and clears when a job succeeds: right for a worker process
    running one job at a time, wrong for a leader running several step jobs in threads (one
    job's success would delete the promise files another has just read). Toil only adds to it,
    iterates it and clears it, always from the thread running the job.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def _set(self) -> set[str]:
        s = getattr(self._local, "s", None)
        if s is None:
            s = self._local.s = set()
        return s

    def add(self, item: str) -> None:
        self._set().add(item)

    def discard(self, item: str) -> None:
        self._set().discard(item)

    def clear(self) -> None:
        self._set().clear()

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._set()))

    def __len__(self) -> int:
        return len(self._set())

    def __contains__(self, item: Any) -> bool:
        return item in self._set()


_applied: set[str] = set()
_lock = threading.Lock()


def promise_files_per_thread() -> None:
    """Make ``Promise.filesToDelete`` per thread (see :class:`PerThreadSet`). Idempotent."""
    with _lock:
        if "promise_files" in _applied:
            return
        check_toil_version()
        from toil.job import Promise

        if not isinstance(Promise.filesToDelete, set):
            raise ToilVersionError("Toil's Promise.filesToDelete is not the set this patch replaces")
        per_thread = PerThreadSet()
        for file_id in Promise.filesToDelete:  # read so far by this (the calling) thread
            per_thread.add(file_id)
        Promise.filesToDelete = per_thread  # type: ignore[assignment]
        _applied.add("promise_files")


def cwl_runner_patches() -> None:
    """What ``toil-cwl-runner --batchSystem arvados`` needs of Toil's CWL runner. Idempotent.

    * Toil pre-pulls every DockerRequirement image with Docker or Singularity before a run; on
      Arvados images live in Keep, so the pre-pull becomes a check that each one is there
      (:func:`toil_arvados.cwl_images.check_workflow_images`), failing in one line if not.
    * CWL schemas are pickled by reference (:func:`cwl_schemas_by_reference`), from the root
      job on.
    * An arvados run's outputs become its output collection and its intermediate collections are
      trashed once it succeeds (:mod:`toil_arvados.run_end`): ``makeRootJob`` also settles the
      collection's name and properties, ``toilStageFiles`` saves it.
    * Toil refuses InplaceUpdateRequirement unless ``--bypass-file-store``; native steps on a
      Keep job store write a tool's in-place change back to the input's own file
      (``ArvadosStepJob._apply_inplace_updates``), so it is accepted there. Toil checks in the
      leader and again in the leader-side jobs that expand workflows: those that run in their
      own process learn it from :data:`INPLACE_ENV`.
    * With ``--batchSystem arvados``, cwltool learns the Arvados CWL extensions
      (:mod:`toil_arvados.cwl_extensions`) right after Toil's CWL main sets up its schemas
      (``cwltool.main.setup_schema``, which would otherwise reset them): ``arv:`` hints and
      requirements load without "Unknown hint" and a bad value is a validation error.
    """
    import os
    import sys

    from .cwl_images import arvados_batch_system, native_steps_on_keep

    cwl_schemas_by_reference()
    with _lock:
        if "cwl_runner" in _applied:
            return
        check_toil_version()
        _route_prepull()
        _route_output_staging()
        if arvados_batch_system(sys.argv[1:], os.environ):
            _register_extensions_after_schema_setup()
            _scan_also(hints=True)
        if native_steps_on_keep(sys.argv[1:], os.environ):
            os.environ[INPLACE_ENV] = "1"
            _scan_also(inplace=True)
        _applied.add("cwl_runner")


INPLACE_ENV = "TOIL_ARVADOS_INPLACE_UPDATES"


def inplace_updates_in_job_process() -> None:
    """In a leader-side job process: accept in-place updates if the leader did (see above)."""
    import os

    if os.environ.get(INPLACE_ENV) == "1":
        with _lock:
            check_toil_version()
            _scan_also(inplace=True)


def _route_prepull() -> None:
    from toil.cwl import cwltoil

    from .cwl_images import check_workflow_images

    original = cwltoil.try_prepull

    def try_prepull(cwl_tool_uri: str, runtime_context: Any, batchsystem: str) -> None:
        if batchsystem == "arvados":
            check_workflow_images(cwl_tool_uri)
            return
        original(cwl_tool_uri, runtime_context, batchsystem)

    cwltoil.try_prepull = try_prepull


def _route_output_staging() -> None:
    import logging

    from toil.cwl import cwltoil

    from . import run_end

    make_root, stage = cwltoil.makeRootJob, cwltoil.toilStageFiles

    def makeRootJob(tool: Any, jobobj: Any, runtime_context: Any, initialized_job_order: Any, options: Any,
                    toil: Any) -> Any:
        run_end.remember_output_spec(toil, tool, initialized_job_order, runtime_context, options)
        return make_root(tool=tool, jobobj=jobobj, runtime_context=runtime_context,
                         initialized_job_order=initialized_job_order, options=options, toil=toil)

    def toilStageFiles(toil: Any, cwljob: Any, outdir: str, destBucket: str | None = None,
                       log_level: int = logging.DEBUG) -> None:
        run_end.stage_outputs(stage, toil, cwljob, outdir, destBucket, log_level)

    cwltoil.makeRootJob = makeRootJob
    cwltoil.toilStageFiles = toilStageFiles


def _register_extensions_after_schema_setup() -> None:
    import cwltool.main

    from . import cwl_extensions

    original = cwltool.main.setup_schema
    if getattr(original, "_toil_arvados", False):
        return

    def setup_schema(args: Any, custom_schema_callback: Any) -> None:
        original(args, custom_schema_callback)
        cwl_extensions.register()

    setup_schema._toil_arvados = True  # type: ignore[attr-defined]
    cwltool.main.setup_schema = setup_schema


def _scan_also(*, hints: bool = False, inplace: bool = False) -> None:
    """Toil's CWL main scans the loaded workflow for unsupported requirements before it starts
    anything. One wrapper adds what this run needs (each call can only add): ``hints``, the
    Arvados hints of every tool are checked there too (one line if one cannot work); ``inplace``,
    InplaceUpdateRequirement is accepted as with ``--bypass-file-store``."""
    from toil.cwl import cwltoil

    from .cwl_hints import check_arvados_hints

    current = cwltoil.scan_for_unsupported_requirements
    original = getattr(current, "_toil_arvados_original", current)
    flags = dict(getattr(current, "_toil_arvados_flags", {}))
    flags["hints"] = flags.get("hints", False) or hints
    flags["inplace"] = flags.get("inplace", False) or inplace

    def scan_for_unsupported_requirements(tool: Any, bypass_file_store: bool = False) -> None:
        if flags["hints"]:
            check_arvados_hints(tool)
        original(tool, bypass_file_store=bypass_file_store or flags["inplace"])

    scan_for_unsupported_requirements._toil_arvados_original = original  # type: ignore[attr-defined]
    scan_for_unsupported_requirements._toil_arvados_flags = flags  # type: ignore[attr-defined]
    cwltoil.scan_for_unsupported_requirements = scan_for_unsupported_requirements


def read_promises_through(job_store: Any) -> None:
    """Resolve promises in this process through ``job_store`` (the leader's own instance, whose
    caches the step engine shares) instead of a second instance Toil would open on first use."""
    from toil.job import Promise

    check_toil_version()
    if getattr(job_store, "config", None) is not None and hasattr(Promise, "_jobstore"):
        Promise._jobstore = job_store


def promises_fulfilled_blindly() -> None:
    """Fulfil a job's promises with one write each on job stores that can tell "gone" from the
    write itself (``UPDATE_REPORTS_MISSING``, with a ``write_promise(file_id, data)``). Idempotent.

    Toil asks ``file_exists`` before writing each promise file (a promise's reader may already
    have deleted it when a service job re-runs), then writes it: two calls per promise, one per
    CWL step. A Keep job store's update answers 404 (or a trashed record) for a gone file, so
    the write alone decides, and a gone file is skipped exactly as Toil skips it. Other job
    stores keep Toil's own code."""
    from toil.job import Job

    with _lock:
        if "blind_promises" in _applied:
            return
        check_toil_version()
        original = Job._fulfillPromises

        def _fulfillPromises(self: Any, returnValues: Any, jobStore: Any) -> None:
            if not getattr(jobStore, "UPDATE_REPORTS_MISSING", False):
                return original(self, returnValues, jobStore)
            for path, file_ids in self._rvs.items():
                value = _promised_value(returnValues, path)
                for file_id in file_ids:
                    _write_promise(jobStore, file_id, value)

        Job._fulfillPromises = _fulfillPromises  # type: ignore[method-assign]
        _applied.add("blind_promises")


def promises_registered_lazily() -> None:
    """Register a promise without a call on job stores that can (``register_promise``); its file
    is made by its one write. Idempotent.

    Toil writes an "unfulfilled" marker into a new file for every promise it pickles, for a
    reader that would come before the promise is fulfilled, which its job ordering rules out:
    one create per CWL step. Whichever process fulfils the promise must then create the file,
    so every process applies this with :func:`promises_fulfilled_blindly` (:func:`promise_hooks`,
    run by the start-up hook as ``toil.job`` is imported). Other job stores keep Toil's code."""
    from toil.job import Job

    with _lock:
        if "lazy_promises" in _applied:
            return
        check_toil_version()
        original = Job.registerPromise

        def registerPromise(self: Any, path: Any) -> tuple[str, str]:
            store = self._promiseJobStore
            register = getattr(store, "register_promise", None)
            if register is None:
                return original(self, path)
            file_id = register()
            self._rvs[path].append(file_id)
            return store.config.jobStore, file_id

        Job.registerPromise = registerPromise  # type: ignore[method-assign]
        _applied.add("lazy_promises")


def promise_hooks() -> None:
    """The promise patches every process needs (see :func:`promises_registered_lazily`); on a
    Toil these patches were not written for, nothing is patched here and the plugin refuses
    to run when it is used (:func:`check_toil_version`)."""
    try:
        promises_fulfilled_blindly()
        promises_registered_lazily()
    except ToilVersionError:
        logger.debug("Toil version not supported; promise patches not applied")


def _promised_value(returnValues: Any, path: tuple) -> Any:
    """The part of a job's return value a promise with ``path`` stands for (as Toil picks it)."""
    from toil.job import Promise

    if not path:
        return returnValues
    if isinstance(returnValues, Promise):
        return Promise(returnValues.job, path)
    value = returnValues
    for index in path:
        value = value[index]
    return value


def _write_promise(job_store: Any, file_id: str, value: Any) -> None:
    import pickle

    from toil.jobStores.abstractJobStore import NoSuchFileException

    try:
        job_store.write_promise(file_id, pickle.dumps(value, pickle.HIGHEST_PROTOCOL))
    except NoSuchFileException:
        logger.debug("Promise file %s is gone (its reader finished); not written", file_id)


def cwl_schemas_by_reference() -> None:
    """Pickle the CWL schema every cwltool process object carries (``doc_schema``: the whole CWL
    language, some 150 of the 210 KB of each CWL job's body) as a reference to cwltool's own
    per-version cache, instead of by value. Idempotent.

    Every step job's body is written to the job store, read back and unpickled (twice, by the
    step engine); with the schema by reference each is a quarter of the size, and all of them
    share one schema object in memory instead of a copy each. Only cwltool's standard schemas
    and those with toil-arvados' own Arvados extensions are referenced (each process rebuilds
    exactly them); a schema changed by other extensions (``custom_schemas``, e.g. cwltool's
    ``--enable-ext``) is pickled by value as before.
    """
    import copyreg

    from schema_salad.avro.schema import Names

    with _lock:
        if "cwl_schemas" in _applied:
            return
        check_toil_version()
        copyreg.pickle(Names, _reduce_names)
        _applied.add("cwl_schemas")


def _reduce_names(names: Any) -> Any:
    import pickle

    import cwltool.process

    from . import cwl_extensions

    for version, cached in list(cwltool.process.SCHEMA_CACHE.items()):
        if cached[1] is not names:
            continue
        custom = cwltool.process.custom_schemas.get(version)
        if custom is None:
            return (cwl_schema_names, (version,))
        if custom == (cwl_extensions.SCHEMA_NAME, cwl_extensions.schema_text()):
            return (cwl_extensions.schema_names, (version,))  # ours alone: rebuilt anywhere
    return names.__reduce_ex__(pickle.HIGHEST_PROTOCOL)


def cwl_schema_names(version: str) -> Any:
    """cwltool's schema names for a CWL version (what a pickled reference unpickles to)."""
    import cwltool.process

    return cwltool.process.get_schema(version)[1]


# -- Toil internals used as they are ---------------------------------------------------------------

def read_job_body(job_store: Any, desc: Any) -> bytes:
    """The pickled body of the job ``desc`` describes: the reading half of ``Job.loadJob``.

    Split from the unpickling so the leader can run a step job twice (submit, then collect)
    while reading its body from the job store once."""
    check_toil_version()
    file_store_id, _module = desc.get_body()
    if file_store_id == "firstJob":
        stream = job_store.read_shared_file_stream(file_store_id)
    else:
        stream = job_store.read_file_stream(file_store_id)
    with stream as f:
        return bytes(f.read())


def job_from_body(desc: Any, body: bytes) -> Any:
    """The :class:`toil.job.Job` in ``body``, attached to ``desc``: the unpickling half of
    ``Job.loadJob`` (same steps, same order)."""
    import io

    from toil.job import Job

    _file_store_id, module_descriptor = desc.get_body()
    user_module = Job._loadUserModule(module_descriptor)
    job = Job._unpickle(user_module, io.BytesIO(body), requireInstanceOf=Job)
    job._description = desc
    job._registry = {job.jobStoreID: job}
    return job


# -- the progress bar and ``toil status`` ------------------------------------------------------------

#: The batch system method the progress bar asks for its summary (see below).
PROGRESS_SUMMARY = "progress_summary"
_PROGRESS_SLOT = "_toil_arvados_progress_overall"


class SummarizedCounter:
    """Toil's progress counter, its description followed by the batch system's summary.

    Toil's leader sets ``total`` on its counter and calls ``update`` (every round of its main
    loop, and as jobs end); each ``update`` here first refreshes the description, so the counts
    are at most one round old whenever enlighten redraws. Everything else goes to the counter.
    """

    def __init__(self, counter: Any, summary: Any) -> None:
        object.__setattr__(self, "_counter", counter)
        object.__setattr__(self, "_summary", summary)
        object.__setattr__(self, "_base", str(counter.desc or ""))

    def update(self, *args: Any, **kwargs: Any) -> Any:
        try:
            text = self._summary()
        except Exception:  # a display must never stop the workflow
            text = ""
        self._counter.desc = f"{self._base} ({text})" if text else self._base
        return self._counter.update(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._counter, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._counter, name, value)


def progress_bar_shows_batch_system_summary() -> None:
    """Let Toil's progress bar show the batch system's own counts (for Arvados: requests queued,
    running and finished). Idempotent; changes nothing for batch systems without a summary.

    Toil 9.6 draws one enlighten counter (jobs done of jobs issued, and failures) on a terminal
    unless ``--disableProgress``, and logs how many jobs run or wait only every ``--statusWait``
    (an hour; its own TODO wants them in the bar). It offers no hook: ``Leader.run`` assigns the
    counter to ``self.progress_overall``. So that attribute becomes a property whose setter wraps
    an enabled counter in :class:`SummarizedCounter` when the leader's batch system has
    :data:`PROGRESS_SUMMARY`; a disabled one (not a terminal) is kept as it is, costing nothing.
    """
    with _lock:
        if "progress_bar" in _applied:
            return
        check_toil_version()
        from toil.leader import Leader

        if "progress_overall" in vars(Leader):
            raise ToilVersionError("Toil's Leader already has a class attribute progress_overall")

        def get(leader: Any) -> Any:
            return leader.__dict__.get(_PROGRESS_SLOT)

        def set_(leader: Any, counter: Any) -> None:
            summary = getattr(getattr(leader, "batchSystem", None), PROGRESS_SUMMARY, None)
            if counter is not None and summary is not None and getattr(counter, "enabled", False):
                counter = SummarizedCounter(counter, summary)
            leader.__dict__[_PROGRESS_SLOT] = counter

        Leader.progress_overall = property(get, set_)  # type: ignore[attr-defined]
        _applied.add("progress_bar")


def status_lists_requests() -> None:
    """Make ``toil status`` list, after its own report, the container requests of a run whose
    job store is a Keep job store (:func:`toil_arvados.run_status.report`). Idempotent.

    Toil 9.6's ``toil status`` (``toil.utils.toilStatus.main``) has no extension point and keeps
    its job store on the ``ToilStatus`` object it makes inside ``main``. The wrapped ``main``
    lets Toil's run unchanged, with a ``ToilStatus`` subclass that only notes the job store it
    opened, then prints the listing (also before ``--failIfNotComplete``'s exit).
    """
    with _lock:
        if "toil_status" in _applied:
            return
        check_toil_version()
        from toil.utils import toilStatus

        original_main, original_class = toilStatus.main, toilStatus.ToilStatus
        if not isinstance(original_class, type):
            raise ToilVersionError("Toil's toilStatus.ToilStatus is not the class this patch extends")

        def main() -> None:
            stores: list[Any] = []

            class NotingToilStatus(original_class):  # type: ignore[valid-type,misc]
                def __init__(self, *args: Any, **kwargs: Any) -> None:
                    super().__init__(*args, **kwargs)
                    stores.append(self.jobStore)

            toilStatus.ToilStatus = NotingToilStatus
            try:
                original_main()
            except SystemExit:
                _print_requests(stores)
                raise
            else:
                _print_requests(stores)
            finally:
                toilStatus.ToilStatus = original_class

        toilStatus.main = main
        _applied.add("toil_status")


def _print_requests(stores: list[Any]) -> None:
    from .run_status import report

    for store in stores:
        lines = report(store)
        if lines:
            print("\n" + "\n".join(lines))

def submit_hook() -> None:
    """Let ``toil-cwl-runner --arvadosSubmit`` submit the run instead of leading it here.

    Wraps ``toil.cwl.cwltoil.main`` as soon as the module is imported (see startup_hook.py), so
    the console script picks up the wrapper. Without ``--arvadosSubmit`` the wrapper calls
    Toil's own ``main`` unchanged; with it, :func:`toil_arvados.cwl_submit.submit_main` parses
    the same options with Toil's own ``get_options`` and submits a runner request. Idempotent.
    """
    import sys

    with _lock:
        if "submit" in _applied:
            return
        check_toil_version()
        from toil.cwl import cwltoil

        original = cwltoil.main

        def main(args: list[str] | None = None, stdout: Any = sys.stdout) -> int:
            from .cwl_submit import submit_main, wanted

            argv = list(sys.argv[1:] if args is None else args)
            if not wanted(argv):
                return original(args, stdout)
            return submit_main(argv, cwltoil.get_options, stdout)

        main.__doc__ = original.__doc__
        cwltoil.main = main
        _applied.add("submit")
