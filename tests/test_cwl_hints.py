"""Arvados CWL extensions on native steps, without a server: the extension schema loads them
(as hints and as requirements), bad values are one-line errors, and each becomes the request
field arvados-cwl-runner users know."""
from __future__ import annotations

import pickle
import textwrap
from pathlib import Path

import pytest

from toil_arvados import cwl_extensions, cwl_hints
from toil_arvados.cwl_hints import HintError
from toil_arvados.cwl_images import load_process
from toil_arvados.cwl_step_request import MIB, StepInvocation, StepSettings, step_request_body
from toil_arvados.step_placement import step_settings


def _inv(**kw) -> StepInvocation:
    base = dict(name="main.shout", command=["echo", "hi"], image="debian:stable-slim",
                environment={"HOME": "/var/spool/cwl", "TMPDIR": "/tmp"}, mounts={})
    base.update(kw)
    return StepInvocation(**base)


def _body(inv: StepInvocation, **settings) -> dict:
    return step_request_body(inv, StepSettings(project_uuid="p", **settings), step="main.shout", tool="t")


def test_partitions_from_the_hint_else_the_option() -> None:
    assert "partitions" not in _body(_inv())["scheduling_parameters"]
    assert _body(_inv(), partitions=("cpu", "big"))["scheduling_parameters"]["partitions"] == ["cpu", "big"]
    assert _body(_inv(partitions=("gpu",)), partitions=("cpu",))["scheduling_parameters"]["partitions"] == ["gpu"]


def test_intermediate_storage_classes_from_the_hint_else_the_option() -> None:
    assert "output_storage_classes" not in _body(_inv())
    assert _body(_inv(), intermediate_storage_classes=("archive",))["output_storage_classes"] == ["archive"]
    assert _body(_inv(output_storage_classes=("fast",)),
                 intermediate_storage_classes=("archive",))["output_storage_classes"] == ["fast"]


def test_keep_cache_goes_where_the_cluster_caches_unless_the_tool_chooses() -> None:
    rc = _body(_inv(keep_cache_mib=512))["runtime_constraints"]
    assert rc["keep_cache_disk"] == 512 * MIB and "keep_cache_ram" not in rc
    rc = _body(_inv(keep_cache_mib=512), keep_cache_in_ram=True)["runtime_constraints"]
    assert rc["keep_cache_ram"] == 512 * MIB and "keep_cache_disk" not in rc
    rc = _body(_inv(keep_cache_mib=64, keep_cache_in_ram=True))["runtime_constraints"]
    assert rc["keep_cache_ram"] == 64 * MIB


def test_api_requirement_properties_and_memory_retry_fields() -> None:
    body = _body(_inv(api=True, properties={"sample": "s1", "toil_step": "mine"}, ram_mib=100, ram_factor=2.5,
                      memory_attempt=1))
    assert body["runtime_constraints"]["API"] is True
    assert body["runtime_constraints"]["ram"] == 250 * MIB
    assert body["properties"]["sample"] == "s1"
    assert body["properties"]["toil_step"] == "main.shout"  # the plugin's own keys are not overridden
    assert body["properties"]["toil_memory_retry"] == 1


def test_toil_default_preemptible_and_walltime_apply_to_steps_that_say_nothing() -> None:
    sched = _body(_inv(), default_preemptible=True, preemptible_instances=True,
                  default_walltime=600)["scheduling_parameters"]
    assert sched == {"preemptible": True, "max_run_time": 600}
    sched = _body(_inv(preemptible=False, timelimit=30), default_preemptible=True, preemptible_instances=True,
                  default_walltime=600)["scheduling_parameters"]
    assert sched == {"preemptible": False, "max_run_time": 30}
    assert _body(_inv(), default_preemptible=True)["scheduling_parameters"] == {}  # no preemptible types


TOOL = textwrap.dedent("""\
    cwlVersion: {version}
    class: CommandLineTool
    $namespaces: {{arv: "http://arvados.org/cwl#"}}
    requirements:
      {requirement}
    hints:
      arv:OutOfMemoryRetry: {{memoryRetryMultiplier: 3, memoryErrorRegex: "Killed|std::bad_alloc"}}
      arv:RuntimeConstraints: {{keep_cache: 512}}
      arv:KeepCacheTypeRequirement: {{keepCacheType: ram_cache}}
      arv:ReuseRequirement: {{enableReuse: false}}
      arv:APIRequirement: {{}}
      arv:OutputStorageClass: {{intermediateStorageClass: fast, finalStorageClass: [archive, default]}}
      arv:ProcessProperties:
        processProperties:
          sample: s1
    inputs: []
    baseCommand: "true"
    outputs: []
    """)


def _load(tmp_path: Path, requirement: str = "arv:PartitionRequirement: {partition: [cpu, big]}",
          version: str = "v1.2"):
    cwl_extensions.register()
    path = tmp_path / "tool.cwl"
    path.write_text(TOOL.format(requirement=requirement, version=version))
    return load_process(str(path))


def _getter(tool):
    entries = list(tool.requirements) + list(tool.hints)
    return lambda cls: next((e for e in entries if e.get("class") == cls), None)


