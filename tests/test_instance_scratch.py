"""The local cluster's instance type offers the scratch its dispatcher really has, exported as
Arvados exports it, and the plugin reads it as Arvados' own readers do.

Why: Arvados exports ``IncludedScratch`` and ``AddedScratch`` only (``Scratch`` and ``Name`` are
``json:"-"`` in sdk/go/arvados/config.go, computed on reading). A client that read ``Scratch``
saw nothing on a real cluster (and so never checked disk).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from toil_arvados.container_request import unfit
from toil_arvados.localcluster import sizing
from toil_arvados.localcluster.config import ClusterConfig, disk_scratch
from toil_arvados.localcluster.server import exported_config

GIB = 1 << 30


def test_exported_instance_types_have_arvados_fields_and_the_disks_scratch(tmp_path: Path) -> None:
    cfg = ClusterConfig(state_dir=str(tmp_path / "state"), cores=2, ram=4 * GIB)
    (name, it), = exported_config(cfg)["InstanceTypes"].items()
    assert name == "local" and "Scratch" not in it and "Name" not in it
    assert it["AddedScratch"] == 0
    assert it["IncludedScratch"] == shutil.disk_usage(tmp_path).total
    fixed = ClusterConfig(state_dir=str(tmp_path / "state"), scratch=10 * GIB)
    assert [t["IncludedScratch"] for t in exported_config(fixed)["InstanceTypes"].values()] == [10 * GIB]
    assert fixed.instance_types()["local"]["Scratch"] == 10 * GIB  # what the dispatcher fits with


def test_plugin_and_dispatcher_agree_on_what_fits_the_scratch(tmp_path: Path) -> None:
    cfg = ClusterConfig(state_dir=str(tmp_path), cores=2, ram=4 * GIB, scratch=10 * GIB)
    exported = exported_config(cfg)
    rc = {"vcpus": 1, "ram": GIB, "keep_cache_disk": GIB, "keep_cache_ram": 0}
    for capacity, fits in ((9 * GIB, True), (9 * GIB + 1, False)):  # + 1 GiB of keep cache disk
        mounts = {"/tmp": {"kind": "tmp", "capacity": capacity}}
        plugin = unfit(rc, mounts, {}, None, exported)
        dispatcher, _ = sizing.choose_instance_types(cfg.instance_types(), {"runtime_constraints": rc, "mounts": mounts},
                                                     cfg.reserve_extra_ram)
        assert (plugin is None) == fits and bool(dispatcher) == fits, (capacity, plugin, dispatcher)
    assert plugin is not None and plugin.resource == "disk" and plugin.available == 10 * GIB


def test_a_state_dir_keeps_a_chosen_scratch_and_measures_its_disk_otherwise(tmp_path: Path) -> None:
    (tmp_path / "cluster.json").write_text(json.dumps({"scratch": 5 * GIB}))
    assert ClusterConfig.load(tmp_path).instance_types()["local"]["IncludedScratch"] == 5 * GIB
    (tmp_path / "cluster.json").write_text(json.dumps({}))
    assert ClusterConfig.load(tmp_path).instance_types()["local"]["IncludedScratch"] == shutil.disk_usage(tmp_path).total
    assert disk_scratch(tmp_path / "not" / "made" / "yet") == shutil.disk_usage(tmp_path).total
