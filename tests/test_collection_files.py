"""Directory <-> collection round trips, checked against the SDK's view."""

import hashlib
import os
import threading
from pathlib import Path

import arvados
import arvados.collection
import pytest

from toil_arvados.localcluster import manifest as mf
from toil_arvados.localcluster.blockstore import BLOCK_SIZE, BlockStore
from toil_arvados.localcluster.collection_files import materialize, upload_directory


def tree_digest(root: Path) -> dict[str, object]:
    """{relative path: md5 of file | 'dir'} following symlinks."""
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        rel = os.path.relpath(dirpath, root)
        if rel != ".":
            out[rel] = "dir"
        for name in filenames:
            p = os.path.join(dirpath, name)
            if not os.path.exists(p):  # dangling symlink
                continue
            h = hashlib.md5()
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            out[os.path.normpath(os.path.join(rel, name))] = h.hexdigest()
    return out


def sdk_keep(store: BlockStore, tmp_path: Path):
    """A KeepClient in local-store mode reading our block files (flat layout)."""
    flat = tmp_path / "flat"
    flat.mkdir(exist_ok=True)
    for sub in store.root.iterdir():
        for blk in sub.iterdir():
            if not (flat / blk.name).exists():
                os.symlink(blk, flat / blk.name)
    return arvados.KeepClient(local_store=str(flat), api_token="unused")


@pytest.fixture
def src(tmp_path):
    root = tmp_path / "src"
    (root / "sub dir" / "deeper").mkdir(parents=True)
    (root / "empty_dir" / "nested_empty").mkdir(parents=True)
    (root / "small.txt").write_bytes(b"hello\n")
    (root / "empty_file").write_bytes(b"")
    (root / "sub dir" / "unicodé ✓.txt").write_text("unicode content\n")
    (root / "sub dir" / "deeper" / "colon:name").write_bytes(os.urandom(1000))
    big = os.urandom(1 << 20) * 70  # 70 MiB: spans two blocks
    (root / "big.bin").write_bytes(big)
    (root / "link_to_small").symlink_to("small.txt")
    (root / "link_to_dir").symlink_to("sub dir")
    (root / "dangling").symlink_to("nowhere")
    return root


def test_round_trip(src, tmp_path):
    store = BlockStore(tmp_path / "keep")
    text = upload_directory(src, store)
    assert mf.normalize(text) == text
    assert "+A" not in text
    tree = mf.parse(text)
    assert "empty_dir/nested_empty" in tree.dirs
    assert tree.files["empty_file"] == []
    assert "dangling" not in tree.files
    # big file spans blocks; no block exceeds 64 MiB
    assert len({s.locator for s in tree.files["big.bin"]}) >= 2
    for loc in mf.locators(text):
        assert mf.locator_size(loc) <= BLOCK_SIZE
        assert store.size(loc[:32]) == mf.locator_size(loc)
    # small files share a block
    assert tree.files["small.txt"][0].locator == tree.files["link_to_small"][0].locator
    assert len(mf.locators(text)) <= 3

    dest = tmp_path / "dest"
    materialize(text, store, dest)
    want = tree_digest(src)
    assert "dangling" not in want and "link_to_dir/deeper/colon:name" in want
    assert tree_digest(dest) == want
    assert not any(p.is_symlink() for p in dest.rglob("*"))


def test_sdk_agrees_on_pdh_and_content(src, tmp_path):
    store = BlockStore(tmp_path / "keep")
    text = upload_directory(src, store)
    coll = arvados.collection.Collection(text, keep_client=sdk_keep(store, tmp_path),
                                         replication_desired=1)
    assert coll.portable_data_hash() == mf.portable_data_hash(text)
    with coll.open("sub dir/unicodé ✓.txt", "rb") as f:
        assert f.read() == b"unicode content\n"
    with coll.open("big.bin", "rb") as f:
        assert hashlib.md5(f.read()).hexdigest() == \
            hashlib.md5((src / "big.bin").read_bytes()).hexdigest()
    assert coll.exists("empty_dir/nested_empty")


def test_pdh_equals_sdk_written_collection(tmp_path):
    """Same files written with the SDK (in manifest order) give the same PDH.

    Files are closed with flush=False, as arv-put does, so the SDK packs the
    small files into one block the same way upload_directory does.
    """
    root = tmp_path / "src"
    (root / "a" / "b").mkdir(parents=True)
    (root / "e").mkdir()
    files = {"x.txt": b"x" * 10, "a/one": b"1" * 1000, "a/two words": b"", "a/b/c": b"c" * 77}
    for rel, data in files.items():
        (root / rel).write_bytes(data)
    store = BlockStore(tmp_path / "keep")
    text = upload_directory(root, store)

    kc = arvados.KeepClient(local_store=str(tmp_path / "sdkstore"), api_token="unused")
    (tmp_path / "sdkstore").mkdir()
    coll = arvados.collection.Collection(keep_client=kc, replication_desired=1)
    for rel in ["x.txt", "a/one", "a/two words", "a/b/c"]:  # manifest order
        f = coll.open(rel, "wb")
        f.write(files[rel])
        f.close(flush=False)
    coll.mkdirs("e")
    # manifest_text() commits (packs) pending blocks, as save() would;
    # portable_data_hash() alone would hash the not-yet-packed buffers.
    assert text == coll.manifest_text()
    assert mf.portable_data_hash(text) == coll.portable_data_hash()


