"""Arvados' container request rules and dispatch-cloud's instance fitting, as pure functions.

Each case is taken from the Arvados source (container_request.rb, node_size.go, crunchrun.go);
see docs/fidelity.md for the mapping.
"""
from __future__ import annotations

import pytest

from toil_arvados.localcluster import sizing, validation
from toil_arvados.localcluster.crunch import crunch_run_mount_error
from toil_arvados.localcluster.reuse import fill_runtime_constraint_defaults

GiB = 1 << 30
MiB = 1 << 20


def rc_errors(rc: dict, committed: bool = True) -> list[str]:
    return validation.runtime_constraint_errors(fill_runtime_constraint_defaults(rc), committed=committed)


def test_valid_runtime_constraints_have_no_errors() -> None:
    assert rc_errors({"vcpus": 1, "ram": 23}) == []
    assert rc_errors({"vcpus": 2, "ram": GiB, "API": True, "keep_cache_ram": 0, "keep_cache_disk": 2 * GiB,
                      "gpu": {"device_count": 1, "driver_version": "11.0", "hardware_target": ["8.6"],
                              "stack": "cuda", "vram": 8 * GiB}}) == []


@pytest.mark.parametrize("rc, fragment", [
    ({"vcpus": 1}, "[ram]=0 must be a positive integer"),
    ({"vcpus": 1, "ram": "1234567"}, "[ram]='1234567' must be a positive integer"),
    ({"vcpus": 1, "ram": -1}, "[ram]=-1"),
    ({"vcpus": 0, "ram": 1}, "[vcpus]=0 must be a positive integer"),
    ({"vcpus": True, "ram": 1}, "[vcpus]=True"),
    ({"vcpus": 1, "ram": 1, "badkey": 2}, "unexpected keys ['badkey']"),
    ({"vcpus": 1, "ram": 1, "gpu": {"badkey": "x"}}, "unexpected keys ['badkey']"),
    ({"vcpus": 1, "ram": 1, "gpu": []}, "[gpu] must be a hash"),
    ({"vcpus": 1, "ram": 1, "API": "yes"}, "[API]='yes' must be true or false"),
    ({"vcpus": 1, "ram": 1, "keep_cache_ram": -5}, "[keep_cache_ram]=-5"),
    ({"vcpus": 1, "ram": 1, "keep_cache_disk": 1.5}, "[keep_cache_disk]=1.5"),
    ({"vcpus": 1, "ram": 1, "gpu": {"stack": "opencl"}}, "[gpu.stack]='opencl' must be one of"),
    ({"vcpus": 1, "ram": 1, "gpu": {"device_count": -1}}, "[gpu.device_count]=-1"),
    ({"vcpus": 1, "ram": 1, "gpu": {"vram": "8G"}}, "[gpu.vram]='8G'"),
    ({"vcpus": 1, "ram": 1, "gpu": {"device_count": 1, "stack": "cuda", "driver_version": "",
                                    "hardware_target": ["8.6"]}}, "[gpu.driver_version]='' must be a string in format 'X.Y'"),
    ({"vcpus": 1, "ram": 1, "gpu": {"device_count": 1, "stack": "rocm", "driver_version": "6.1",
                                    "hardware_target": "gfx1100"}}, "[gpu.hardware_target]='gfx1100' must be an array"),
    ({"vcpus": 1, "ram": 1, "cuda": {"device_count": 1, "driver_version": "abc", "hardware_capability": "8.6"}},
     "[cuda.driver_version]='abc'"),
    ({"vcpus": 1, "ram": 1, "cuda": {"device_count": 0, "driver_version": "", "hardware_capability": "",
                                     "extra": 1}}, "unexpected keys ['extra']"),
])
def test_bad_runtime_constraints_are_named(rc: dict, fragment: str) -> None:
    errors = rc_errors(rc)
    assert any(fragment in e and e.startswith("Runtime constraints") for e in errors), errors


def test_uncommitted_requests_only_get_the_unexpected_key_check() -> None:
    assert rc_errors({"vcpus": 0}, committed=False) == []
    assert rc_errors({"bogus": 1}, committed=False) == ["Runtime constraints contains unexpected keys ['bogus']"]


