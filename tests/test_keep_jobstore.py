"""KeepJobStore against the session's real local cluster, through the real SDK.

1. Toil's own job store suite (``AbstractJobStoreTest.Test``), subclassed. Tests that cannot apply
   are overridden with a skip naming the reason and listed in ``tests/expected-not-applicable.md``.
2. Our own: concurrent writers in separate processes, the shared-file creation race, ``keep:``
   import by reference, ``toil clean``, unknown projects, locator parsing, and a small Toil workflow
   run with ``--batchSystem single_machine --jobStore arvados:...`` whose workers are separate
   processes on the host.
"""
from __future__ import annotations

import hashlib
import http.server  # noqa: F401  Toil's jobStoreTest uses http.server without importing it
import multiprocessing
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from tempfile import mkdtemp
from typing import Any

import pytest

from toil.common import Config, Toil
from toil.job import Job, JobDescription
from toil.jobStores.abstractJobStore import NoSuchFileException, NoSuchJobException, NoSuchJobStoreException
from toil.test.jobStores.jobStoreTest import AbstractJobStoreTest

from toil_arvados.jobstore import naming
from toil_arvados.jobstore.keep_jobstore import KeepJobStore, UnknownProjectError
from toil_arvados.jobstore.locator import BadLocatorError, JobStoreLocation, parse
from toil_arvados.jobstore.registration import register_job_store, worker_command
from server_calls import CallCounter

REPO = Path(__file__).resolve().parent.parent


def tearDownModule() -> None:
    AbstractJobStoreTest.Test.cleanUpExternalStores()


def _new_project(api: Any, label: str) -> str:
    body = {"group": {"name": f"{label}-{uuid.uuid4().hex[:10]}", "group_class": "project"}}
    return api.groups().create(body=body).execute()["uuid"]


def _owned_collections(api: Any, owner: str) -> list[dict]:
    return api.collections().list(filters=[["owner_uuid", "=", owner]], limit=1000,
                                  select=["uuid", "name", "properties"]).execute()["items"]


def _project_exists(api: Any, parent: str, name: str) -> bool:
    return bool(api.groups().list(filters=[["owner_uuid", "=", parent], ["name", "=", name]]).execute()["items"])


@pytest.fixture(scope="module")
def parent_project(api: Any) -> str:
    """A project of its own for this module's job stores."""
    return _new_project(api, "toil-jobstore-tests")


@pytest.fixture(scope="class")
def _suite_env(request: pytest.FixtureRequest, parent_project: str, cluster_env: dict) -> None:
    request.cls.parent_uuid = parent_project


# --------------------------------------------------------------------------------------------
# 1. Toil's suite
# --------------------------------------------------------------------------------------------

def _not_applicable(reason: str):
    """Override an inherited Toil test with a skip that says why (see expected-not-applicable.md)."""
    @pytest.mark.skip(reason=reason)
    def test(self: Any) -> None:  # pragma: no cover - never runs
        raise AssertionError(reason)

    return test


@pytest.mark.usefixtures("_suite_env")
class KeepJobStoreTest(AbstractJobStoreTest.Test):
    parent_uuid: str

    def _createJobStore(self) -> KeepJobStore:
        return KeepJobStore(f"{self.parent_uuid}/{self.namePrefix}")

    def _corruptJobStore(self) -> None:
        """Remove the config record, the one thing resume() needs."""
        store = self.jobstore_initialized
        rec = store._by_name(naming.shared_name("config.pickle"), [])
        assert rec is not None
        store._delete(rec["uuid"])

    # Toil's import/export tests use us only as the target; FileJobStoreTest is the source.
    # These four are abstract in Toil and serve when a class is the *other* store.
    def _prepareTestFile(self, store: str, size: int | None = None) -> Any:
        path = os.path.join(store, f"testfile_{uuid.uuid4()}")
        if size is None:
            return f"file://{path}"
        content = os.urandom(size)
        with open(path, "wb") as f:
            f.write(content)
        return f"file://{path}", hashlib.md5(content).hexdigest()

    def _hashTestFile(self, url: str) -> str:
        with open(url[len("file://"):], "rb") as f:
            return hashlib.md5(f.read()).hexdigest()

    def _createExternalStore(self) -> str:
        return mkdtemp()

    def _cleanUpExternalStore(self, store: str) -> None:
        shutil.rmtree(store, ignore_errors=True)

    def assertUrl(self, url: str) -> None:
        """Toil fetches public URLs with urllib, without credentials. Ours are ``keep:<pdh>/<name>``
        (a credential-free URL would need a token inside it, which we will not mint or leak), so
        check them the Arvados way: the content hash resolves and the file is in it."""
        if not url.startswith("keep:"):
            return super().assertUrl(url)
        import arvados.collection

        pdh, _, name = url[len("keep:"):].partition("/")
        reader = arvados.collection.CollectionReader(pdh)
        self.assertIn(name, reader)

    # Two Toil tests need small packages of the test extras; without them, say so instead of
    # failing on an ImportError (listed in expected-not-applicable.md).
    try:
        import stubserver  # noqa: F401
    except ImportError:
        testImportFtpFile = _not_applicable(  # type: ignore[assignment]
            "testImportFtpFile: needs the 'stubserver' package for its local FTP server (install the test extras)")
    try:
        import edit_distance  # noqa: F401
    except ImportError:
        test_file_hints = _not_applicable(  # type: ignore[assignment]
            "test_file_hints: needs the 'edit-distance' package to compare hinted IDs (install the test extras)")


# --------------------------------------------------------------------------------------------
# 2. Our own tests
# --------------------------------------------------------------------------------------------

