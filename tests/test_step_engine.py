"""The leader-side step engine's parts, without a server: Toil's job run in two passes from a
real (file) job store, the per-thread promise bookkeeping, the Toil version guard, and the
request tracker's batching (with a fake API).

Why: the engine runs Toil job bodies in leader threads, where Toil's worker never runs them;
these tests pin down what that must preserve (nothing committed by a submit pass, everything
committed by the collect pass, the body read once, no job seeing another's promise files).
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import pytest
from toil.common import Config, Toil
from toil.job import Job, Promise

from toil_arvados import toil_patches
from toil_arvados.request_tracker import RequestTracker
from toil_arvados.step_runner import StepRunner, StepSubmitted

SUBMITTED: dict[str, bool] = {}


class TwoPassJob(Job):
    """Stands for a native step: "submits" on its first run, returns a value on its second."""

    def __init__(self, key: str) -> None:
        super().__init__(memory="10M", cores=0.1, disk="1M")
        self.key = key

    def run(self, file_store: Any) -> str:
        if not SUBMITTED.get(self.key):
            SUBMITTED[self.key] = True
            raise StepSubmitted({"uuid": f"cr-{self.key}", "state": "Committed"})
        return f"output of {self.key}"


class FailingJob(Job):
    def run(self, file_store: Any) -> None:
        raise ValueError("the tool broke")


class CountingStore:
    """A job store wrapper that counts body reads."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.stream_reads = 0

    def read_file_stream(self, *a: Any, **k: Any) -> Any:
        self.stream_reads += 1
        return self._store.read_file_stream(*a, **k)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def _job_store(tmp_path: Path, root: Job) -> tuple[Any, str, str]:
    """A file job store holding ``root`` as its root job; (store, root id, return value file)."""
    options = Job.Runner.getDefaultOptions(f"file:{tmp_path / 'js'}")
    options.workDir = str(tmp_path)
    config = Config()
    config.setOptions(options)
    store = Toil.getJobStore(config.jobStore)
    store.initialize(config)
    root.prepareForPromiseRegistration(store)
    promise = root.rv()
    locator, file_id = promise.job.registerPromise(promise.path)
    desc = root.saveAsRootJob(store)
    return store, str(desc.jobStoreID), file_id


def test_submit_pass_commits_nothing_and_collect_pass_completes_the_job(tmp_path: Path) -> None:
    SUBMITTED.clear()
    store, job_id, rv_file = _job_store(tmp_path, TwoPassJob("a"))
    counting = CountingStore(store)
    runner = StepRunner(counting, str(tmp_path / "work"), adopt=lambda job: None)

    with store.read_file_stream(rv_file) as f:
        unfulfilled = f.read()
    first = runner.run_pass(job_id, "step a")
    assert first.submitted == {"uuid": "cr-a", "state": "Committed"}
    assert store.load_job(job_id).has_body(), "the submit pass must leave the job to run again"
    with store.read_file_stream(rv_file) as f:
        assert f.read() == unfulfilled, "the submit pass must not fulfil the job's promise"

    second = runner.run_pass(job_id, "step a")
    assert second == type(second)(0)
    assert not store.load_job(job_id).has_body(), "the collect pass must commit the job"
    from toil.common import safeUnpickleFromStream

    with store.read_file_stream(rv_file) as f:
        assert safeUnpickleFromStream(f) == "output of a"
    assert counting.stream_reads == 1, "the body is read from the job store once for both passes"
    assert not list((tmp_path / "work").iterdir()), "each pass removes its temp dir"


