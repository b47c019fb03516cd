"""A native step's staging collection, built against the local cluster through the real SDK.

Why: inputs already in Keep must be added by reference (no bytes uploaded), every kind of
location cwltool and Toil hand us must land at its mapped path, and the same inputs must give the
same portable data hash on every run -- or Arvados could never reuse the step.
"""
from __future__ import annotations

import base64
import json
from pathlib import Path

import arvados.collection

from toil_arvados.cwl_staging import Entry, KeepSources, StagingCollection


def _source_collection(api, project: str) -> str:
    coll = arvados.collection.Collection(api_client=api)
    with coll.open("a.txt", "wb") as f:
        f.write(b"alpha\n")
    with coll.open("d/b.txt", "wb") as f:
        f.write(b"bravo bravo\n")
    coll.save_new(name="staging source", owner_uuid=project)
    return coll.portable_data_hash()


def _toildir(tree: dict) -> str:
    return "toildir:" + base64.urlsafe_b64encode(json.dumps(tree).encode()).decode()


def _stage(api, project: str, pdh: str, local: Path) -> StagingCollection:
    def keep_url_of(location: str) -> str | None:  # what the Keep job store answers for its files
        return {"toilfile:A": f"keep:{pdh}/a.txt", "toilfile:B": f"keep:{pdh}/d/b.txt"}.get(location)

    staging = StagingCollection(api, KeepSources(api, keep_url_of, lambda loc: str(local)), "/var/lib/cwl")
    for entry in [
        Entry(f"keep:{pdh}/a.txt", "/var/lib/cwl/stg0/a.txt", "File"),
        Entry(f"keep:{pdh}/d", "/var/lib/cwl/stg1/d", "Directory"),
        Entry("toilfile:A", "/var/lib/cwl/stg2/renamed.txt", "File"),
        Entry(_toildir({"x": "toilfile:A", "sub": {"y": "toilfile:B"}}), "/var/lib/cwl/stg3/tree", "Directory"),
        Entry(str(local), "/var/lib/cwl/stg4/local.txt", "File"),
        Entry("hello $(x)", "/var/spool/cwl/greeting.txt", "CreateFile"),
        Entry("_:empty", "/var/spool/cwl/empty", "Directory"),
        Entry("_:lit", "/var/spool/cwl/lit", "Directory"),
        Entry("inside", "/var/spool/cwl/lit/inner.txt", "CreateWritableFile"),
    ]:
        staging.add(entry)
    return staging


def test_staging_collection_layout_content_and_stable_hash(api, project: str, tmp_path: Path) -> None:
    pdh = _source_collection(api, project)
    local = tmp_path / "local.txt"
    local.write_bytes(b"from the leader\n")
    staging = _stage(api, project, pdh, local)
    try:
        staged = staging.save(project, "Inputs of test step")
        uploaded, referenced = staging.uploaded_bytes, staging.referenced_bytes
    finally:
        staging.close()
    # Only what was not in Keep yet was uploaded: the local file and the two literals.
    assert uploaded == len(b"from the leader\n") + len(b"hello $(x)") + len(b"inside")
    assert referenced == 6 + 12 + 6 + (6 + 12)

    reader = arvados.collection.CollectionReader(staged, api_client=api)

    def text(path: str) -> str:
        with reader.open(path, "r") as f:
            return f.read()

    assert text("stage/stg0/a.txt") == "alpha\n"
    assert text("stage/stg1/d/b.txt") == "bravo bravo\n"
    assert text("stage/stg2/renamed.txt") == "alpha\n"
    assert text("stage/stg3/tree/x") == "alpha\n" and text("stage/stg3/tree/sub/y") == "bravo bravo\n"
    assert text("stage/stg4/local.txt") == "from the leader\n"
    assert text("mnt/var/spool/cwl/greeting.txt") == "hello $(x)"
    assert text("mnt/var/spool/cwl/lit/inner.txt") == "inside"
    assert isinstance(reader.find("mnt/var/spool/cwl/empty"), arvados.collection.Subcollection)

    again = _stage(api, project, pdh, local)
    try:
        assert again.save(project, "Inputs of test step, next run") == staged  # same inputs, same hash
    finally:
        again.close()