@pytest.fixture
def store(parent_project: str, cluster_env: dict):
    js = KeepJobStore(f"{parent_project}/js-{uuid.uuid4().hex[:10]}")
    js.initialize(Config())
    yield js
    js.destroy()


# -- pure: locator parsing and registration ---------------------------------------------------

def test_locator_forms():
    assert parse("zzzzz-j7d0g-0123456789abcde/run1") == JobStoreLocation("zzzzz-j7d0g-0123456789abcde", "run1")
    assert parse("run1") == JobStoreLocation(None, "run1")
    assert parse("zzzzz-tpzed-0123456789abcde/x").locator() == "arvados:zzzzz-tpzed-0123456789abcde/x"
    for bad in ("", "notauuid/run", "zzzzz-j7d0g-0123456789abcde/", "zzzzz-j7d0g-0123456789abcde/a/b", " x"):
        with pytest.raises(BadLocatorError, match="arvados:<project-uuid>/<name>"):
            parse(bad)


def test_registration_is_idempotent_and_leaves_other_stores_alone(tmp_path):
    register_job_store()
    patched = Toil.getJobStore
    register_job_store()
    assert Toil.getJobStore == patched
    assert Toil.JOB_STORE_TYPES.count("arvados") == 1
    assert isinstance(Toil.getJobStore("arvados:zzzzz-j7d0g-0123456789abcde/x"), KeepJobStore)
    assert type(Toil.getJobStore(str(tmp_path / "js"))).__name__ == "FileJobStore"


def test_worker_command_wraps_only_toil_workers():
    wrapped = worker_command("_toil_worker job arvados:zzzzz-j7d0g-0123456789abcde/x zzzzz-4zz18-0123456789abcde")
    assert " -m toil_arvados.worker " in wrapped and wrapped.startswith(sys.executable)
    assert worker_command("echo hi") == "echo hi"


# -- cluster: errors, clean ------------------------------------------------------------------

def test_unknown_project_is_one_clear_line(cluster_env):
    missing = "local-j7d0g-000000000000000"
    js = KeepJobStore(f"{missing}/x")
    with pytest.raises(UnknownProjectError) as err:
        js.initialize(Config())
    message = str(err.value)
    assert missing in message and "\n" not in message and "create the project" in message
    assert cluster_env["ARVADOS_API_TOKEN"].split("/")[-1] not in message
    with pytest.raises(NoSuchJobStoreException, match=missing):
        KeepJobStore(f"{missing}/x").resume()
    KeepJobStore(f"{missing}/x").destroy()  # nothing to remove: no error


def test_initialize_twice_is_refused(store):
    from toil.jobStores.abstractJobStore import JobStoreExistsException

    with pytest.raises(JobStoreExistsException, match="toil clean"):
        KeepJobStore(store.locator).initialize(Config())


def test_home_project_locator(api, cluster_env):
    name = f"js-home-{uuid.uuid4().hex[:8]}"
    js = KeepJobStore(name)
    js.initialize(Config())
    try:
        me = api.users().current().execute()["uuid"]
        assert _project_exists(api, me, name)
        again = KeepJobStore(name)
        again.resume()
        assert again.config.workflowID == js.config.workflowID
    finally:
        js.destroy()
    assert not _project_exists(api, me, name)


