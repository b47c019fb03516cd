"""Keep through the real SDK: collections spanning blocks, portable data hashes, signed locators.

The writer and the reader are different SDK clients, so a read back is served by Keep, not by
the writer's block cache.
"""
from __future__ import annotations

import hashlib
import os
import time

import arvados
import arvados.collection
import arvados.errors
import arvados.keep
import pytest

from toil_arvados.localcluster import signing
from toil_arvados.localcluster.config import ClusterConfig

BLOCK = 64 << 20


def _fresh_api(env: dict[str, str]):
    return arvados.api("v1", host=env["ARVADOS_API_HOST"], token=env["ARVADOS_API_TOKEN"], insecure=True,
                       num_retries=0)


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    return {
        "hello.txt": b"hello keep\n",
        "sub/medium.bin": os.urandom(3 << 20),
        "sub/deeper/big.bin": os.urandom(70 << 20),  # more than one 64 MiB block
    }


@pytest.fixture(scope="module")
def saved(api, files: dict[str, bytes]) -> arvados.collection.Collection:
    owner = api.groups().create(body={"group": {"name": "keep tests", "group_class": "project"}},
                                ensure_unique_name=True).execute()["uuid"]
    coll = arvados.collection.Collection(api_client=api)
    for name, data in files.items():
        with coll.open(name, "wb") as f:
            f.write(data)
    coll.save_new(name="three files", owner_uuid=owner)
    return coll


def _locators(manifest_text: str) -> list[str]:
    return [tok for line in manifest_text.splitlines() for tok in line.split()[1:]
            if len(tok) > 33 and tok[32] == "+" and all(c in "0123456789abcdef" for c in tok[:32])]


def test_files_round_trip_through_a_fresh_reader(cluster_env, saved, files: dict[str, bytes]) -> None:
    reader = arvados.collection.CollectionReader(saved.manifest_locator(), api_client=_fresh_api(cluster_env))
    assert sorted(reader.keys()) == ["hello.txt", "sub"]
    for name, data in files.items():
        with reader.open(name, "rb") as f:
            got = f.read()
        assert len(got) == len(data) and hashlib.md5(got).digest() == hashlib.md5(data).digest(), name

    record = _fresh_api(cluster_env).collections().get(uuid=saved.manifest_locator()).execute()
    assert record["file_count"] == 3
    assert record["file_size_total"] == sum(len(d) for d in files.values())
    sizes = [int(loc.split("+")[1]) for loc in _locators(record["manifest_text"])]
    assert len(sizes) >= 2 and max(sizes) == BLOCK and sum(sizes) == record["file_size_total"]


def test_portable_data_hash_matches_the_sdk(api, saved) -> None:
    record = api.collections().get(uuid=saved.manifest_locator()).execute()
    stripped = saved.manifest_text(strip=True)
    by_hand = f"{hashlib.md5(stripped.encode()).hexdigest()}+{len(stripped.encode())}"
    assert record["portable_data_hash"] == saved.portable_data_hash() == by_hand
    # The SDK parsing the server's (signed) manifest gets the same hash and the same stripped text.
    parsed = arvados.collection.Collection(record["manifest_text"], api_client=api)
    assert parsed.portable_data_hash() == record["portable_data_hash"]
    assert parsed.manifest_text(strip=True) == stripped == record["unsigned_manifest_text"]
    # And the collection is found by its hash.
    assert api.collections().get(uuid=record["portable_data_hash"]).execute()["portable_data_hash"] == by_hand
    by_pdh = arvados.collection.CollectionReader(record["portable_data_hash"], api_client=api)
    assert by_pdh.open("hello.txt", "rb").read() == b"hello keep\n"


def _refused(env: dict[str, str], locator: str) -> arvados.errors.NotFoundError:
    """A GET of ``locator`` by a new KeepClient (no cache) fails, with 403 from the keepstore."""
    kc = arvados.keep.KeepClient(api_client=_fresh_api(env), num_retries=0)
    with pytest.raises(arvados.errors.NotFoundError) as info:
        kc.get(locator)
    statuses = [getattr(e, "status_code", None) for e in info.value.request_errors().values()]
    assert statuses and all(s == 403 for s in statuses), info.value
    return info.value


def test_block_get_needs_a_valid_unexpired_signature(cluster: ClusterConfig, cluster_env, api, saved) -> None:
    record = api.collections().get(uuid=saved.manifest_locator()).execute()
    signed = min(_locators(record["manifest_text"]), key=lambda loc: int(loc.split("+")[1]))
    base = signed.split("+A")[0]
    token = cluster_env["ARVADOS_API_TOKEN"]
    kc = arvados.keep.KeepClient(api_client=_fresh_api(cluster_env), num_retries=0)
    block = kc.get(signed)
    assert hashlib.md5(block).hexdigest() == base[:32] and len(block) == int(base.split("+")[1])

    # Signed by us with the cluster's key: accepted, so the refusals below are about the signature.
    resigned = signing.sign_locator(base, token, cluster.blob_signing_key, cluster.blob_signature_ttl)
    assert arvados.keep.KeepClient(api_client=_fresh_api(cluster_env), num_retries=0).get(resigned) == block

    sig, expiry = signed.split("+A")[1].split("@")
    tampered = f"{base}+A{'0' if sig[0] != '0' else '1'}{sig[1:]}@{expiry}"
    _refused(cluster_env, tampered)
    later = f"{base}+A{sig}@{int(expiry, 16) + 1:08x}"  # a valid signature with a moved expiry
    _refused(cluster_env, later)

    expired = signing.sign_locator(base, token, cluster.blob_signing_key, cluster.blob_signature_ttl,
                                   now=time.time() - cluster.blob_signature_ttl - 3600)
    assert signing.signature_expiry(expired) < time.time()
    _refused(cluster_env, expired)
    _refused(cluster_env, base)  # unsigned
    other_key = signing.sign_locator(base, token, "not-the-cluster-key", cluster.blob_signature_ttl)
    _refused(cluster_env, other_key)
