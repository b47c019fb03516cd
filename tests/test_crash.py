"""A cluster killed with ``kill -9`` comes back consistent at the next ``up``.

What Arvados guarantees and a crash must not break: every committed object is still there (no
lost collection), log ids stay unique and increasing across the crash (clients resume event
streams from ``last_log_id``). Containers outlive the crash as crunch-run outlives a dispatcher's:
the next ``up`` adopts those still running or finished meanwhile and completes them in their one
container. Those whose runtime died too (a lost node) are settled the way Arvados' dispatcher
settles containers whose crunch-run vanished (cancelled, their requests retried up to
``container_count_max`` or finalized) and no token of theirs still works.

The test runs its own cluster on a fresh state directory: the session cluster must not be killed
under the other tests.
"""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import arvados
import arvados.collection
import arvados.errors
import arvados.events
import pytest

from toil_arvados.localcluster import control
from toil_arvados.localcluster.containers import merge_scheduling_parameters
from toil_arvados.localcluster.resources import new_token_secret
from toil_arvados.localcluster.store import Store

from conftest import TEST_IMAGE as IMAGE, store_images
from e2e_util import container, create_request, get_request, request_body, wait_container_state, wait_for, \
    wait_final

@pytest.fixture
def insecure_sdk(monkeypatch: pytest.MonkeyPatch):
    """The SDK's websocket client reads ARVADOS_API_HOST_INSECURE from its settings."""
    import arvados.config

    monkeypatch.setenv("ARVADOS_API_HOST_INSECURE", "1")
    arvados.config.initialize()
    yield
    monkeypatch.undo()
    arvados.config.initialize()


def _client(cfg, token=None):
    return arvados.api("v1", host=cfg.api_host, token=token or cfg.root_token, insecure=True, num_retries=0)


@pytest.fixture
def own_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, built_images):
    monkeypatch.setenv("TOIL_ARVADOS_CLUSTER_REGISTRY", str(tmp_path / "clusters.json"))
    state = tmp_path / "crash-cluster"
    cfg = control.up(state, cores=3, ram=1 << 30)
    store_images(cfg, [built_images[IMAGE]])  # the session cluster's plain Debian image
    try:
        yield state, cfg
    finally:
        control.down(state)