def test_toil_clean_removes_project_and_contents(api, parent_project, cluster_env):
    name = f"js-clean-{uuid.uuid4().hex[:8]}"
    js = KeepJobStore(f"{parent_project}/{name}")
    js.initialize(Config())
    job = JobDescription(jobName="j", requirements=dict(memory=1, cores=1, disk=1, preemptible=False))
    js.assign_job_id(job)
    js.create_job(job)
    js.get_empty_file_store_id(job.jobStoreID, cleanup=True)
    js.write_file(__file__, hints=["step"])
    js.write_logs("log line")
    project = js.project_uuid
    assert len(_owned_collections(api, project)) >= 5
    locator = f"arvados:{parent_project}/{name}"
    # `toil clean` as a user runs it, in a process that loads the plugin first.
    clean = [sys.executable, "-c", "import sys, toil_batch_system_arvados; from toil.utils.toilClean import main; "
             "sys.argv = ['toil clean', sys.argv[1]]; main()", locator]
    for _ in range(2):  # the second run finds nothing and still succeeds
        done = subprocess.run(clean, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    assert not _project_exists(api, parent_project, name)
    assert _owned_collections(api, project) == []


# -- keep: import by reference ----------------------------------------------------------------

def _keep_block_count(cluster) -> int:
    return sum(1 for p in (cluster.state_path / "keep").rglob("*") if p.is_file())


def _locators(manifest_text: str) -> list[str]:
    return [tok.split("+A")[0] for line in manifest_text.splitlines() for tok in line.split()[1:]
            if len(tok) > 33 and tok[32] == "+"]


def test_keep_import_copies_no_bytes(store, api, cluster, parent_project, monkeypatch):
    import arvados.collection
    import arvados.keep

    data = os.urandom(3 << 20) + b"tail"
    src = arvados.collection.Collection(api_client=api)
    with src.open("inputs/reads.bin", "wb") as f:
        f.write(data)
    with src.open("inputs/other.txt", "wb") as f:
        f.write(b"other")
    src.save_new(name=f"src-{uuid.uuid4().hex[:8]}", owner_uuid=parent_project)
    pdh = src.portable_data_hash()
    source_blocks = set(_locators(arvados.collection.CollectionReader(pdh, api_client=api).manifest_text()))

    # Keep is content-addressed, so a copy would not add blocks: count the client's transfers too.
    transfers: list[str] = []
    for method in ("put", "get"):
        original = getattr(arvados.keep.KeepClient, method)

        def counting(self, *args, _original=original, _method=method, **kwargs):
            transfers.append(_method)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(arvados.keep.KeepClient, method, counting)
    blocks_before = _keep_block_count(cluster)
    file_id = store.import_file(f"keep:{pdh}/inputs/reads.bin")
    assert transfers == [], f"import moved Keep blocks: {transfers}"
    assert _keep_block_count(cluster) == blocks_before, "import wrote blocks to Keep"
    assert file_id.size == len(data) and not file_id.executable

    rec = store._file_record(file_id)
    assert set(_locators(rec["manifest_text"])) <= source_blocks
    with store.read_file_stream(file_id) as f:
        assert hashlib.md5(f.read()).digest() == hashlib.md5(data).digest()
    assert store.get_file_size(file_id) == len(data)

    transfers.clear()
    assert store.import_file(f"keep:{pdh}/inputs/other.txt", shared_file_name="other") is None
    assert transfers == [], f"shared import moved Keep blocks: {transfers}"
    with store.read_shared_file_stream("other") as f:
        assert f.read() == b"other"
    assert _keep_block_count(cluster) == blocks_before

    with pytest.raises(FileNotFoundError):
        store.import_file(f"keep:{pdh}/inputs/missing.bin")
    with pytest.raises(IsADirectoryError):
        store.import_file(f"keep:{pdh}/inputs")


# -- concurrency: separate processes ----------------------------------------------------------

def _payload(tag: str, i: int) -> bytes:
    head = f"{tag}:{i}:".encode()
    body = hashlib.sha256(head).digest() * 4096  # 128 KiB, distinct per (tag, i)
    return head + body + hashlib.md5(head + body).hexdigest().encode()


def _intact(blob: bytes) -> bool:
    return hashlib.md5(blob[:-32]).hexdigest().encode() == blob[-32:]


def _hammer(locator: str, tag: str, own_file: str, rounds: int, barrier: Any) -> None:
    js = KeepJobStore(locator)
    js.resume()
    barrier.wait(timeout=120)
    for i in range(rounds):
        with js.write_shared_file_stream("contended") as f:
            f.write(_payload(tag, i))
        with js.update_file_stream(own_file) as f:
            f.write(_payload(tag, i))
    with js.write_shared_file_stream(f"done-{tag}") as f:
        f.write(b"ok")


def _race_create(locator: str, tag: str, barrier: Any) -> None:
    js = KeepJobStore(locator)
    js.resume()
    barrier.wait(timeout=120)
    with js.write_shared_file_stream("raced") as f:
        f.write(_payload(tag, 0))


def _update_job(locator: str, job_id: str, tag: str, barrier: Any) -> None:
    js = KeepJobStore(locator)
    js.resume()
    job = js.load_job(job_id)
    barrier.wait(timeout=120)
    job.unitName = tag
    js.update_job(job)


def _run_all(target: Any, arg_lists: list[tuple]) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(arg_lists))
    procs = [ctx.Process(target=target, args=(*args, barrier)) for args in arg_lists]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    assert [p.exitcode for p in procs] == [0] * len(procs)


N_PROCS = 5


def test_concurrent_writers_lose_nothing(store, api):
    tags = [f"w{i}" for i in range(N_PROCS)]
    files = {tag: store.get_empty_file_store_id(basename=f"{tag}.bin") for tag in tags}
    rounds = 4
    _run_all(_hammer, [(store.locator, tag, files[tag], rounds) for tag in tags])

    # Different files: every writer's last update is there, intact.
    for tag in tags:
        with store.read_file_stream(files[tag]) as f:
            assert f.read() == _payload(tag, rounds - 1)
        with store.read_shared_file_stream(f"done-{tag}") as f:
            assert f.read() == b"ok"
    # The same shared file: one record, holding one complete write (never a mix).
    same_name = [c for c in _owned_collections(api, store.project_uuid)
                 if c["name"] == naming.shared_name("contended")]
    assert len(same_name) == 1
    with store.read_shared_file_stream("contended") as f:
        blob = f.read()
    assert _intact(blob) and any(blob == _payload(t, i) for t in tags for i in range(rounds))


def test_shared_file_creation_race(store, api):
    tags = [f"r{i}" for i in range(N_PROCS)]
    _run_all(_race_create, [(store.locator, tag) for tag in tags])
    records = [c for c in _owned_collections(api, store.project_uuid) if c["name"] == naming.shared_name("raced")]
    assert len(records) == 1
    with store.read_shared_file_stream("raced") as f:
        assert f.read() in {_payload(t, 0) for t in tags}


def test_concurrent_job_updates_all_land(store):
    jobs = []
    for i in range(N_PROCS):
        job = JobDescription(jobName=f"j{i}", requirements=dict(memory=1, cores=1, disk=1, preemptible=False))
        store.assign_job_id(job)
        store.create_job(job)
        jobs.append(job)
    _run_all(_update_job, [(store.locator, job.jobStoreID, f"updated-{i}") for i, job in enumerate(jobs)])
    assert [store.load_job(j.jobStoreID).unitName for j in jobs] == [f"updated-{i}" for i in range(N_PROCS)]
    assert {j.jobStoreID for j in store.jobs()} == {j.jobStoreID for j in jobs}


# -- file semantics the Toil suite does not pin down ------------------------------------------

def test_failed_stream_write_leaves_nothing_new(store, api):
    before = len(_owned_collections(api, store.project_uuid))
    with pytest.raises(RuntimeError):
        with store.write_shared_file_stream("never") as f:
            f.write(b"partial")
            raise RuntimeError("boom")
    with pytest.raises(NoSuchFileException):
        with store.read_shared_file_stream("never"):
            pass
    assert len(_owned_collections(api, store.project_uuid)) == before