def test_a_failing_job_is_an_exit_code_not_an_exception(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Toil runs earlier in this process (other tests) may have quietened the plugin's loggers.
    caplog.set_level(logging.ERROR, logger="toil_arvados.step_runner")
    store, job_id, _ = _job_store(tmp_path, FailingJob())
    runner = StepRunner(store, str(tmp_path / "work"), adopt=lambda job: None)
    result = runner.run_pass(job_id, "step b")
    assert result.exit_code == 1 and result.submitted is None
    assert "step b failed: ValueError: the tool broke" in caplog.text
    assert store.load_job(job_id).has_body(), "a failed job stays for Toil to retry"


def test_adopt_sees_every_loaded_job_and_may_refuse_it(tmp_path: Path) -> None:
    from toil_arvados.arvados_client import ArvadosSetupError

    SUBMITTED.clear()
    store, job_id, _ = _job_store(tmp_path, TwoPassJob("c"))

    def refuse(job: Job) -> None:
        raise ArvadosSetupError(f"{type(job).__name__} refused")

    result = StepRunner(store, str(tmp_path / "work"), adopt=refuse).run_pass(job_id, "step c")
    assert result.exit_code == 1 and not SUBMITTED, "a refused job must not run"


def test_promise_files_are_per_thread() -> None:
    toil_patches.promise_files_per_thread()
    toil_patches.promise_files_per_thread()  # idempotent
    files = Promise.filesToDelete
    assert isinstance(files, toil_patches.PerThreadSet)
    files.clear()
    files.add("mine")
    seen: list[list[str]] = []

    def other() -> None:
        files.add("theirs")
        seen.append(list(files))
        files.clear()

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert seen == [["theirs"]]
    assert list(files) == ["mine"], "another thread's clear() must not drop this thread's files"
    files.clear()


def test_toil_version_guard_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    import toil.version

    toil_patches.check_toil_version()
    monkeypatch.setattr(toil.version, "baseVersion", "10.0.0")
    with pytest.raises(toil_patches.ToilVersionError, match=r"toil\[cwl\]==9\.6\.0"):
        toil_patches.check_toil_version()


class _FakeList:
    def __init__(self, api: "FakeApi", kind: str) -> None:
        self.api, self.kind = api, kind

    def list(self, filters: list, select: Any = None, limit: int = 100, **kw: Any) -> Any:
        assert len(filters) == 1 and filters[0][1] == "in", filters
        field, _, values = filters[0]
        self.api.calls.append((self.kind, tuple(values)))
        records = [r for r in self.api.records[self.kind].values() if r.get(field) in values]
        return _Exec({"items": records[:limit], "limit": limit})


class _Exec:
    def __init__(self, value: Any) -> None:
        self.value = value

    def execute(self, **kw: Any) -> Any:
        return self.value


class FakeApi:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple]] = []
        self.records: dict[str, dict[str, dict]] = {"cr": {}, "c": {}, "coll": {}}

    def container_requests(self) -> _FakeList:
        return _FakeList(self, "cr")

    def containers(self) -> _FakeList:
        return _FakeList(self, "c")

    def collections(self) -> _FakeList:
        return _FakeList(self, "coll")


def test_tracker_reports_requests_final_at_creation_with_one_batched_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    from toil_arvados import arvados_client

    def no_events(*a: Any, **k: Any) -> Any:
        raise ConnectionError("no event bus here")

    monkeypatch.setattr(arvados_client, "subscribe_events", no_events)
    api = FakeApi()
    for i in range(3):
        api.records["cr"][f"cr{i}"] = {"uuid": f"cr{i}", "state": "Final", "container_uuid": f"c{i}"}
        api.records["c"][f"c{i}"] = {"uuid": f"c{i}", "state": "Complete", "exit_code": i}
    done = threading.Event()
    ended: dict[str, int] = {}

    def on_final(cr: dict, c: dict | None) -> None:
        ended[cr["uuid"]] = c["exit_code"]
        if len(ended) == 3:
            done.set()

    tracker = RequestTracker(api, poll_interval=3600)
    try:
        for i in range(3):
            tracker.track({"uuid": f"cr{i}", "state": "Final", "container_uuid": f"c{i}"}, on_final)
        assert done.wait(10), "requests Final at creation must be reported without polling"
    finally:
        tracker.stop()
    assert ended == {"cr0": 0, "cr1": 1, "cr2": 2}
    assert len(api.calls) <= 4, f"ending requests are looked up in batches, not one by one: {api.calls}"


def test_a_final_event_that_comes_before_track_is_not_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    """A container that runs at once can end, and its request's Final event arrive, before the
    leader that created the request tracks it: the event must still end the request (it once
    waited for the next full reconciliation, ``--arvadosPollInterval`` later)."""
    from toil_arvados import arvados_client

    monkeypatch.setattr(arvados_client, "subscribe_events",
                        lambda *a, **k: (_ for _ in ()).throw(ConnectionError("no event bus here")))
    api = FakeApi()
    api.records["cr"]["quick"] = {"uuid": "quick", "state": "Final", "container_uuid": "c-quick"}
    api.records["c"]["c-quick"] = {"uuid": "c-quick", "state": "Complete", "exit_code": 0}
    done = threading.Event()
    tracker = RequestTracker(api, poll_interval=3600)
    try:
        final_event = {"object_uuid": "quick", "object_kind": "arvados#containerRequest",
                       "properties": {"new_attributes": {"state": "Final"}}}
        tracker._on_event(final_event)  # as the event bus delivers it, before the create returned
        tracker.track({"uuid": "quick", "state": "Committed", "container_uuid": "c-quick"},
                      lambda cr, c: done.set())
        assert done.wait(10), "the early Final event was lost"
    finally:
        tracker.stop()