def test_materialize_rejects_escaping_paths(tmp_path):
    store = BlockStore(tmp_path / "keep")
    md5 = store.put(b"evil")
    with pytest.raises(mf.ManifestError):
        materialize(f". {md5}+4 0:4:../evil\n", store, tmp_path / "dest")
    assert not (tmp_path / "evil").exists()


def test_upload_empty_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    assert upload_directory(tmp_path / "empty", BlockStore(tmp_path / "keep")) == ""


def test_blockstore_basics(tmp_path):
    store = BlockStore(tmp_path / "keep")
    md5 = store.put(b"abcdef")
    assert md5 == hashlib.md5(b"abcdef").hexdigest()
    assert store.put(b"abcdef") == md5  # idempotent
    assert store.path(md5) == tmp_path / "keep" / md5[:3] / md5
    assert store.exists(md5) and store.size(md5) == 6
    assert store.get(md5) == b"abcdef"
    assert store.read_segment(md5, 2, 3) == b"cde"
    assert not store.exists("0" * 32)
    assert not list(store.path(md5).parent.glob(".*"))  # no temp files left
    with pytest.raises(ValueError):
        store.put(b"x", expected_md5="0" * 32)
    with pytest.raises(ValueError):
        store.path("../../etc/passwd")


def test_the_upload_buffer_grows_with_the_bytes_and_blocks_stay_the_same(tmp_path: Path):
    """A small buffer (sized to the files as listed) that then has to grow, e.g. because a file
    grew after it was listed, packs exactly the blocks a full-size buffer packs."""
    from toil_arvados.localcluster import collection_files as cf

    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(os.urandom(100_000))
    (src / "b").write_bytes(os.urandom(300_000))
    store = BlockStore(tmp_path / "keep")
    packed = []
    for hint in (1, cf.BLOCK_SIZE):
        packer = cf._BlockPacker(store, size_hint=hint)
        for name in ("a", "b"):
            packer.add_file(name, src / name)
        packer.flush()
        packed.append(packer.files)
    assert packed[0] == packed[1] and len({seg.locator for segs in packed[0].values() for seg in segs}) == 1


def test_containers_starting_together_share_one_copy_of_a_collection(tmp_path, monkeypatch):
    """Two containers that start at once with the same image (hundreds of MB) wait for one
    materialized copy instead of each making its own; a failed copy is tried again later."""
    from types import SimpleNamespace

    from toil_arvados.localcluster import collection_files, dispatcher as dispatcher_module
    from toil_arvados.localcluster.collections import store_manifest
    from toil_arvados.localcluster.containers import Lifecycle
    from toil_arvados.localcluster.store import Store

    store = Store(tmp_path / "db.sqlite3", "local", "local-tpzed-000000000000000")
    blocks = BlockStore(tmp_path / "keep")
    src = tmp_path / "src"
    src.mkdir()
    (src / "layer.tar").write_bytes(b"x" * 4096)
    pdh = store_manifest(store, upload_directory(src, blocks), name="image", owner_uuid=store.system_user_uuid)["portable_data_hash"]
    cfg = SimpleNamespace(state_dir=str(tmp_path / "state"), container_count_max=3, cores=0, ram=0)
    d = dispatcher_module.Dispatcher(store, Lifecycle(store, cfg), cfg, blockstore=blocks, runtime=None, api_env={})
    copies, first_started, release = [], threading.Event(), threading.Event()
    real = collection_files.materialize

    def slow_materialize(manifest, blockstore, dest):
        copies.append(dest)
        first_started.set()
        assert release.wait(10)
        real(manifest, blockstore, dest)

    monkeypatch.setattr(collection_files, "materialize", slow_materialize)
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(d._materialized(pdh))) for _ in range(2)]
    threads[0].start()
    assert first_started.wait(10)
    threads[1].start()
    threads[1].join(0.3)  # without the lock it would be copying by now too
    assert len(copies) == 1
    release.set()
    for t in threads:
        t.join(10)
    assert len(copies) == 1 and len(results) == 2 and results[0] == results[1]
    assert (results[0] / "layer.tar").read_bytes() == b"x" * 4096
    assert d._copying == {}  # nothing is kept per collection once its copy exists

    def failing(manifest, blockstore, dest):
        copies.append(dest)
        raise OSError("disk full")

    monkeypatch.setattr(collection_files, "materialize", failing)
    other = store_manifest(store, ". 37b51d194a7513e45b56f6524f2d51f2+3 0:3:b\n", name="other", owner_uuid=store.system_user_uuid)["portable_data_hash"]
    blocks.put(b"bar")
    for _ in range(2):
        with pytest.raises(OSError, match="disk full"):
            d._materialized(other)
    assert len(copies) == 3  # each call tried again: a failure is not cached
    store.close()