def test_executable_bit_and_public_url(store, tmp_path):
    from toil.fileStores import FileID

    src = tmp_path / "tool.sh"
    src.write_text("#!/bin/sh\necho hi\n")
    src.chmod(0o755)
    file_id = FileID.forPath(store.write_file(str(src)), str(src))
    assert file_id.executable
    out = tmp_path / "out.sh"
    store.read_file(file_id, str(out))
    assert os.access(out, os.X_OK) and out.read_text() == src.read_text()
    url = store.get_public_url(file_id)
    assert url.startswith("keep:") and url.endswith("/tool.sh")


# -- a real Toil workflow: leader here, workers as separate processes -------------------------

def _produce(job: Job) -> Any:
    path = os.path.join(job.tempDir, "greeting.txt")
    with open(path, "w") as f:
        f.write(f"hello from pid {os.getpid()}\n")
    return job.fileStore.writeGlobalFile(path)


def _consume(job: Job, file_id: Any) -> str:
    with job.fileStore.readGlobalFileStream(file_id, encoding="utf-8") as f:
        text = f.read()
    return f"{text.strip()}; read in pid {os.getpid()}"


def _root(job: Job) -> Any:
    produced = job.addChildJobFn(_produce, cores=0.1, memory="50M", disk="10M")
    consumed = produced.addFollowOnJobFn(_consume, produced.rv(), cores=0.1, memory="50M", disk="10M")
    return consumed.rv()


def test_toil_workflow_on_single_machine(api, parent_project, cluster_env, tmp_path):
    register_job_store()
    name = f"js-wf-{uuid.uuid4().hex[:8]}"
    options = Job.Runner.getDefaultOptions(f"arvados:{parent_project}/{name}")
    options.batchSystem = "single_machine"
    options.clean = "always"
    options.logLevel = "INFO"
    options.workDir = str(tmp_path)
    options.maxCores = 2
    with Toil(options) as toil:
        result = toil.start(Job.wrapJobFn(_root, cores=0.1, memory="50M", disk="10M"))
    assert result.startswith("hello from pid ") and "; read in pid " in result
    producer_pid, consumer_pid = [int(part.split("pid ")[1].split(";")[0]) for part in result.split("; ")]
    assert os.getpid() not in (producer_pid, consumer_pid), "jobs ran in the leader, not in workers"
    assert not _project_exists(api, parent_project, name), "clean=always left the job store behind"


# -- caches, the shared instance and threads --------------------------------------------------

def _job(name: str = "j") -> JobDescription:
    return JobDescription(jobName=name, requirements=dict(memory=1, cores=1, disk=1, preemptible=False))


def _other_process_view(store: KeepJobStore) -> KeepJobStore:
    """A second instance: its caches are its own, exactly like another process's."""
    other = KeepJobStore(store.locator)
    other.resume()
    return other


def test_instance_for_returns_the_store_this_process_opened(store):
    assert KeepJobStore.instance_for(store.locator) is store
    assert KeepJobStore.instance_for(f"arvados:{store.locator}") is store
    assert KeepJobStore.instance_for(f"{store.locator}-other") is None
    assert KeepJobStore.instance_for("not a/valid/locator") is None
    _other_process_view(store)  # Toil opens more instances (e.g. for promises): the first stays
    assert KeepJobStore.instance_for(store.locator) is store
    locator = store.locator
    store.destroy()
    assert KeepJobStore.instance_for(locator) is None


def test_job_id_and_first_save_cost_one_call(store, cluster):
    job = _job()
    with CallCounter(cluster) as calls:
        store.assign_job_id(job)
        store.create_job(job)
    assert calls.by_endpoint == {"collections.create": 1}
    assert naming.is_job_id(job.jobStoreID)
    assert _other_process_view(store).load_job(job.jobStoreID).jobStoreID == job.jobStoreID


def test_a_job_another_process_updated_is_reread(store):
    """The leader's reload after a worker elsewhere ran the job must see the worker's save."""
    job = _job()
    store.assign_job_id(job)
    store.create_job(job)
    store.load_job(job.jobStoreID)
    worker = _other_process_view(store)
    ran = worker.load_job(job.jobStoreID)
    ran.unitName = "ran elsewhere"
    worker.update_job(ran)
    assert store.load_job(job.jobStoreID).unitName == "ran elsewhere"
    assert store.job_exists(job.jobStoreID)
    worker.delete_job(job.jobStoreID)
    assert not store.job_exists(job.jobStoreID)


def test_running_here_serves_own_writes_without_calls(store, cluster):
    job = _job()
    store.assign_job_id(job)
    store.create_job(job)
    with CallCounter(cluster) as calls:
        with store.running_here(job.jobStoreID):
            loaded = store.load_job(job.jobStoreID)  # the step engine loads the job it runs
            assert store.job_exists(job.jobStoreID)
            loaded.unitName = "ran here"
            store.update_job(loaded)
        reloaded = store.load_job(job.jobStoreID)  # the leader's reload after the run
    assert reloaded.unitName == "ran here"
    assert calls.by_endpoint == {"collections.update": 1}
    # The authority is spent: the next load asks the server, and so sees another process's save.
    worker = _other_process_view(store)
    elsewhere = worker.load_job(job.jobStoreID)
    elsewhere.unitName = "ran elsewhere"
    worker.update_job(elsewhere)
    assert store.load_job(job.jobStoreID).unitName == "ran elsewhere"


