"""The job store's manifest arithmetic (job + body files in one record), without a server."""
from __future__ import annotations

import pytest

from toil_arvados.jobstore import manifest_text as manifests
from toil_arvados.jobstore.manifest_text import EMPTY_BLOCK, members, merge, size_of, without

A = "a" * 32
B = "b" * 32
C = "c" * 32
JOB = f". {A}+5+Asig@1 0:5:job\n"
BODY = f". {B}+3 {C}+4 0:7:body-1\n"
EMPTY = f". {EMPTY_BLOCK} 0:0:body-2\n"


def test_merge_shifts_each_file_past_the_blocks_before_it():
    merged = merge(JOB, BODY, EMPTY)
    assert merged == f". {A}+5+Asig@1 {B}+3 {C}+4 {EMPTY_BLOCK} 0:5:job 5:7:body-1 12:0:body-2\n"
    assert members(merged) == ["job", "body-1", "body-2"]
    assert size_of(merged, "body-1") == 7 and size_of(merged, "nope") is None


def test_without_drops_the_file_and_the_blocks_only_it_used():
    merged = merge(JOB, BODY, EMPTY)
    assert without(merged, "job") == f". {B}+3 {C}+4 0:7:body-1 0:0:body-2\n"
    assert without(merged, "body-1") == f". {A}+5+Asig@1 0:5:job 0:0:body-2\n"
    assert without(without(merged, "body-1"), "job") == f". {EMPTY_BLOCK} 0:0:body-2\n"
    assert without(JOB, "job") == ""


def test_replacing_the_job_file_keeps_the_bodies_and_drops_the_old_job_blocks():
    merged = merge(JOB, BODY)
    new_job = f". {'d' * 32}+9 0:9:job\n"
    for _ in range(3):  # repeated updates do not pile up blocks
        merged = merge(new_job, without(merged, "job"))
    assert merged == f". {'d' * 32}+9 {B}+3 {C}+4 0:9:job 9:7:body-1\n"


@pytest.mark.parametrize("bad", [". x 0:1:a\n", "./sub " + JOB[2:], JOB + BODY, f". {A}+5 0:5:job {B}+3\n"])
def test_other_shapes_are_refused(bad):
    with pytest.raises(ValueError):
        members(bad)


def test_the_same_name_twice_is_refused():
    with pytest.raises(ValueError):
        merge(JOB, JOB)


def test_only_one_file_in_one_segment_is_the_job_stores_shape() -> None:
    assert manifests.is_one_segment(". aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa+10+Asig@1 0:3:a\\040b\n")
    assert manifests.is_one_segment(". d41d8cd98f00b204e9800998ecf8427e+0 0:0:e\n")
    assert not manifests.is_one_segment(". aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa+10 0:3:f 5:1:f\n")  # two segments
    assert not manifests.is_one_segment("./sub aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa+10 0:3:f\n")  # not the root stream
    assert not manifests.is_one_segment("")