@pytest.mark.parametrize("version", ["v1.0", "v1.1", "v1.2"])
def test_extensions_load_as_hints_and_requirements_in_every_cwl_version(tmp_path: Path, version: str,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    get = _getter(_load(tmp_path, version=version))
    assert "arvados.org" not in caplog.text and "arv:" not in caplog.text  # no "Unknown hint"
    assert cwl_hints.partitions(get, "t") == ("cpu", "big")
    assert cwl_hints.intermediate_storage_classes(get, "t") == ("fast",)
    assert cwl_hints.keep_cache(get, "t") == (512, True)
    assert cwl_hints.api_access(get) is True
    # cwltool's updater turns a v1.0 tool's arv:ReuseRequirement into WorkReuse
    assert (get("WorkReuse") if version == "v1.0" else get(cwl_hints.REUSE))["enableReuse"] is False
    assert cwl_hints.properties(get, lambda v: v, "t") == {"sample": "s1"}
    retry = cwl_hints.memory_retry(get, False, 0, "t")
    assert (retry.multiplier, retry.error_regex, retry.retries) == (3.0, "Killed|std::bad_alloc", 1)


def test_a_tool_with_extensions_pickles_its_schema_by_reference(tmp_path: Path) -> None:
    from toil_arvados import toil_patches

    toil_patches.cwl_schemas_by_reference()
    tool = _load(tmp_path)
    assert len(pickle.dumps(tool.doc_schema)) < 1000  # a reference, not the whole CWL language
    assert pickle.loads(pickle.dumps(tool.doc_schema)) is tool.doc_schema


@pytest.mark.parametrize("requirement, message", [
    ("arv:PartitionRequirement: {partition: 'a,b'}", "'a,b' is not a valid name"),
    ("arv:PartitionRequirement: {partition: ['']}", "'' is not a valid name"),
    ("arv:OutOfMemoryRetry: {memoryRetryMultiplier: 0.5}", "memoryRetryMultiplier must be more than 1"),
    ("arv:OutOfMemoryRetry: {memoryErrorRegex: '(oops'}", "is not a regular expression"),
    ("arv:RuntimeConstraints: {keep_cache: 0}", "keep_cache must be a positive number"),
    ("arv:OutputStorageClass: {intermediateStorageClass: cold}", "the cluster has no storage class 'cold'"),
])
def test_values_that_cannot_work_are_one_line_errors(tmp_path: Path, requirement: str, message: str) -> None:
    tool = _load(tmp_path, requirement)
    with pytest.raises(HintError) as e:
        cwl_hints.check_process(tool, lambda: ["default", "fast", "archive"])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_value_of_the_wrong_type_does_not_load(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="partition"):
        _load(tmp_path, "arv:PartitionRequirement: {partition: [a, 3]}")


def test_storage_classes_are_checked_only_when_the_cluster_declares_them(tmp_path: Path) -> None:
    asked = []
    cwl_hints.check_process(_load(tmp_path), lambda: asked.append(1) or None)
    assert asked == [1]
    tool = _load(tmp_path, "arv:PartitionRequirement: {partition: cpu}")
    with pytest.raises(HintError, match="finalStorageClass: the cluster has no storage class 'archive'"):
        cwl_hints.check_process(tool, lambda: ["default", "fast"])


def test_memory_retries_follow_the_hint_and_toils_double_mem() -> None:
    none = lambda cls: None  # noqa: E731
    assert cwl_hints.memory_retry(none, False, 3, "t") is None
    double = cwl_hints.memory_retry(none, True, 3, "t")
    assert (double.multiplier, double.retries) == (2.0, 3)
    assert cwl_hints.memory_retry(none, True, 0, "t") is None  # --retryCount 0: nothing to retry
    hint = lambda cls: {"memoryRetryMultipler": 1.5} if cls == cwl_hints.OOM_RETRY else None  # noqa: E731
    retry = cwl_hints.memory_retry(hint, False, 0, "t")
    assert (retry.multiplier, retry.retries, retry.error_regex) == (1.5, 1, cwl_hints.DEFAULT_MEMORY_ERROR_REGEX)


@pytest.mark.parametrize("exit_code, log, expected", [
    (137, "", True),
    (1, "terminate called after throwing an instance of 'std::bad_alloc'", True),
    (1, "java.lang.OutOfMemoryError: Java heap space", True),
    (1, "MemoryError", True),
    (1, "Container using over 95% of memory (rss 1000/1024 bytes)", True),
    (1, "file not found", False),
])
def test_out_of_memory_as_arvados_runner_judges_it(exit_code: int, log: str, expected: bool) -> None:
    assert cwl_hints.out_of_memory(exit_code, lambda: log, cwl_hints.DEFAULT_MEMORY_ERROR_REGEX) is expected


class _Config:
    arvados_partition = "cpu, big"
    arvados_intermediate_storage_classes = "fast"
    arvados_storage_classes = "default"
    defaultPreemptible = True
    defaultWalltime = 120
    doubleMem = True
    retryCount = 2


def test_options_become_step_settings_and_bad_ones_are_one_line_errors() -> None:
    from toil_arvados.arvados_client import ArvadosSetupError

    cluster = {"StorageClasses": {"default": {"Default": True}, "fast": {}}, "Containers": {"DefaultKeepCacheRAM": 0}}
    got = step_settings(_Config(), cluster)
    assert got == {"partitions": ("cpu", "big"), "intermediate_storage_classes": ("fast",),
                   "default_preemptible": True, "default_walltime": 120, "keep_cache_in_ram": False,
                   "double_mem": True, "retry_count": 2}
    bad = _Config()
    bad.arvados_intermediate_storage_classes = "slow"
    with pytest.raises(ArvadosSetupError, match="--arvadosIntermediateStorageClasses: the cluster has no storage class 'slow'"):
        step_settings(bad, cluster)
    bad = _Config()
    bad.arvados_storage_classes = "default,cold"
    with pytest.raises(ArvadosSetupError, match="--arvadosStorageClasses: the cluster has no storage class 'cold'"):
        step_settings(bad, cluster)
    bad = _Config()
    bad.arvados_partition = "a b"
    with pytest.raises(ArvadosSetupError, match="--arvadosPartition: 'a b' is not a valid name"):
        step_settings(bad, cluster)