def test_jobs_a_leader_side_job_creates_are_served_to_the_first_load(store, cluster):
    """Children a job running in the leader creates reach the leader's load (before it issues
    them) without a call; the load after that asks the server again. A job created outside any
    run (e.g. by another process's store) is always read from the server."""
    parent, children = _job("parent"), [_job("a"), _job("b")]
    store.assign_job_id(parent)
    store.create_job(parent)
    with store.running_here(parent.jobStoreID):
        with store.batch():  # Toil saves a job's new children in one batch
            for child in children:
                store.assign_job_id(child)
                store.create_job(child)
    with CallCounter(cluster) as calls:
        loaded = [store.load_job(c.jobStoreID) for c in children]
    assert calls.total == 0 and [j.jobName for j in loaded] == ["a", "b"]
    worker = _other_process_view(store)
    elsewhere = worker.load_job(children[0].jobStoreID)
    elsewhere.unitName = "ran elsewhere"
    worker.update_job(elsewhere)
    assert store.load_job(children[0].jobStoreID).unitName == "ran elsewhere"


def _tombstoned_or_gone(store: KeepJobStore, file_ids: list[str]) -> bool:
    other = _other_process_view(store)
    return not any(other.file_exists(f) for f in file_ids)


def test_deleting_a_job_created_and_run_here_needs_no_list(store, cluster, tmp_path):
    job = _job()
    store.assign_job_id(job)
    with store.write_file_stream(job.jobStoreID, cleanup=True) as (f, body):  # Toil's body: before the record
        f.write(b"body")
    store.create_job(job)
    src = tmp_path / "out.txt"
    src.write_text("out")
    with store.running_here(job.jobStoreID):
        files = [body, store.get_empty_file_store_id(job.jobStoreID, cleanup=True),
                 store.write_file(str(src), job.jobStoreID, cleanup=True, hints=["step"])]
        kept = store.write_file(str(src), job.jobStoreID, cleanup=False)
    with CallCounter(cluster) as calls:
        store.delete_job(job.jobStoreID)
    assert "collections.list" not in calls.by_endpoint
    # The job's record (its body inside) and the empty file go; the hinted file becomes a tombstone.
    assert calls.by_endpoint == {"collections.delete": 2, "collections.update": 1}
    assert _tombstoned_or_gone(store, files) and not _other_process_view(store).job_exists(job.jobStoreID)
    assert store.file_exists(kept)


def test_deleting_a_job_that_ran_elsewhere_finds_its_files_on_the_server(store, cluster):
    job = _job()
    store.assign_job_id(job)
    store.create_job(job)
    worker = _other_process_view(store)  # the job ran in a worker, which wrote a cleanup file
    made_there = worker.get_empty_file_store_id(job.jobStoreID, cleanup=True)
    with CallCounter(cluster) as calls:
        store.delete_job(job.jobStoreID)
    assert calls.by_endpoint.get("collections.list") == 1
    assert _tombstoned_or_gone(store, [made_there])


def test_promises_are_written_without_an_existence_check(store, cluster):
    """One update per promise; a promise file already gone (its reader finished) is skipped."""
    from toil_arvados import toil_patches

    toil_patches.promises_fulfilled_blindly()
    live, gone = store.get_empty_file_store_id(), store.get_empty_file_store_id()
    store.delete_file(gone)
    job = Job()
    job._rvs = {(): [live, gone], (1,): [live]}
    with CallCounter(cluster) as calls:
        job._fulfillPromises(("a", "b"), store)
    assert calls.by_endpoint == {"collections.update": 3}
    import pickle

    with store.read_file_stream(live) as f:
        assert pickle.load(f) == "b"  # the last promise written to it: path (1,)


def test_a_promise_costs_its_write_alone(store, cluster):
    """Registering a promise makes no call; its one write creates its file (in whichever process
    fulfils it), and a second write (its job run again) updates it."""
    import pickle

    from toil.job import Promise

    from toil_arvados import toil_patches

    toil_patches.promises_fulfilled_blindly()
    toil_patches.promises_registered_lazily()
    promising = Job()
    promising.prepareForPromiseRegistration(store)
    with CallCounter(cluster) as calls:
        pickled = pickle.dumps(promising.rv())
    assert calls.total == 0
    ((file_id,),) = promising._rvs.values()
    assert not store.file_exists(file_id)
    fulfiller = _other_process_view(store)
    with CallCounter(cluster) as calls:
        promising._fulfillPromises("first", fulfiller)
    assert calls.by_endpoint == {"collections.create": 1}
    promising._fulfillPromises("again", fulfiller)
    Promise._jobstore = store
    Promise.resolving = True
    try:
        assert pickle.loads(pickled) == "again"
    finally:
        Promise.resolving = False
    store.delete_file(file_id)
    assert not _other_process_view(store).file_exists(file_id)


def test_bodies_and_promises_kept_here_are_read_without_calls(store, cluster, tmp_path):
    """A job's body (written once, before its record) and a promise fulfilled by a job running
    here are read back with no API call; a promise fulfilled outside a run is read from the
    server, and a deleted file is gone at once."""
    from toil_arvados import toil_patches

    toil_patches.promises_fulfilled_blindly()
    job = _job()
    store.assign_job_id(job)
    with store.write_file_stream(job.jobStoreID, cleanup=True) as (f, body):
        f.write(b"the body")
    store.create_job(job)
    here, elsewhere = store.get_empty_file_store_id(), store.get_empty_file_store_id()
    promising = Job()
    promising._rvs = {(): [here]}
    with store.running_here(job.jobStoreID):
        promising._fulfillPromises("kept", store)
    promising._rvs = {(): [elsewhere]}
    promising._fulfillPromises("not kept", store)
    import pickle

    with CallCounter(cluster) as calls:
        with store.read_file_stream(body) as f:
            assert f.read() == b"the body"
        with store.read_file_stream(here) as f:
            assert pickle.load(f) == "kept"
    assert calls.total == 0
    with CallCounter(cluster) as calls:
        with store.read_file_stream(elsewhere) as f:
            assert pickle.load(f) == "not kept"
    assert calls.total == 1
    store.delete_file(here)
    with pytest.raises(NoSuchFileException):
        with store.read_file_stream(here):
            pass
    store.delete_job(job.jobStoreID)
    with pytest.raises(NoSuchFileException):
        store.read_file(body, str(tmp_path / "body"))