def test_ended_requests_whose_container_succeeded_cost_only_the_container_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    """Successes need only their containers (one batched list); a failure's request is read
    whole, and so is a request whose container Arvados replaced since the tracker last looked."""
    from toil_arvados import arvados_client

    monkeypatch.setattr(arvados_client, "subscribe_events",
                        lambda *a, **k: (_ for _ in ()).throw(ConnectionError("no event bus here")))
    api = FakeApi()
    states = {"ok": ("Complete", 0), "failed": ("Complete", 3), "retried": ("Cancelled", None)}
    for name, (state, code) in states.items():
        api.records["cr"][name] = {"uuid": name, "state": "Final", "container_uuid": f"c-{name}",
                                   "log_uuid": f"log-{name}", "output_uuid": f"out-{name}"}
        api.records["c"][f"c-{name}"] = {"uuid": f"c-{name}", "state": state, "exit_code": code}
    api.records["cr"]["retried"]["container_uuid"] = "c-second"  # the replacement, which succeeded
    api.records["c"]["c-second"] = {"uuid": "c-second", "state": "Complete", "exit_code": 0}
    ended: dict[str, tuple[dict, dict | None]] = {}
    done = threading.Event()

    def on_final(cr: dict, c: dict | None) -> None:
        ended[cr["uuid"]] = (cr, c)
        if len(ended) == 3:
            done.set()

    tracker = RequestTracker(api, poll_interval=3600)
    try:
        for name in states:  # as tracked when created: the first container
            tracker.track({"uuid": name, "state": "Final", "container_uuid": f"c-{name}"}, on_final)
        assert done.wait(10)
    finally:
        tracker.stop()
    assert ended["ok"][0] == {"uuid": "ok", "state": "Final", "container_uuid": "c-ok"}
    assert ended["ok"][1]["exit_code"] == 0
    assert ended["failed"][0]["log_uuid"] == "log-failed" and ended["failed"][1]["exit_code"] == 3
    assert ended["retried"][1]["uuid"] == "c-second" and ended["retried"][0]["output_uuid"] == "out-retried"
    looked_up = [u for kind, uuids in api.calls if kind == "cr" for u in uuids]
    assert sorted(looked_up) == ["failed", "retried"], api.calls  # never the success's request