def test_legacy_cuda_becomes_gpu_and_stays() -> None:
    rc = fill_runtime_constraint_defaults({"vcpus": 1, "ram": 1, "cuda": {
        "device_count": 2, "driver_version": "11.0", "hardware_capability": "8.6"}})
    assert rc["gpu"] == {"device_count": 2, "driver_version": "11.0", "hardware_target": ["8.6"],
                         "stack": "cuda", "vram": 0}
    assert rc["cuda"]["device_count"] == 2
    assert validation.runtime_constraint_errors(rc, committed=True) == []
    # zero devices: nothing translated, "" versions are fine
    rc0 = fill_runtime_constraint_defaults({"vcpus": 1, "ram": 1, "cuda": {
        "device_count": 0, "driver_version": "", "hardware_capability": ""}})
    assert rc0["gpu"]["device_count"] == 0 and validation.runtime_constraint_errors(rc0, committed=True) == []


@pytest.mark.parametrize("sp, fragment", [
    ({"partitions": "fast"}, "partitions must be an array of strings"),
    ({"partitions": ["a", 1]}, "partitions must be an array of strings"),
    ({"max_run_time": -1}, "max_run_time must be positive integer"),
    ({"max_run_time": 1.5}, "max_run_time must be positive integer"),
    ({"supervisor": "yes"}, "supervisor='yes' must be true or false"),
    ({"preemptible": 1}, "preemptible=1 must be true or false"),
    ({"badkey": 1}, "unexpected keys ['badkey']"),
    ({"preemptible": True}, "preemptible instances are not configured in InstanceTypes"),
])
def test_bad_scheduling_parameters_are_named(sp: dict, fragment: str) -> None:
    errors = validation.scheduling_parameter_errors(sp, committing=True, any_preemptible=False)
    assert any(fragment in e and e.startswith("Scheduling parameters") for e in errors), errors


def test_preemptible_needs_a_preemptible_instance_type_only_when_committing() -> None:
    sp = {"preemptible": True, "partitions": None, "max_run_time": 0, "supervisor": False}
    assert validation.scheduling_parameter_errors(sp, committing=True, any_preemptible=True) == []
    assert validation.scheduling_parameter_errors(sp, committing=False, any_preemptible=False) == []
    assert validation.any_preemptible({"a": {"Preemptible": False}, "b": {"Preemptible": True}})
    assert not validation.any_preemptible({"a": {"Preemptible": False}})


def test_output_path_must_be_exactly_a_mount_key() -> None:
    mounts = {"/out": {"kind": "tmp"}}
    assert validation.output_path_errors("/out", mounts) == []
    assert validation.output_path_errors("/out/sub", mounts) == ["Output path '/out/sub' must be a mount target"]


def test_names_over_255_characters_are_refused_not_truncated() -> None:
    assert validation.name_length_errors("collections", {"name": "x" * 255}) == []
    errors = validation.name_length_errors("container_requests", {"name": "n" * 256, "output_name": "o" * 300})
    assert [e.split(":")[0] for e in errors] == ["name", "output_name"]
    assert validation.name_length_errors("logs", {"name": "x" * 300}) == []  # no such column limit


def test_unique_name_keeps_within_255_characters() -> None:
    uuid = "zzzzz-4zz18-abcdefghijklmno"
    assert validation.unique_name("dup", uuid) == "dup (abcdefghijklmno)"
    long = validation.unique_name("x" * 255, uuid)
    assert len(long) == 255 and long.endswith("x (abcdefghijklmno)")


# -- dispatch-cloud fitting ---------------------------------------------------------------------

TYPES = {"small": {"VCPUs": 2, "RAM": 4 * GiB, "Scratch": 100 * GiB, "Price": 0.1, "Preemptible": False},
         "big": {"VCPUs": 8, "RAM": 32 * GiB, "Scratch": 500 * GiB, "Price": 0.8, "Preemptible": False},
         "small.pre": {"VCPUs": 2, "RAM": 4 * GiB, "Scratch": 100 * GiB, "Price": 0.05, "Preemptible": True}}


def ctr(vcpus: int = 1, ram: int = GiB, tmp: int = 0, image: str = "", preemptible: bool = False,
        **rc: object) -> dict:
    return {"uuid": "zzzzz-dz642-000000000000000", "container_image": image,
            "mounts": {"/out": {"kind": "tmp", "capacity": tmp}, "/in": {"kind": "collection"}},
            "runtime_constraints": {"vcpus": vcpus, "ram": ram, **rc},
            "scheduling_parameters": {"preemptible": preemptible}}


def test_ram_needed_adds_reserve_keep_cache_and_the_five_percent() -> None:
    need = sizing.resources_needed(ctr(ram=GiB, keep_cache_ram=100 * MiB), 550 * MiB)
    assert need.ram == (GiB + 100 * MiB + 550 * MiB) * 100 // 95