def test_a_body_written_before_its_job_is_saved_in_the_jobs_record(store, cluster):
    """Toil writes a job's body, then creates the job: one create holds both, every file
    operation works on the body from any process, and the body goes with the job."""
    job = _job()
    store.assign_job_id(job)
    with CallCounter(cluster) as calls:
        with store.write_file_stream(job.jobStoreID, cleanup=True) as (f, body):
            f.write(b"the body")
        store.create_job(job)
    assert calls.by_endpoint == {"collections.create": 1}
    other = _other_process_view(store)
    with other.read_file_stream(body) as f:
        assert f.read() == b"the body"
    assert other.file_exists(body) and other.get_file_size(body) == len(b"the body")
    assert other.get_public_url(body).startswith("keep:")
    loaded = other.load_job(job.jobStoreID)
    loaded.unitName = "updated elsewhere"
    other.update_job(loaded)  # the update keeps the body
    job2 = _job("second")
    store.assign_job_id(job2)
    with store.write_file_stream(job2.jobStoreID, cleanup=True) as (f, body2):
        f.write(b"second body")
    store.create_job(job2)
    for _ in range(2):  # updated twice here: the record keeps one body and one job file
        store.update_job(store.load_job(job2.jobStoreID))
    assert sorted(_names_in(store, job2.jobStoreID)) == sorted(["job", naming.body_member(body2.split("/")[0][2:])])
    with _other_process_view(store).read_file_stream(body) as f:
        assert f.read() == b"the body"
    with other.update_file_stream(body) as f:  # the file API stays whole (Toil itself never does this)
        f.write(b"rewritten")
    with _other_process_view(store).read_file_stream(body) as f:
        assert f.read() == b"rewritten"
    assert _other_process_view(store).load_job(job.jobStoreID).unitName == "updated elsewhere"
    other.delete_file(body)
    assert not _other_process_view(store).file_exists(body)
    assert _other_process_view(store).job_exists(job.jobStoreID)
    store.delete_job(job2.jobStoreID)
    assert not _other_process_view(store).file_exists(body2)


def _names_in(store: KeepJobStore, job_id: str) -> list[str]:
    from toil_arvados.jobstore import manifest_text

    rec = _other_process_view(store)._job_record(job_id, ["manifest_text"])
    return manifest_text.members(rec["manifest_text"])


def test_a_local_copy_of_a_keep_file_is_stored_by_reference(store, tmp_path, monkeypatch):
    """A step's output copied from its collection (keep_copies) is stored without an upload,
    under the name Toil gives it; a copy changed since is uploaded."""
    import arvados.collection

    from toil_arvados import keep_copies

    source = arvados.collection.Collection(api_client=store._api)
    with source.open("sub/an output.txt", "wb") as f:
        f.write(b"made in a container\n")
    source.save_new(name="a step's output", owner_uuid=store.project_uuid)
    reader = arvados.collection.CollectionReader(source.manifest_locator(), api_client=store._api)
    assert keep_copies.copy_collection(reader, str(tmp_path / "out")) == 1
    copy = tmp_path / "out" / "sub" / "an output.txt"

    def no_upload(name: str) -> Any:
        raise AssertionError(f"{name} was uploaded")

    monkeypatch.setattr(store, "_writer", no_upload)
    file_id = store.write_file(str(copy), hints=["step"])
    monkeypatch.undo()
    assert _read(store, file_id) == b"made in a container\n"
    assert store.get_public_url(file_id).endswith("/an%20output.txt")
    copy.write_bytes(b"changed by the leader\n")
    assert keep_copies.manifest_of(str(copy)) is None
    assert _read(store, store.write_file(str(copy))) == b"changed by the leader\n"


def test_reading_into_a_device_writes_into_it_and_leaves_it_a_device(store):
    """``read_file(id, "/dev/null")`` must not replace the device with a regular file."""
    import stat

    with store.write_file_stream() as (f, file_id):
        f.write(b"discarded")
    store.read_file(file_id, "/dev/null")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def _read(store: KeepJobStore, file_id: str) -> bytes:
    with store.read_file_stream(file_id) as f:
        return f.read()


def test_public_urls_of_many_files_cost_one_lookup(store, cluster, tmp_path):
    """A run's outputs: the files this process knows are looked up together; a file gone since
    falls back to get_public_url (and fails as it does); every URL is what get_public_url gives."""
    src = tmp_path / "out.txt"
    src.write_text("out")
    with store.write_file_stream(basename="streamed.txt") as (f, streamed):
        f.write(b"streamed")
    here = [streamed, store.write_file(str(src)), store.write_file(str(src), hints=["step"])]
    elsewhere = _other_process_view(store).write_file(str(src), hints=["other"])
    with CallCounter(cluster) as calls:
        urls = store.public_urls(here + [elsewhere])
    assert calls.by_endpoint == {"collections.list": 1}  # names -> UUIDs are known process-wide
    assert urls == {str(f): _other_process_view(store).get_public_url(f) for f in here + [elsewhere]}
    with CallCounter(cluster) as calls:  # exporting the outputs next reads what was listed
        contents = [_read(store, f) for f in here + [elsewhere]]
    assert contents == [b"streamed", b"out", b"out", b"out"]
    assert "collections.get" not in calls.by_endpoint and "collections.list" not in calls.by_endpoint
    store.public_urls(here)
    store.delete_file(here[1])  # a listed record is not read after its file is gone
    with pytest.raises(NoSuchFileException):
        store.read_file(here[1], str(tmp_path / "gone"))
    with pytest.raises(NoSuchFileException):
        store.public_urls(here)


