"""Manifest parsing/normalization checked against the real Python SDK."""

import hashlib

import arvados
import arvados.collection
import pytest

from toil_arvados.localcluster import manifest as mf

EMPTY = "d41d8cd98f00b204e9800998ecf8427e+0"
B33 = "930625b054ce894ac40596c3f5a0d947+33"
BIG = "c449ed86671e4a34a8b8b9430850beba+67108864"
SIG = "+A" + "a" * 40 + "@5835c8bc"

CASES = [
    "",
    f". {B33} 0:0:a 0:0:b 0:33:output.txt\n./c {EMPTY} 0:0:d\n",
    f". {BIG} 09fcfea01c3a141b89dd0dcfa1b7768e+22534144 0:89643008:Docker\\040image.tar\n",
    # unsorted streams/files, signatures, split + concatenated file tokens,
    # escaped ':' and space, empty dirs next to "a-b" vs "a/b" ordering
    f"./z {B33}{SIG} 0:10:x\\040y 10:23:x\\040y\n. {B33} 5:3:b 0:0:aa\n"
    f"./a-b {EMPTY} 0:0:\\056\n./a/b {EMPTY} 0:0:\\056\n"
    f"./a {B33} {BIG} 20:67108870:big 0:5:sub/f\\072x 3:0:e\n",
    # the same block twice in a stream, unused block, non-contiguous segments
    f". {B33} 09fcfea01c3a141b89dd0dcfa1b7768e+22534144 {B33} 0:10:f 22534177:5:f 10:5:f 0:0:\\056\n",
    # unicode names, raw (normal) and as octal-escaped UTF-8 bytes, which the
    # SDK decodes per byte -- including U+00A0, which is not a separator
    f"./d\u00e9j\u00e0\\040vu {B33} 0:33:\u00e9t\u00e9.txt\n",
    f"./d\\303\\251j\\303\\240 {B33} 0:33:\u00e9t\u00e9.txt\n",
]


@pytest.fixture
def sdk_collection(tmp_path):
    kc = arvados.KeepClient(local_store=str(tmp_path), api_token="unused")

    def make(text=None):
        return arvados.collection.Collection(text, keep_client=kc, replication_desired=1)
    return make


@pytest.mark.parametrize("text", CASES)
def test_normalize_matches_sdk(text, sdk_collection):
    coll = sdk_collection(text)
    assert mf.normalize(text) == coll.manifest_text(normalize=True)
    assert mf.portable_manifest_text(mf.normalize(text)) == coll.portable_manifest_text()
    assert mf.portable_data_hash(mf.normalize(text)) == coll.portable_data_hash()


def test_normalize_is_idempotent():
    for text in CASES:
        once = mf.normalize(text)
        assert mf.normalize(once) == once


def test_sdk_written_collection(sdk_collection):
    coll = sdk_collection()
    with coll.open("foo/bar baz.txt", "wb") as f:
        f.write(b"hello")
    with coll.open("empty", "wb"):
        pass
    coll.mkdirs("e/d")
    text = coll.manifest_text()
    assert mf.normalize(text) == text
    assert mf.portable_data_hash(text) == coll.portable_data_hash()


def test_pdh_is_server_style_not_normalized():
    text = f". {B33}{SIG}+K@zzzzz 0:33:b 0:0:a\n"
    stripped = f". {B33} 0:33:b 0:0:a\n"
    assert mf.portable_manifest_text(text) == stripped
    want = hashlib.md5(stripped.encode()).hexdigest() + f"+{len(stripped)}"
    assert mf.portable_data_hash(text) == want
    assert mf.portable_data_hash("") == "d41d8cd98f00b204e9800998ecf8427e+0"


def test_strip_signatures_keeps_other_hints():
    text = f". {B33}{SIG}+K@zzzzz 0:33:b\n"
    assert mf.strip_signatures(text) == f". {B33}+K@zzzzz 0:33:b\n"


def test_sign_manifest_replaces_old_signatures():
    text = f". {B33}{SIG} {BIG} 0:1:a\n./s {B33} 0:0:b\n"
    signed = mf.sign_manifest(text, lambda loc: loc + "+Anew@1")
    assert signed == f". {B33}+Anew@1 {BIG}+Anew@1 0:1:a\n./s {B33}+Anew@1 0:0:b\n"


def test_locators_and_sizes():
    text = f". {B33}{SIG} {BIG} 0:67108897:a\n./s {B33} 0:0:b 0:33:c\n"
    assert mf.locators(text) == [B33 + SIG, BIG, B33]
    assert mf.block_digests(text) == [B33[:32], BIG[:32]]
    assert mf.file_stats(text) == (3, 67108897 + 33)
    assert mf.total_size(text) == 67108930


def test_parse_segments_and_names():
    tree = mf.parse(f"./a\\040b {B33} {BIG} 30:10:f\\040g 0:0:\\056\n")
    assert tree.files == {"a b/f g": [mf.Segment(B33, 30, 3), mf.Segment(BIG, 0, 7)]}
    assert tree.dirs == {"", "a b"}


@pytest.mark.parametrize("bad", [
    ". 0:0:a\n",                       # no locator
    f". {B33}\n",                      # no files
    f". {B33} 0:34:a\n",               # beyond stream
    f". {B33} 0:1:../x\n",             # escapes the root
    f"./a/../b {B33} 0:1:x\n",
    f"x {B33} 0:1:x\n",                # stream must start with .
    f". {B33} 0:1:a\n./a {B33} 0:1:b\n",   # file vs dir clash
    f". {B33} 0:1:a",                  # no trailing newline
    f". {B33} nonsense\n",
])
def test_invalid_manifests(bad):
    with pytest.raises(mf.ManifestError):
        mf.parse(bad)


def test_escape_roundtrip():
    name = "a b:c\\d\te\u00e9"
    assert mf.unescape(mf.escape(name)) == name
    assert mf.escape("a b") == "a\\040b"
