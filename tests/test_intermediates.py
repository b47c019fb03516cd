"""The pure parts of output collections and intermediates: what is kept for reuse, names, options."""
from __future__ import annotations

import argparse

import pytest

from toil_arvados import intermediates as im
from toil_arvados import output_collection as oc
from toil_arvados.cwl_step_request import StepInvocation, StepSettings, step_request_body

OUT, LOG, OTHER = "a" * 32 + "+1", "b" * 32 + "+2", "c" * 32 + "+3"


def _cr(uuid: str, container: str, *, reuse: bool = True, ttl: int = 0, step: bool = True) -> dict:
    return {"uuid": uuid, "container_uuid": container, "use_existing": reuse, "output_ttl": ttl,
            "properties": {"toil_step": "wf.cwl.step"} if step else {"toil_job_store_id": "j-1"}}


def _coll(uuid: str, pdh: str, **props: str) -> dict:
    return {"uuid": uuid, "portable_data_hash": pdh, "properties": dict(props), "created_at": uuid}


DONE = {"c1": {"state": "Complete", "exit_code": 0, "output": OUT, "log": LOG}}
RUN = [_coll("staging", OTHER, toil_role="staging"), _coll("out", OUT, type="output", container_request="r1"),
       _coll("merged-log", OTHER, type="log", container_request="r1"),
       _coll("log-copy", LOG, type="log", container_request="r1", container_uuid="c1")]


def test_a_reusable_step_keeps_one_output_and_one_log_everything_else_goes() -> None:
    records = im.RunRecords([_cr("r1", "c1")], DONE, RUN, [])
    assert im.plan_trash(records) == ["merged-log", "staging"]


def test_a_step_whose_output_expires_keeps_nothing() -> None:
    assert im.plan_trash(im.RunRecords([_cr("r1", "c1", ttl=60)], DONE, RUN, [])) == [
        "log-copy", "merged-log", "out", "staging"]


def test_a_step_run_without_reuse_is_still_kept_for_later_runs_to_reuse() -> None:
    """``use_existing: false`` is about the request taking an existing container; Arvados still
    reuses the container it made for later requests."""
    assert im.plan_trash(im.RunRecords([_cr("r1", "c1", reuse=False)], DONE, RUN, [])) == ["merged-log", "staging"]


def test_a_toil_worker_job_without_reuse_keeps_nothing() -> None:
    """A worker job's command names its job store and job: only --arvadosReuse keeps it."""
    worker = _cr("r1", "c1", reuse=False, step=False)
    assert im.plan_trash(im.RunRecords([worker], DONE, RUN, [])) == ["log-copy", "merged-log", "out", "staging"]
    assert im.plan_trash(im.RunRecords([_cr("r1", "c1", step=False)], DONE, RUN, [])) == ["merged-log", "staging"]


@pytest.mark.parametrize("container", [{"state": "Complete", "exit_code": 1, "output": OUT, "log": LOG},
                                       {"state": "Cancelled", "exit_code": None, "output": None, "log": LOG}])
def test_a_failed_step_keeps_nothing(container: dict) -> None:
    assert len(im.plan_trash(im.RunRecords([_cr("r1", "c1")], {"c1": container}, RUN, []))) == 4


def test_an_earlier_runs_lasting_copy_makes_this_runs_copies_redundant() -> None:
    earlier = [_coll("old-out", OUT, container_request="r0"), _coll("old-log", LOG, container_request="r0")]
    assert im.plan_trash(im.RunRecords([_cr("r1", "c1")], DONE, RUN, earlier)) == [
        "log-copy", "merged-log", "out", "staging"]


def test_two_requests_of_one_container_keep_one_copy_each() -> None:
    run = RUN + [_coll("out2", OUT, type="output", container_request="r2"),
                 _coll("log-copy2", LOG, type="log", container_request="r2", container_uuid="c1")]
    kept = {c["uuid"] for c in run} - set(im.plan_trash(im.RunRecords([_cr("r1", "c1"), _cr("r2", "c1")], DONE, run, [])))
    assert kept == {"out", "log-copy"}


def test_step_output_ttl_comes_from_the_requirement_else_the_run() -> None:
    assert im.step_output_ttl({"class": "arv:IntermediateOutput", "outputTTL": 30}, 600) == 30
    assert im.step_output_ttl(None, 600) == 600
    with pytest.raises(ValueError, match="outputTTL"):
        im.step_output_ttl({"outputTTL": -1}, 0)


def test_output_ttl_reaches_the_request_only_when_set() -> None:
    inv = StepInvocation(name="s", command=["true"], image="i", environment={}, mounts={})
    assert "output_ttl" not in step_request_body(inv, StepSettings(project_uuid="p"), step="s", tool="t")
    inv = StepInvocation(name="s", command=["true"], image="i", environment={}, mounts={}, output_ttl=90)
    assert step_request_body(inv, StepSettings(project_uuid="p"), step="s", tool="t")["output_ttl"] == 90


def test_options_parse_and_refuse_bad_values() -> None:
    parser = argparse.ArgumentParser()
    oc.add_options(parser)
    im.add_options(parser)
    ns = parser.parse_args(["--arvadosOutputProperties", "a=1", "--arvadosOutputProperties", "b=x=y",
                            "--arvadosIntermediateOutputTTL", "60", "--noArvadosTrashIntermediate"])
    assert oc.parse_properties(ns.arvados_output_properties) == {"a": "1", "b": "x=y"}
    assert ns.arvados_intermediate_output_ttl == 60 and ns.arvados_trash_intermediate is False
    assert parser.parse_args([]).arvados_trash_intermediate is True
    for bad in (["--arvadosOutputProperties", "=1"], ["--arvadosIntermediateOutputTTL", "-1"],
                ["--arvadosIntermediateOutputTTL", "soon"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)


def test_default_name_is_arvados_cwl_runners() -> None:
    assert oc.default_output_name(oc.workflow_name({"id": "file:///w/main.cwl", "label": "my/pipe"})) == \
        "Output from workflow my pipe"
    assert oc.default_output_name(oc.workflow_name({"id": "file:///w/main.cwl"})) == "Output from workflow main.cwl"
