"""Container reuse rules (toil_arvados.localcluster.reuse)."""
from __future__ import annotations

import copy

import pytest

from toil_arvados.localcluster.reuse import (
    REUSE_ATTRIBUTES, bound_keep_cache_disk, choose_reusable, fill_runtime_constraint_defaults,
    is_reuse_match, resolve_mounts, resolve_runtime_constraints, reuse_key, secret_mounts_md5,
    UnresolvableError,
)

IMAGE = "0123456789abcdef0123456789abcdef+100"
INPUT = "fedcba9876543210fedcba9876543210+42"
OUT = "11111111111111111111111111111111+10"
LOG = "22222222222222222222222222222222+20"
GiB = 1 << 30


def request() -> dict:
    """Would-be container attributes, as the server builds them from a committed request."""
    return {
        "command": ["python", "-m", "toil_arvados.worker", "job1"],
        "cwd": "/tmp/work",
        "environment": {"B": "2", "A": "1"},
        "output_path": "/tmp/out",
        "output_glob": [],
        "container_image": IMAGE,
        "mounts": {"/tmp/out": {"kind": "tmp", "capacity": GiB},
                   "/in": {"kind": "collection", "portable_data_hash": INPUT}},
        "secret_mounts": {},
        "runtime_constraints": fill_runtime_constraint_defaults(
            {"vcpus": 1, "ram": 4 * GiB, "API": True}),
        "scheduling_parameters": {"preemptible": False, "partitions": [], "max_run_time": 0,
                                  "supervisor": False},
    }


_n = 0


def container(state: str = "Complete", **kw) -> dict:
    """A stored container created for request() (secret mounts kept only as their md5)."""
    global _n
    _n += 1
    req = request()
    c = {k: copy.deepcopy(v) for k, v in req.items() if k != "secret_mounts"}
    c.update(uuid=f"zzzzz-dz642-{_n:015d}", state=state,
             runtime_constraints=resolve_runtime_constraints(req["runtime_constraints"]),
             secret_mounts_md5=secret_mounts_md5(req["secret_mounts"]),
             created_at="2026-01-01T00:00:00.000000000Z", priority=500, progress=None,
             runtime_status={}, started_at=None, finished_at=None, exit_code=None,
             log=None, output=None)
    if state == "Complete":
        c.update(exit_code=0, log=LOG, output=OUT, started_at="2026-01-01T00:01:00.000000000Z",
                 finished_at="2026-01-01T00:02:00.000000000Z")
    c.update(kw)
    return c


def everything_readable(pdh: str) -> bool:
    return True


def test_identical_request_reuses_complete_container():
    c = container()
    assert is_reuse_match(c, request())
    assert choose_reusable([c], request(), everything_readable)["uuid"] == c["uuid"]


def test_hash_key_order_does_not_matter():
    req = request()
    req["environment"] = {"A": "1", "B": "2"}
    req["mounts"] = dict(reversed(list(req["mounts"].items())))
    assert is_reuse_match(container(), req)
    assert reuse_key(req) == reuse_key(container())


@pytest.mark.parametrize("attr, value", [
    ("command", ["python", "-m", "toil_arvados.worker", "job2"]),
    ("cwd", "/tmp"),
    ("environment", {"A": "1", "B": "3"}),
    ("output_path", "/tmp/out2"),
    ("output_glob", ["*.txt"]),
    ("container_image", "99999999999999999999999999999999+1"),
    ("mounts", {"/tmp/out": {"kind": "tmp", "capacity": 2 * GiB},
                "/in": {"kind": "collection", "portable_data_hash": INPUT}}),
    ("secret_mounts", {"/secret": {"kind": "text", "content": "s3cret"}}),
    ("runtime_constraints", fill_runtime_constraint_defaults({"vcpus": 2, "ram": 4 * GiB,
                                                              "API": True})),
    ("runtime_constraints", fill_runtime_constraint_defaults({"vcpus": 1, "ram": 4 * GiB})),
    ("runtime_constraints", fill_runtime_constraint_defaults(
        {"vcpus": 1, "ram": 4 * GiB, "API": True,
         "gpu": {"device_count": 1, "stack": "cuda", "driver_version": "12.0",
                 "hardware_target": ["9.0"], "vram": 0}})),
])
def test_each_reuse_relevant_change_breaks_the_match(attr, value):
    req = request()
    req[attr] = value
    c = container()
    assert not is_reuse_match(c, req)
    assert choose_reusable([c], req, everything_readable) is None