def test_a_finished_job_is_deleted_without_being_rewritten(store, cluster):
    """finish_job: the leader's reload is served from memory and its delete is the only write;
    the files the job read go after its record. Until then other processes (a restart) see the
    job as it was, so it would run again rather than be lost."""
    job = _job("finished")
    store.assign_job_id(job)
    store.create_job(job)
    with store.write_file_stream() as (f, read_promise):
        f.write(b"a promise the job read")
    with store.running_here(job.jobStoreID):
        ran = store.load_job(job.jobStoreID)
        ran.unitName = "done"
        with CallCounter(cluster) as calls:
            store.finish_job(ran, [read_promise])
    assert calls.total == 0
    assert _other_process_view(store).load_job(job.jobStoreID).unitName != "done"
    with CallCounter(cluster) as calls:
        assert store.job_exists(job.jobStoreID) and store.load_job(job.jobStoreID).unitName == "done"
    assert calls.total == 0
    assert store.file_exists(read_promise)
    with CallCounter(cluster) as calls:
        store.delete_job(job.jobStoreID)
    assert calls.by_endpoint == {"collections.delete": 2}, calls.by_endpoint
    other = _other_process_view(store)
    assert not other.job_exists(job.jobStoreID) and not other.file_exists(read_promise)


def test_a_finished_job_updated_after_all_is_written_then_its_files_go(store):
    job = _job("finished, then kept")
    store.assign_job_id(job)
    store.create_job(job)
    with store.write_file_stream() as (f, read_promise):
        f.write(b"read")
    ran = store.load_job(job.jobStoreID)
    ran.unitName = "done"
    store.finish_job(ran, [read_promise])
    store.update_job(store.load_job(job.jobStoreID))
    other = _other_process_view(store)
    assert other.load_job(job.jobStoreID).unitName == "done" and not other.file_exists(read_promise)


def test_a_job_deleted_here_is_gone_at_once(store):
    job = _job()
    store.assign_job_id(job)
    store.create_job(job)
    body = store.get_empty_file_store_id(job.jobStoreID, cleanup=True)
    with store.running_here(job.jobStoreID):
        store.delete_job(job.jobStoreID)
        assert not store.job_exists(job.jobStoreID)
    with pytest.raises(NoSuchJobException):
        store.load_job(job.jobStoreID)
    other = _other_process_view(store)
    assert not other.job_exists(job.jobStoreID) and not other.file_exists(body)


def test_streamed_file_is_one_create_and_visible_elsewhere(store, cluster):
    with CallCounter(cluster) as calls:
        with store.write_file_stream(basename="out.txt") as (f, file_id):
            f.write(b"streamed")
    assert calls.by_endpoint == {"collections.create": 1}
    other = _other_process_view(store)
    with other.read_file_stream(file_id) as f:
        assert f.read() == b"streamed"
    with other.update_file_stream(file_id) as f:  # e.g. a promise fulfilled by another worker
        f.write(b"fulfilled")
    with store.read_file_stream(file_id) as f:  # file content is never cached
        assert f.read() == b"fulfilled"
    other.delete_file(file_id)
    assert not store.file_exists(file_id)
    with pytest.raises(NoSuchFileException):
        store.update_file(file_id, __file__)


def test_known_hinted_slot_update_is_one_call_and_respects_tombstones(store, cluster, tmp_path):
    src = tmp_path / "a.txt"
    src.write_text("one")
    file_id = store.write_file(str(src), hints=["step"])
    src.write_text("two")
    with CallCounter(cluster) as calls:
        store.update_file(file_id, str(src))
    assert calls.by_endpoint == {"collections.update": 1}
    with _other_process_view(store).read_file_stream(file_id) as f:
        assert f.read() == b"two"
    _other_process_view(store).delete_file(file_id)  # a tombstone now holds the slot
    with pytest.raises(NoSuchFileException):
        store.update_file(file_id, str(src))
    assert not store.file_exists(file_id)
    tomb = [c for c in _owned_collections(store._api, store.project_uuid)
            if c["properties"].get(naming.KIND) == naming.KIND_TOMBSTONE]
    assert len(tomb) == 1
    assert store._api.collections().get(uuid=tomb[0]["uuid"]).execute()["manifest_text"] == ""