def test_scratch_is_tmp_capacity_image_twice_and_disk_cache() -> None:
    image = "d41d8cd98f00b204e9800998ecf8427e+206"  # (206-80)//42 = 3 blocks of 64 MiB
    assert sizing.estimate_docker_image_size(image) == 3 * 64 * MiB
    assert sizing.estimate_docker_image_size("d41d8cd98f00b204e9800998ecf8427e+121") == 0
    assert sizing.estimate_scratch(ctr(tmp=GiB, image=image, keep_cache_disk=2 * GiB)) == GiB + 3 * 64 * MiB + 2 * GiB
    # a small tmp still reserves the image buffer
    assert sizing.estimate_scratch(ctr(tmp=MiB, image=image)) == 2 * 3 * 64 * MiB


def test_choose_instance_type_cheapest_fitting_first() -> None:
    assert sizing.choose_instance_types(TYPES, ctr(), 550 * MiB) == (["small", "big"], None)
    # 4 GiB requested + reserve no longer fits the 4 GiB type
    assert sizing.choose_instance_types(TYPES, ctr(ram=4 * GiB), 550 * MiB) == (["big"], None)
    assert sizing.choose_instance_types(TYPES, ctr(ram=4 * GiB), 0) == (["big"], None)  # the 5% alone
    assert sizing.choose_instance_types(TYPES, ctr(preemptible=True), 550 * MiB) == (["small.pre"], None)
    assert sizing.choose_instance_types(TYPES, ctr(tmp=200 * GiB), 0) == (["big"], None)
    assert sizing.choose_instance_types(TYPES, ctr(vcpus=16), 0) == ([], sizing.UNSATISFIABLE)


def test_gpu_requests_fit_only_matching_gpu_types() -> None:
    gpu_types = {"g": {"VCPUs": 8, "RAM": 32 * GiB, "Scratch": 100 * GiB, "Price": 1,
                       "GPU": {"Stack": "cuda", "DeviceCount": 2, "DriverVersion": "12.0",
                               "HardwareTarget": "8.6", "VRAM": 16 * GiB}}}
    want = {"device_count": 1, "stack": "cuda", "driver_version": "11.0", "hardware_target": ["8.0"], "vram": 0}
    assert sizing.choose_instance_types(gpu_types, ctr(gpu=want), 0)[0] == ["g"]
    assert sizing.choose_instance_types(gpu_types, ctr(gpu={**want, "driver_version": "12.5"}), 0)[0] == []
    assert sizing.choose_instance_types(gpu_types, ctr(gpu={**want, "hardware_target": ["9.0"]}), 0)[0] == []
    assert sizing.choose_instance_types(gpu_types, ctr(gpu={**want, "hardware_target": ["7.5", "9.0"]}), 0)[0] == []
    assert sizing.choose_instance_types(gpu_types, ctr(gpu={**want, "device_count": 3}), 0)[0] == []
    assert sizing.choose_instance_types(gpu_types, ctr(), 0)[0] == []  # wrong (no) stack for a GPU node
    assert sizing.choose_instance_types(TYPES, ctr(gpu=want), 0) == ([], sizing.UNSATISFIABLE)


def test_unsatisfiable_log_lists_the_types() -> None:
    text = sizing.unsatisfiable_log("zzzzz-dz642-000000000000000", sizing.UNSATISFIABLE, TYPES)
    assert text.splitlines()[0] == ("cannot run container zzzzz-dz642-000000000000000: "
                                    "constraints not satisfiable by any configured instance type")
    assert text.splitlines()[2].startswith("Type 'small.pre': 2 VCPUs")


# -- crunch-run's mount rules ---------------------------------------------------------------------

PDH = "d41d8cd98f00b204e9800998ecf8427e+0"


def test_writable_collection_by_pdh_only_under_output_path() -> None:
    base = {"output_path": "/out", "mounts": {"/out": {"kind": "tmp"}}}
    under = {**base, "mounts": {**base["mounts"], "/out/w": {"kind": "collection", "portable_data_hash": PDH,
                                                              "writable": True}}}
    assert crunch_run_mount_error(under) is None
    outside = {**base, "mounts": {**base["mounts"], "/w": {"kind": "collection", "portable_data_hash": PDH,
                                                            "writable": True}}}
    assert crunch_run_mount_error(outside) == "can never write to a collection specified by portable data hash"
    read_only = {**base, "mounts": {**base["mounts"], "/w": {"kind": "collection", "portable_data_hash": PDH}}}
    assert crunch_run_mount_error(read_only) is None


def test_only_collection_text_json_mounts_under_output_path() -> None:
    c = {"output_path": "/out", "mounts": {"/out": {"kind": "tmp"}, "/out/scratch": {"kind": "tmp"}}}
    assert "underneath the output_path for '/out/scratch', was 'tmp'" in crunch_run_mount_error(c)