def test_reuse_attribute_list():
    assert set(REUSE_ATTRIBUTES) == {"command", "cwd", "environment", "output_path",
                                     "output_glob", "container_image", "mounts",
                                     "secret_mounts_md5", "runtime_constraints"}


def test_irrelevant_differences_do_not_prevent_reuse():
    req = request()
    req["scheduling_parameters"] = {"partitions": ["other"]}
    req["runtime_user_uuid"] = "zzzzz-tpzed-someoneelse0000"
    req["output_storage_classes"] = ["fast"]
    assert choose_reusable([container()], req, everything_readable) is not None


def test_keep_cache_and_zero_gpu_variants_are_reusable():
    # Containers that predate keep_cache_disk / gpu, or used a RAM cache, still match.
    base = resolve_runtime_constraints(request()["runtime_constraints"])
    for variant in (
        {k: v for k, v in base.items() if k not in ("keep_cache_disk", "gpu")},
        {**base, "keep_cache_disk": 2 * GiB},
        {**base, "keep_cache_disk": 32 * GiB},
        {**base, "keep_cache_disk": 0, "keep_cache_ram": 0},
        {**base, "cuda": {"device_count": 0, "driver_version": "",
                          "hardware_capability": ""}},
    ):
        assert is_reuse_match(container(runtime_constraints=variant), request()), variant
    # an all-zero cuda request equals no request
    req = request()
    req["runtime_constraints"] = {**req["runtime_constraints"],
                                  "cuda": {"device_count": 0, "driver_version": "",
                                           "hardware_capability": ""}}
    assert is_reuse_match(container(), req)
    # but an unusual cache size is a different container
    assert not is_reuse_match(container(runtime_constraints={**base, "keep_cache_disk": 123}),
                              request())


def test_runtime_constraint_defaults():
    rc = fill_runtime_constraint_defaults({"vcpus": 1, "ram": 100})
    assert rc == {"API": False, "keep_cache_disk": 0, "keep_cache_ram": 0, "ram": 100,
                  "vcpus": 1, "gpu": {"device_count": 0, "driver_version": "",
                                      "hardware_target": [], "stack": "", "vram": 0}}
    resolved = resolve_runtime_constraints(rc)
    assert resolved["keep_cache_disk"] == 2 * GiB  # RAM clamped to [2 GiB, 32 GiB]
    assert resolve_runtime_constraints({"ram": 8 * GiB, "keep_cache_disk": 0,
                                        "keep_cache_ram": 0})["keep_cache_disk"] == 8 * GiB
    assert resolve_runtime_constraints({"vcpus": [2, 4]})["vcpus"] == 2
    assert bound_keep_cache_disk(None) == 2 * GiB and bound_keep_cache_disk(1 << 50) == 32 * GiB
    cuda = fill_runtime_constraint_defaults(
        {"cuda": {"device_count": 1, "driver_version": "11.0", "hardware_capability": "8.0"}})
    assert cuda["gpu"] == {"device_count": 1, "driver_version": "11.0",
                           "hardware_target": ["8.0"], "stack": "cuda", "vram": 0}


def test_secret_mounts_md5_default():
    assert secret_mounts_md5({}) == "99914b932bd37a50b983c5e7c90ae93b"
    assert secret_mounts_md5({"b": 1, "a": 2}) == secret_mounts_md5({"a": 2, "b": 1})