def test_idle_log_polls_are_throttled_but_logs_written_here_show_at_once(store, api, cluster):
    got: list[bytes] = []

    def callback(handle: Any) -> None:
        got.append(handle.read())

    assert store.read_logs(callback) == 0
    # A log from another process (written straight to the server) waits for the next real poll...
    from toil_arvados.jobstore import collection_io

    w = collection_io.OneFileWriter(api, naming.LOG_FILE)
    w.write_bytes(b"from another process")
    api.collections().create(body={"collection": {
        "owner_uuid": store.project_uuid, "name": naming.log_name(), "manifest_text": w.manifest_text(),
        "properties": {naming.KIND: naming.KIND_LOG, naming.LOG_STATE: naming.LOG_NEW}}}).execute()
    with CallCounter(cluster) as calls:
        assert store.read_logs(callback) == 0
    assert calls.total == 0
    # ...while a log written in this process (any instance) is read at once, with the other.
    _other_process_view(store).write_logs("from this process")
    assert store.read_logs(callback) == 2
    assert sorted(got) == [b"from another process", b"from this process"]
    assert store.read_logs(callback, read_all=True) == 2  # read_all is never throttled
    # A worker elsewhere writes its log, exits; the leader asks job_exists: the next poll is real.
    assert store.read_logs(callback) == 0
    w = collection_io.OneFileWriter(api, naming.LOG_FILE)
    w.write_bytes(b"last job")
    api.collections().create(body={"collection": {
        "owner_uuid": store.project_uuid, "name": naming.log_name(), "manifest_text": w.manifest_text(),
        "properties": {naming.KIND: naming.KIND_LOG, naming.LOG_STATE: naming.LOG_NEW}}}).execute()
    assert store.read_logs(callback) == 0
    assert not store.job_exists(naming.new_job_id())
    assert store.read_logs(callback) == 1 and got[-1] == b"last job"


def test_one_instance_shared_by_threads(store):
    """Threads of one process (the leader's step engine) share the instance: batches stay per
    thread, caches stay consistent, nothing is lost."""
    import threading

    n_threads, per_thread = 6, 4
    results: dict[int, list[tuple[str, str]]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(n_threads)

    def work(t: int) -> None:
        try:
            barrier.wait(timeout=60)
            mine = []
            with store.batch():
                jobs = []
                for i in range(per_thread):
                    job = _job(f"t{t}-{i}")
                    store.assign_job_id(job)
                    store.create_job(job)
                    jobs.append(job)
            for i, job in enumerate(jobs):
                with store.running_here(job.jobStoreID):
                    loaded = store.load_job(job.jobStoreID)
                    with store.write_file_stream(job.jobStoreID, basename=f"t{t}-{i}") as (f, file_id):
                        f.write(f"t{t}-{i}".encode())
                    loaded.unitName = file_id
                    store.update_job(loaded)
                assert store.load_job(job.jobStoreID).unitName == file_id
                mine.append((job.jobStoreID, file_id))
            results[t] = mine
        except BaseException as e:  # reported below, with the thread's traceback
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(300)
    assert not errors, errors
    other = _other_process_view(store)
    saved = {j.jobStoreID: j.unitName for j in other.jobs()}
    assert len(saved) == n_threads * per_thread
    for t, mine in results.items():
        for i, (job_id, file_id) in enumerate(mine):
            assert saved[job_id] == file_id
            with other.read_file_stream(file_id) as f:
                assert f.read() == f"t{t}-{i}".encode()


def test_a_thread_batch_does_not_capture_other_threads_jobs(store):
    import threading

    other_thread_job = _job("outside")
    with store.batch():
        inside = _job("inside")
        store.assign_job_id(inside)
        store.create_job(inside)

        def create() -> None:
            store.assign_job_id(other_thread_job)
            store.create_job(other_thread_job)

        th = threading.Thread(target=create)
        th.start()
        th.join(60)
        view = _other_process_view(store)
        assert view.job_exists(other_thread_job.jobStoreID), "another thread's create waited for this batch"
        assert not view.job_exists(inside.jobStoreID)
    assert _other_process_view(store).job_exists(inside.jobStoreID)


def test_job_exists_then_load_is_one_call_and_sees_the_other_process(store, cluster, monkeypatch):
    """Toil's leader, once a worker elsewhere is done: job_exists, then reload the job."""
    from toil_arvados.jobstore import keep_jobstore

    job = _job()
    store.assign_job_id(job)
    store.create_job(job)
    store.load_job(job.jobStoreID)
    worker = _other_process_view(store)
    ran = worker.load_job(job.jobStoreID)
    ran.unitName = "ran elsewhere"
    worker.update_job(ran)
    with CallCounter(cluster) as calls:
        assert store.job_exists(job.jobStoreID)
        assert store.load_job(job.jobStoreID).unitName == "ran elsewhere"
    assert calls.total == 1
    # The record serves one load only, and only moments after job_exists.
    ran.unitName = "again"
    worker.update_job(ran)
    assert store.load_job(job.jobStoreID).unitName == "again"
    monkeypatch.setattr(keep_jobstore, "PREFETCH_WINDOW", 0.0)
    assert store.job_exists(job.jobStoreID)
    ran.unitName = "later"
    worker.update_job(ran)
    assert store.load_job(job.jobStoreID).unitName == "later"


def test_workers_resume_without_a_project_lookup(store, api, cluster, parent_project, monkeypatch):
    from toil_arvados.jobstore.keep_jobstore import PROJECT_ENV

    env = store.get_env()
    assert env == {PROJECT_ENV: f"arvados:{store.locator}={store.project_uuid}"}
    assert store.config.workflowID
    monkeypatch.setenv(PROJECT_ENV, env[PROJECT_ENV])
    worker = KeepJobStore(store.locator)
    with CallCounter(cluster) as calls:
        worker.resume()
    assert "groups.list" not in calls.by_endpoint
    assert worker.project_uuid == store.project_uuid and worker.config.workflowID == store.config.workflowID
    # A stale hint (another project) falls back to the lookup.
    monkeypatch.setenv(PROJECT_ENV, f"arvados:{store.locator}={_new_project(api, 'stale')}")
    again = KeepJobStore(store.locator)
    again.resume()
    assert again.project_uuid == store.project_uuid