def _children(pid: int) -> set[int]:
    """The pids whose parent is ``pid`` (the runtime processes of running containers)."""
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.add(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return out


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid``: the runtime's processes and the containers' commands."""
    found, todo = set(), [pid]
    while todo:
        for child in _children(todo.pop()) - found:
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _kill9(state: Path, lose_containers: bool) -> list[int]:
    """``kill -9`` the cluster process and, with *lose_containers*, its containers' runtimes too
    (a node lost with the dispatcher: their commands die with them). Returns the container
    processes the cluster had started."""
    pid = int((state / "server.pid").read_text())
    children = sorted(_descendants(pid))
    # The runtimes are found before the kill: once the cluster process is dead they are
    # reparented, and no longer its children.
    runtimes = _children(pid) if lose_containers else set()
    os.kill(pid, signal.SIGKILL)
    for runtime in runtimes:
        os.kill(runtime, signal.SIGKILL)
    wait_for(lambda: _alive(pid) or (lose_containers and any(_alive(c) for c in children)),
             lambda alive: not alive, 15, "the cluster process (and its containers) to die")
    try:
        os.waitpid(pid, 0)  # up() started it from this process: reap it
    except ChildProcessError:
        pass
    return children


def _runtime_pid(state: Path, container_uuid: str) -> int:
    """The pid of the runtime process running a container (what the cluster recorded). The
    container is Running from just before its runtime starts, so the record may follow."""
    record = state / "containers" / container_uuid / "running.json"
    wait_for(record.exists, bool, 10, f"{record} to be written")
    return json.loads(record.read_text())["runtime"]["pid"]


def test_kill_9_then_up_adopts_the_running_containers(own_cluster, insecure_sdk) -> None:
    """Containers outlive the cluster process: one finishes while it is down, one is still running
    when it is back; both are adopted and complete in their one container, with their output and
    their whole log, their tokens working while they run and expired once they end."""
    state, cfg = own_cluster
    api = _client(cfg)
    quick = create_request(api, request_body(["sh", "-c", "sleep 2; echo quick > out.txt"], IMAGE, name="quick",
                                             use_existing=False))
    slow = create_request(api, request_body(["sh", "-c", "sleep 15; echo slow > out.txt"], IMAGE, name="slow",
                                            use_existing=False))
    running = [wait_container_state(api, cr["container_uuid"], "Running") for cr in (quick, slow)]
    tokens = [api.containers().auth(uuid=c["uuid"]).execute()["api_token"] for c in running]
    runtimes = [_runtime_pid(state, c["uuid"]) for c in running]
    logs_before = _all_logs(api)
    events: list[dict] = []
    listener = arvados.events.subscribe(api, [["object_uuid", "in", [c["uuid"] for c in running]]],
                                        events.append, last_log_id=logs_before[-1]["id"])

    _kill9(state, lose_containers=False)
    assert _alive(runtimes[1]), "the slow container died with the cluster process"
    wait_for(lambda: _alive(runtimes[0]), lambda alive: not alive, 30, "the quick container to end")

    cfg2 = control.up(state)
    assert container(api, running[1]["uuid"])["state"] == "Running"  # adopted, still running
    assert _client(cfg, tokens[1]).users().current().execute()["uuid"]  # and its token works
    try:
        for cr, word in ((quick, "quick"), (slow, "slow")):
            done = wait_final(api, cr["uuid"])
            c = container(api, done["container_uuid"])
            assert (done["container_count"], c["state"], c["exit_code"]) == (1, "Complete", 0), (done, c)
            assert c["uuid"] == cr["container_uuid"]
            out = arvados.collection.CollectionReader(done["output_uuid"], api_client=api)
            assert out.open("out.txt").read() == f"{word}\n"
            log = arvados.collection.CollectionReader(done["log_uuid"], api_client=api)
            assert "following the container again" in log.open("crunch-run.txt").read()
        for token in tokens:
            with pytest.raises(arvados.errors.ApiError) as e:
                _client(cfg2, token).users().current().execute()
            assert e.value.resp.status == 401
        wait_for(lambda: {e["object_uuid"] for e in list(events)
                          if (e.get("properties", {}).get("new_attributes") or {}).get("state") == "Complete"},
                 lambda completed: completed == {c["uuid"] for c in running}, 45,
                 "the subscribed client to see both containers complete")
    finally:
        listener.close()
    ids = [entry["id"] for entry in _all_logs(api)]
    assert ids == sorted(set(ids)), "log ids must be unique and increasing"
    assert not (state / "containers" / running[0]["uuid"]).exists()  # released once finished


def _all_logs(api) -> list[dict]:
    page = api.logs().list(order=["id asc"], limit=1000, select=["id", "uuid", "object_uuid", "event_type"],
                           count="exact").execute()
    assert page["items_available"] == len(page["items"]), "more logs than one page: raise the limit"
    return page["items"]


def test_kill_9_with_its_containers_then_up_recovers(own_cluster, insecure_sdk) -> None:
    """The cluster process dies with its containers (a node lost with the dispatcher)."""
    state, cfg = own_cluster
    api = _client(cfg)
    coll = arvados.collection.Collection(api_client=api)
    with coll.open("before/crash.txt", "w") as f:
        f.write("committed before the crash\n")
    coll.save_new(name="saved before the crash")

    sleep = ["sh", "-c", "sleep 30"]
    retried = create_request(api, request_body(sleep, IMAGE, name="retried", container_count_max=2,
                                               use_existing=False))
    # A second request satisfied by the same container (reuse of a Running one).
    twin = create_request(api, request_body(sleep, IMAGE, name="twin", container_count_max=3,
                                            scheduling_parameters={"max_run_time": 600}))
    assert twin["container_uuid"] == retried["container_uuid"]
    final = create_request(api, request_body(sleep, IMAGE, name="final", container_count_max=1,
                                             use_existing=False))
    running = [wait_container_state(api, cr["container_uuid"], "Running") for cr in (retried, final)]
    tokens = [api.containers().auth(uuid=c["uuid"]).execute()["api_token"] for c in running]
    assert all(_client(cfg, t).users().current().execute()["uuid"] for t in tokens)  # live now
    # A request made from inside the first container (as a workflow runner makes its steps').
    child = create_request(_client(cfg, tokens[0]), request_body(sleep, IMAGE, name="child", container_count_max=3,
                                                                 use_existing=False))
    assert child["requesting_container_uuid"] == running[0]["uuid"]
    running.append(wait_container_state(api, child["container_uuid"], "Running"))
    tokens.append(api.containers().auth(uuid=running[2]["uuid"]).execute()["api_token"])
    logs_before = _all_logs(api)
    events: list[dict] = []
    listener = arvados.events.subscribe(api, [["object_uuid", "in", [c["uuid"] for c in running]]],
                                        events.append, last_log_id=logs_before[-1]["id"])

    processes = _kill9(state, lose_containers=True)
    assert len(processes) >= 4, f"two containers, each a runtime and a command: only {processes}"

    cfg2 = control.up(state)
    assert cfg2.api_host == cfg.api_host  # same address: the old client keeps working
    reader = arvados.collection.CollectionReader(coll.manifest_locator(), api_client=api)
    assert reader.open("before/crash.txt").read() == "committed before the crash\n"

    for c in running:  # settled before the cluster answered: nothing runs them any more
        after = container(api, c["uuid"])
        assert after["state"] == "Cancelled" and after["auth_uuid"] is None
        assert "cluster stopped" in after["runtime_status"]["error"]
    for token in tokens:
        with pytest.raises(arvados.errors.ApiError) as e:
            _client(cfg, token).users().current().execute()
        assert e.value.resp.status == 401

    again = get_request(api, retried["uuid"])
    assert again["state"] == "Committed" and again["container_count"] == 2
    assert again["container_uuid"] not in (c["uuid"] for c in running)
    # Both requests of the cancelled container are retried together, on one new container
    # whose scheduling allows what both allow (Arvados' handle_completed).
    twin_again = get_request(api, twin["uuid"])
    assert (twin_again["container_uuid"], twin_again["container_count"]) == (again["container_uuid"], 2)
    assert container(api, again["container_uuid"])["scheduling_parameters"]["max_run_time"] == 0
    gave_up = wait_final(api, final["uuid"])
    assert gave_up["container_uuid"] == running[1]["uuid"] and gave_up["container_count"] == 1
    assert gave_up["log_uuid"]  # what the container logged before the crash is kept
    # The request made by a container that was cancelled is not retried but finalized (Arvados'
    # handle_completed), though it had attempts left.
    orphan = wait_final(api, child["uuid"])
    assert (orphan["container_uuid"], orphan["container_count"], orphan["priority"]) == (running[2]["uuid"], 1, 0)

    logs_after = _all_logs(api)
    ids = [entry["id"] for entry in logs_after]
    assert ids == sorted(set(ids)), "log ids must be unique and increasing"
    assert logs_after[:len(logs_before)] == logs_before  # history before the crash unchanged
    assert any(entry["object_uuid"] == running[0]["uuid"] for entry in logs_after[len(logs_before):])
    # A client subscribed before the crash reconnects to the same address and, resuming from
    # the last id it saw, gets what happened meanwhile: the recovery's cancellations.
    try:
        wait_for(lambda: {e["object_uuid"] for e in list(events)
                          if (e.get("properties", {}).get("new_attributes") or {}).get("state") == "Cancelled"},
                 lambda cancelled: cancelled == {c["uuid"] for c in running}, 45,
                 "the subscribed client to see the recovery's cancellations")
    finally:
        listener.close()

    for cr in (retried, twin):
        api.container_requests().update(uuid=cr["uuid"], body={"container_request": {"priority": 0}}).execute()
    wait_final(api, retried["uuid"])
    wait_final(api, twin["uuid"])
    for c in api.containers().list(limit=1000).execute()["items"]:
        assert c["state"] in ("Complete", "Cancelled") and c["auth_uuid"] is None


def test_up_finishes_what_a_crash_interrupted(own_cluster) -> None:
    """Crashes between two commits of one step: a container finished but its request not yet
    finalized; a container token made but not yet given to its container. The next ``up``
    finalizes the request, as the API server would have, and expires the stray token."""
    state, cfg = own_cluster
    api = _client(cfg)
    cr = wait_final(api, create_request(api, request_body(["sh", "-c", "echo done > out.txt"], IMAGE))["uuid"])
    assert control.down(state)
    # The database as crashes at those points would leave it.
    store = Store(state / "arvados.sqlite3", cfg.cluster_id, cfg.system_user_uuid)
    store.update(cr["uuid"], {"state": "Committed", "output_uuid": None, "log_uuid": None})
    stray = store.create("api_client_authorizations", {
        "owner_uuid": cfg.admin_user_uuid, "api_token": new_token_secret(), "scopes": ["all"],
        "expires_at": None, "_container_uuid": cr["container_uuid"]})
    store.close()

    cfg2 = control.up(state)
    again = get_request(_client(cfg2), cr["uuid"])
    assert again["state"] == "Final" and again["output_uuid"] and again["log_uuid"]
    out = arvados.collection.CollectionReader(again["output_uuid"], api_client=_client(cfg2))
    assert out.open("out.txt").read() == "done\n"
    with pytest.raises(arvados.errors.ApiError) as e:
        _client(cfg2, f"v2/{stray['uuid']}/{stray['api_token']}").users().current().execute()
    assert e.value.resp.status == 401


def test_scheduling_of_a_container_retried_for_several_requests() -> None:
    """Arvados' merge: any partition if one request allows any, else the union; preemptible only
    if all are; supervisor if any is; no run-time limit if one has none, else the longest."""
    merged = merge_scheduling_parameters([
        {"partitions": ["a"], "preemptible": True, "supervisor": False, "max_run_time": 60},
        {"partitions": ["b", "a"], "preemptible": True, "supervisor": True, "max_run_time": 600}])
    assert merged == {"partitions": ["a", "b"], "preemptible": True, "supervisor": True, "max_run_time": 600}
    merged = merge_scheduling_parameters([
        {"partitions": [], "preemptible": True, "max_run_time": 0},
        {"partitions": ["b"], "preemptible": False, "max_run_time": 600}])
    assert merged == {"partitions": [], "preemptible": False, "supervisor": False, "max_run_time": 0}
    assert merge_scheduling_parameters([{"partitions": ["x"], "max_run_time": 5}])["partitions"] == ["x"]
