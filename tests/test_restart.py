"""A cluster keeps its state across ``down``/``up``: collections, blocks, containers and tokens.

This test runs its own cluster (the ``own_cluster`` fixture: the session cluster must not be
stopped under the other tests).
"""
from __future__ import annotations

import os

import arvados.collection

from toil_arvados.localcluster import control
from e2e_util import admin_client, container, create_request, request_body, wait_final


def test_state_survives_down_and_up(own_cluster, built_images) -> None:
    from conftest import TEST_IMAGE, store_images

    state, cfg = own_cluster
    api = admin_client(cfg)
    image = TEST_IMAGE
    store_images(cfg, [built_images[TEST_IMAGE]])

    data = os.urandom(2 << 20)
    coll = arvados.collection.Collection(api_client=api)
    with coll.open("kept/data.bin", "wb") as f:
        f.write(data)
    with coll.open("note.txt", "w") as f:
        f.write("survives restarts\n")
    coll.save_new(name="before restart")

    cr = create_request(api, request_body(["sh", "-c", "echo finished > result.txt"], image, name="before restart"))
    cr = wait_final(api, cr["uuid"])
    before = container(api, cr["container_uuid"])
    assert before["state"] == "Complete" and before["exit_code"] == 0
    user = api.users().current().execute()["uuid"]

    assert control.down(state) is True
    assert not control.answers(cfg, timeout=1.0)
    cfg2 = control.up(state)
    assert cfg2.root_token == cfg.root_token and cfg2.blob_signing_key == cfg.blob_signing_key

    api2 = admin_client(cfg2)
    assert api2.users().current().execute()["uuid"] == user  # the same token still works
    record = api2.collections().get(uuid=coll.manifest_locator()).execute()
    assert record["portable_data_hash"] == coll.portable_data_hash() and record["name"] == "before restart"
    reader = arvados.collection.CollectionReader(coll.manifest_locator(), api_client=api2)
    assert reader.open("kept/data.bin", "rb").read() == data
    assert reader.open("note.txt", "r").read() == "survives restarts\n"

    after = container(api2, before["uuid"])
    assert (after["state"], after["exit_code"], after["output"], after["log"]) == \
        ("Complete", 0, before["output"], before["log"])
    cr2 = api2.container_requests().get(uuid=cr["uuid"]).execute()
    assert cr2["state"] == "Final" and cr2["output_uuid"] == cr["output_uuid"]
    out = arvados.collection.CollectionReader(cr2["output_uuid"], api_client=api2)
    assert out.open("result.txt", "r").read() == "finished\n"

    # The restarted cluster still runs work, and reuses the container that finished before.
    again = create_request(api2, request_body(["sh", "-c", "echo finished > result.txt"], image))
    assert again["container_uuid"] == before["uuid"]
    fresh = wait_final(api2, create_request(api2, request_body(["true"], image))["uuid"])
    assert container(api2, fresh["container_uuid"])["exit_code"] == 0