def test_steps_get_their_outputs_read_with_the_others_that_ended(monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests tracked with read_output: one listing by hash reads the outputs of all the
    successes that ended together (empty ones need none); others get none."""
    from toil_arvados import arvados_client
    from toil_arvados.request_tracker import OUTPUT_MANIFEST

    monkeypatch.setattr(arvados_client, "subscribe_events", lambda *a, **k: (_ for _ in ()).throw(ConnectionError()))
    api = FakeApi()
    outputs = {"s0": "a" * 32 + "+3", "s1": "b" * 32 + "+3", "s2": "d41d8cd98f00b204e9800998ecf8427e+0", "w": "c" * 32 + "+3"}
    for name, pdh in outputs.items():
        api.records["c"][f"c-{name}"] = {"uuid": f"c-{name}", "state": "Complete", "exit_code": 0, "output": pdh}
        api.records["coll"][f"coll-{name}"] = {"uuid": f"coll-{name}", "portable_data_hash": pdh,
                                                "manifest_text": f". {pdh} 0:3:{name}\n"}
    ended: dict[str, dict] = {}
    done = threading.Event()

    def on_final(cr: dict, c: dict | None) -> None:
        ended[cr["uuid"]] = c or {}
        if len(ended) == len(outputs):
            done.set()

    tracker = RequestTracker(api, poll_interval=3600)
    try:
        for name in outputs:
            tracker.track({"uuid": name, "state": "Final", "container_uuid": f"c-{name}"}, on_final,
                          read_output=name != "w")
        assert done.wait(10)
    finally:
        tracker.stop()
    assert ended["s0"][OUTPUT_MANIFEST] == f". {outputs['s0']} 0:3:s0\n"
    assert ended["s2"][OUTPUT_MANIFEST] == ""
    assert OUTPUT_MANIFEST not in ended["w"]
    listed = [values for kind, values in api.calls if kind == "coll"]
    assert sorted(v for values in listed for v in values) == sorted([outputs["s0"], outputs["s1"]])


def test_get_many_costs_one_call_per_chunk_when_complete() -> None:
    from toil_arvados.arvados_client import get_many

    api = FakeApi()
    for i in range(5):
        api.records["c"][f"c{i}"] = {"uuid": f"c{i}", "state": "Queued"}
    found = get_many(api.containers().list, ["c0", "c1", "c2", "c3", "c4", "gone"], ["state"])
    assert sorted(r["uuid"] for r in found) == ["c0", "c1", "c2", "c3", "c4"]
    assert len(api.calls) == 1, "fewer records than the page limit is a complete answer"


class _RecordingQueue:
    """Stands for the batch system's queue of ended jobs: empty, remembering how long it was
    asked to wait."""

    def __init__(self) -> None:
        self.timeouts: list[float] = []

    def get(self, timeout: float | None = None) -> Any:
        import queue

        self.timeouts.append(timeout or 0.0)
        raise queue.Empty


def test_leader_updates_of_its_own_stop_the_wait_for_ended_jobs() -> None:
    """Toil's loop asks for an ended batch job (up to 2 s) before processing the job updates it
    published itself; the batch system must not keep it waiting while it has some."""
    from toil.bus import JobUpdatedMessage, MessageBus

    from toil_arvados.batch_system import ArvadosBatchSystem

    bs = object.__new__(ArvadosBatchSystem)
    bs._leader_work = threading.Event()
    bs._updates = _RecordingQueue()
    bs._updated_leader_side = lambda: None  # type: ignore[method-assign]
    bs.getIssuedBatchJobIDs = lambda: [7]  # type: ignore[method-assign]
    bus = MessageBus()
    bs.set_message_bus(bus)

    bus.publish(JobUpdatedMessage("some-job", 0))
    assert bs.getUpdatedBatchJob(maxWait=2) is None
    assert max(bs._updates.timeouts) == 0, "with leader work pending the call must not wait"

    bs._updates.timeouts.clear()
    assert bs.getUpdatedBatchJob(maxWait=0.3) is None
    assert max(bs._updates.timeouts) > 0, "without leader work it waits for ended jobs as usual"


def test_nothing_issued_means_nothing_to_wait_for() -> None:
    from toil_arvados.batch_system import ArvadosBatchSystem

    bs = object.__new__(ArvadosBatchSystem)
    bs._leader_work = threading.Event()
    bs._updates = _RecordingQueue()
    bs._updated_leader_side = lambda: None  # type: ignore[method-assign]
    bs.getIssuedBatchJobIDs = lambda: []  # type: ignore[method-assign]
    assert bs.getUpdatedBatchJob(maxWait=2) is None
    assert max(bs._updates.timeouts) == 0


def test_cwl_schemas_pickle_by_reference_to_cwltools_cache() -> None:
    """Each CWL job's body carries the CWL schema: by reference it is a fraction of the bytes,
    and unpickles to the one object cwltool caches (not a copy per job)."""
    import pickle

    import cwltool.process

    toil_patches.cwl_schemas_by_reference()
    names = cwltool.process.get_schema("v1.2")[1]
    data = pickle.dumps({"doc_schema": names})
    assert len(data) < 1000, f"the schema went by value ({len(data)} bytes)"
    assert pickle.loads(data)["doc_schema"] is names

    from schema_salad.avro.schema import Names

    own = Names()  # a schema cwltool does not cache goes by value, as before
    back = pickle.loads(pickle.dumps(own))
    assert type(back) is Names and back is not own and back is not names


def test_the_step_file_store_has_every_attribute_of_toils_own(tmp_path: Path) -> None:
    """StepFileStore sets up what Toil's file store constructors set up, without their per-job
    directory probes: when Toil adds an attribute, this fails instead of a step at run time."""
    from toil.fileStores.nonCachingFileStore import NonCachingFileStore

    from toil_arvados.step_runner import StepFileStore

    store, job_id, _ = _job_store(tmp_path, FailingJob())
    desc = store.load_job(job_id)
    toils = NonCachingFileStore(store, desc, str(tmp_path / "w1"), lambda: True)
    ours = StepFileStore(store, desc, str(tmp_path / "w2"), (toils.workflow_dir, toils.coordination_dir))
    assert set(vars(ours)) == set(vars(toils))