def test_preference_complete_over_running_over_locked_over_queued():
    queued = container("Queued", priority=1000)
    locked = container("Locked", priority=1)
    running = container("Running", started_at="2026-01-01T00:01:00.000000000Z", progress=0.1)
    complete = container()
    order = [queued, locked, running, complete]
    assert choose_reusable(order, request(), everything_readable)["uuid"] == complete["uuid"]
    assert choose_reusable(order[:3], request(), everything_readable)["uuid"] == running["uuid"]
    assert choose_reusable(order[:2], request(), everything_readable)["uuid"] == locked["uuid"]
    assert choose_reusable(order[:1], request(), everything_readable)["uuid"] == queued["uuid"]


def test_complete_earliest_finished_and_readable():
    late = container(finished_at="2026-01-03T00:00:00.000000000Z")
    early = container(finished_at="2026-01-02T00:00:00.000000000Z", output="3" * 32 + "+1")
    assert choose_reusable([late, early], request(), everything_readable)["uuid"] == early["uuid"]
    # output collection gone (trashed/unreadable): not reusable, fall back to the other one
    readable = lambda pdh: pdh != early["output"]  # noqa: E731
    assert choose_reusable([late, early], request(), readable)["uuid"] == late["uuid"]
    assert choose_reusable([container(log=None)], request(), everything_readable) is None


def test_failed_and_cancelled_containers_are_never_reused():
    failed = container(exit_code=1)
    cancelled = container("Cancelled")
    assert choose_reusable([failed, cancelled], request(), everything_readable) is None


def test_running_rules():
    slow = container("Running", progress=0.2, started_at="2026-01-01T00:00:00.000000000Z")
    fast = container("Running", progress=0.9, started_at="2026-01-01T00:05:00.000000000Z")
    doomed = container("Running", progress=1.0, runtime_status={"error": "step failed"})
    cancelling = container("Running", progress=1.0, priority=0)
    got = choose_reusable([slow, fast, doomed, cancelling], request(), everything_readable)
    assert got["uuid"] == fast["uuid"]
    older = container("Running", progress=0.9, started_at="2026-01-01T00:01:00.000000000Z")
    got = choose_reusable([fast, older], request(), everything_readable)
    assert got["uuid"] == older["uuid"]


def test_waiting_rules_and_preemptible():
    q_old = container("Queued", priority=500, created_at="2026-01-01T00:00:00.000000000Z")
    q_new = container("Queued", priority=500, created_at="2026-01-02T00:00:00.000000000Z")
    q_high = container("Queued", priority=900, created_at="2026-01-03T00:00:00.000000000Z")
    assert choose_reusable([q_new, q_old], request(), everything_readable)["uuid"] == \
        q_old["uuid"]
    assert choose_reusable([q_old, q_high], request(), everything_readable)["uuid"] == \
        q_high["uuid"]
    spot = container("Locked", scheduling_parameters={"preemptible": True})
    assert choose_reusable([spot], request(), everything_readable) is None
    req = request()
    req["scheduling_parameters"] = {"preemptible": True}
    assert choose_reusable([spot], req, everything_readable)["uuid"] == spot["uuid"]


def test_resolve_mounts():
    mounts = {"/a": {"kind": "collection", "uuid": "zzzzz-4zz18-aaaaaaaaaaaaaaa"},
              "/b": {"kind": "collection", "uuid": "zzzzz-4zz18-bbbbbbbbbbbbbbb",
                     "portable_data_hash": INPUT},
              "/t": {"kind": "tmp", "capacity": 1}}
    out = resolve_mounts(mounts, lambda uuid: OUT if uuid.endswith("a") else None)
    assert out == {"/a": {"kind": "collection", "portable_data_hash": OUT},
                   "/b": {"kind": "collection", "portable_data_hash": INPUT},
                   "/t": {"kind": "tmp", "capacity": 1}}
    assert "uuid" in mounts["/a"]  # input untouched
    with pytest.raises(UnresolvableError, match="cannot mount collection"):
        resolve_mounts({"/x": {"kind": "collection", "uuid": "zzzzz-4zz18-xxxxxxxxxxxxxxx"}},
                       lambda uuid: None)


def test_empty_serialized_values_match_null():
    assert is_reuse_match(container(output_glob=None), request())
