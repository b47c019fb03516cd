"""``keep:`` URL access: pure parsing, then the Toil plugin against the session's real cluster."""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import secrets
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path
from urllib.parse import urlparse

import pytest
from server_calls import CallCounter

from toil_arvados import keep_url as ku
from toil_arvados.keep_url import (KeepCredentialsError, KeepLocation, KeepNotFoundError, KeepURLError,
                                   locate, parse_keep_url, save_outputs_collection)

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
PDH = "0123456789abcdef0123456789abcdef+12"
COLL = "zzzzz-4zz18-0123456789abcde"
PROJ = "zzzzz-j7d0g-0123456789abcde"
HOME_PROJ = "zzzzz-tpzed-0123456789abcde"
BLOCK = 64 << 20


# Pure parsing -------------------------------------------------------------------------------------

@pytest.mark.parametrize("url, expected", [
    (f"keep:{PDH}/reads.txt", (PDH, "reads.txt")),
    (f"keep:{PDH}/dir/sub/file.txt", (PDH, "dir/sub/file.txt")),
    (f"keep:{PDH}", (PDH, "")),
    (f"keep:{PDH}/", (PDH, "")),
    (f"keep:{PDH}/dir/", (PDH, "dir")),
    (f"keep:{PDH}//dir/./x", (PDH, "dir/x")),
    (f"keep:{PDH}/my%20dir/a%3Ab.txt", (PDH, "my dir/a:b.txt")),
    (f"keep:{PDH}/plain space.txt", (PDH, "plain space.txt")),
    (f"keep:{COLL}/out/x", (COLL, "out/x")),
    (f"KEEP:{PDH}/x", (PDH, "x")),
])
def test_parse_keep_url(url: str, expected: tuple[str, str]) -> None:
    assert parse_keep_url(url) == expected


@pytest.mark.parametrize("url, fragment", [
    ("s3://bucket/x", "not a keep: URL"),
    (f"keep://{PDH}/x", "without slashes"),
    ("keep:/x", "without slashes"),
    ("keep:", "missing collection"),
    ("keep:abc+12/x", "is not a portable data hash"),
    ("keep:zzzzz-dz642-0123456789abcde/x", "is not a portable data hash"),  # a container uuid
    (f"keep:{PDH}/../etc/passwd", "'..'"),
    (f"keep:{PDH}/a%2Fb", "'a/b'"),
])
def test_parse_keep_url_rejects(url: str, fragment: str) -> None:
    with pytest.raises(KeepURLError) as e:
        parse_keep_url(url)
    msg = str(e.value)
    assert fragment in msg and "\n" not in msg


def test_ref_kinds() -> None:
    assert ku.ref_kind(PDH) == "pdh"
    assert ku.ref_kind(COLL) == "collection"
    assert ku.ref_kind(PROJ) == "project"
    assert ku.ref_kind(HOME_PROJ) == "project"


def test_locate_project_form() -> None:
    assert locate(f"keep:{PROJ}/My%20results/a/b.txt") == KeepLocation(
        url=f"keep:{PROJ}/My%20results/a/b.txt", kind="project", ref=PROJ, collection_name="My results",
        path="a/b.txt")
    only_name = locate(f"keep:{PROJ}/results")
    assert (only_name.collection_name, only_name.path, only_name.is_project_root) == ("results", "", False)
    root = locate(f"keep:{PROJ}/")
    assert root.is_project_root and root.collection_name is None
    assert locate(f"keep:{PDH}/a").collection_name is None


def test_listing_entry_round_trips_through_parse() -> None:
    assert ku.listing_entry("a b:c.txt", False) == "a%20b%3Ac.txt"
    assert ku.listing_entry("sub dir", True) == "sub%20dir/"
    # Toil joins entries onto the directory URL; parsing that gives back the real name.
    assert parse_keep_url(f"keep:{PDH}/d/" + ku.listing_entry("a b:c.txt", False))[1] == "d/a b:c.txt"


def test_collection_target_path() -> None:
    assert ku.collection_target_path("/out/x.txt") == "out/x.txt"
    for bad in ("", "/", "a/../b"):
        with pytest.raises(KeepURLError):
            ku.collection_target_path(bad)


def test_missing_credentials_name_the_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import arvados.config

    for var in [v for v in os.environ if v.startswith("ARVADOS_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.config/arvados/settings.conf
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("XDG_CONFIG_DIRS", raising=False)
    arvados.config.initialize()  # the SDK's settings as a fresh process here would read them
    try:
        with pytest.raises(KeepCredentialsError) as e:
            ku.KeepURLAccess._url_exists(urlparse(f"keep:{PDH}/x"))
    finally:
        monkeypatch.undo()
        arvados.config.initialize()  # leave the SDK's cached settings as the environment says
    msg = str(e.value)
    assert "ARVADOS_API_HOST" in msg and "ARVADOS_API_TOKEN" in msg and "\n" not in msg


# Against the cluster ------------------------------------------------------------------------------

def keep_blocks(cluster) -> set[str]:
    """Block files in the cluster's Keep store (``<state>/keep/<md5[:3]>/<md5>``)."""
    root = Path(cluster.state_dir) / "keep"
    return {p.name for p in root.glob("*/*") if p.is_file() and len(p.name) == 32}


def manifest_blocks(api, uuid: str) -> set[str]:
    text = api.collections().get(uuid=uuid).execute()["manifest_text"]
    return {tok.split("+")[0] for line in text.splitlines() for tok in line.split()[1:]
            if len(tok) > 33 and tok[32] == "+"}


@pytest.fixture(scope="module")
def plugin():
    """Toil's URL lookup with this plugin registered (as discovery would); the class it resolves to."""
    import toil_url_access_keep  # noqa: F401  (registers the "keep" scheme)
    from toil.lib.url import URLAccess

    return URLAccess


@pytest.fixture(scope="module")
def sample(api) -> dict[str, str]:
    """A collection made through the SDK: a file, a directory tree, a name needing encoding.

    All four files are segments of ONE Keep block (as arv-put packs small files), so copying any
    one of them byte-for-byte would make a new block: that is what lets a block count detect copies.
    """
    import arvados.collection

    files = {"reads.txt": b"ACGT\nTTGA\nGATTACA\n", "dir/a.txt": b"alpha\n",
             "dir/sub dir/b c.txt": b"beta gamma\n", "dir/sub dir/deeper/z.txt": b"zeta\n"}
    locator = api.keep.put(b"".join(files.values()))
    streams: dict[str, list[str]] = {}
    offset = 0
    for path, data in files.items():
        stream, _, name = ("./" + path).rpartition("/")
        escaped = name.replace(" ", "\\040")
        streams.setdefault(stream.replace(" ", "\\040"), []).append(f"{offset}:{len(data)}:{escaped}")
        offset += len(data)
    manifest = "".join(f"{stream} {locator} {' '.join(segs)}\n" for stream, segs in streams.items())
    c = arvados.collection.Collection(manifest, api_client=api)
    c.save_new(name="keep_url sample")
    with c.open("dir/sub dir/b c.txt", "rb") as f:
        assert f.read() == files["dir/sub dir/b c.txt"]
    return {"pdh": c.portable_data_hash(), "uuid": c.manifest_locator(), **{k: v.decode() for k, v in files.items()}}


@pytest.fixture(scope="module")
def project(api) -> str:
    return api.groups().create(body={"name": "keep_url tests", "group_class": "project"},
                               ensure_unique_name=True).execute()["uuid"]


@pytest.mark.parametrize("form", ["pdh", "uuid"])
def test_file_queries_and_reads(plugin, sample, form: str) -> None:
    url = f"keep:{sample[form]}/reads.txt"
    data = sample["reads.txt"].encode()
    assert plugin.url_exists(url)
    assert plugin.get_size(url) == len(data)
    assert plugin.get_is_directory(url) is False
    buf = io.BytesIO()
    assert plugin.read_from_url(url, buf) == (len(data), False)
    assert buf.getvalue() == data
    with plugin.open_url(url) as stream:
        assert stream.read() == data
    with io.TextIOWrapper(plugin.open_url(url), encoding="utf-8") as text:  # as ToilFsAccess.open does
        assert text.readline() == "ACGT\n"


def test_directories(plugin, sample) -> None:
    pdh = sample["pdh"]
    assert plugin.get_is_directory(f"keep:{pdh}")
    assert plugin.get_is_directory(f"keep:{pdh}/dir/")
    assert plugin.get_is_directory(f"keep:{pdh}/dir/sub%20dir")
    assert plugin.url_exists(f"keep:{pdh}/dir")
    assert plugin.get_size(f"keep:{pdh}/dir") is None
    assert plugin.list_url(f"keep:{pdh}/") == ["dir/", "reads.txt"]
    assert plugin.list_url(f"keep:{pdh}/dir") == ["a.txt", "sub%20dir/"]
    # Toil joins the listing onto the URL; every joined URL must resolve.
    inner = plugin.list_url(f"keep:{pdh}/dir/sub%20dir/")
    assert inner == ["b%20c.txt", "deeper/"]
    assert plugin.get_size(f"keep:{pdh}/dir/sub%20dir/{inner[0]}") == len(sample["dir/sub dir/b c.txt"])
    with pytest.raises(NotADirectoryError):
        plugin.list_url(f"keep:{pdh}/reads.txt")


def test_missing_things_have_one_line_errors(plugin, sample, cluster_env) -> None:
    host, token = cluster_env["ARVADOS_API_HOST"], cluster_env["ARVADOS_API_TOKEN"]
    unknown = "0123456789abcdef0123456789abcdef+5"
    assert plugin.url_exists(f"keep:{unknown}/x") is False
    assert plugin.get_is_directory(f"keep:{unknown}/x") is False
    with pytest.raises(KeepNotFoundError) as e:
        plugin.read_from_url(f"keep:{unknown}/x", io.BytesIO())
    assert str(e.value) == f"keep:{unknown}/x: no such collection on {host}; check the hash/uuid"

    missing = f"keep:{sample['pdh']}/dir/nope.txt"
    assert plugin.url_exists(missing) is False
    errors = []
    for call in (lambda: plugin.get_size(missing), lambda: plugin.open_url(missing),
                 lambda: plugin.list_url(missing), lambda: plugin.read_from_url(missing, io.BytesIO())):
        with pytest.raises(FileNotFoundError) as e:
            call()
        errors.append(str(e.value))
    assert all("no file or directory 'dir/nope.txt'" in m for m in errors)
    with pytest.raises(IsADirectoryError):
        plugin.open_url(f"keep:{sample['pdh']}/dir")
    gone = "zzzzz-4zz18-zzzzzzzzzzzzzzz"
    with pytest.raises(KeepNotFoundError) as e:
        plugin.open_url(f"keep:{gone}/x")
    errors.append(str(e.value))
    assert all("\n" not in m and token not in m and token.split("/")[-1] not in m for m in errors)


def test_big_file_streams_in_bounded_memory(plugin, api) -> None:
    """A file spanning five Keep blocks is read in chunks while holding only about two blocks."""
    import arvados.collection

    size = 4 * BLOCK + (8 << 20)
    seed = os.urandom(1 << 20)
    want = hashlib.md5()
    c = arvados.collection.Collection(api_client=api)
    with c.open("big.bin", "wb") as f:
        for i in range(size >> 20):
            chunk = seed[i:] + seed[:i]
            want.update(chunk)
            f.write(chunk)
    c.save_new(name="keep_url big file")
    url = f"keep:{c.portable_data_hash()}/big.bin"
    assert plugin.get_size(url) == size

    class Digest:
        def __init__(self) -> None:
            self.md5, self.n = hashlib.md5(), 0

        def write(self, data) -> int:
            self.md5.update(data)
            self.n += len(data)
            return len(data)

    tracemalloc.start()
    try:
        sink = Digest()
        assert plugin.read_from_url(url, sink) == (size, False)
        _, peak_read = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        got, chunks = hashlib.md5(), 0
        with plugin.open_url(url) as stream:
            while chunk := stream.read(1 << 20):
                got.update(chunk)
                chunks += 1
        _, peak_open = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sink.md5.hexdigest() == want.hexdigest() and sink.n == size
    assert got.hexdigest() == want.hexdigest() and chunks == size >> 20
    for peak in (peak_read, peak_open):
        assert peak < 3 * BLOCK, f"peak traced memory {peak >> 20} MiB for a {size >> 20} MiB file"


def test_write_to_project_collection_creates_then_updates(plugin, api, project, cluster_env, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    from toil_arvados.keep_url import KeepURLAccess

    base = f"keep:{project}/Run%201%20outputs"
    KeepURLAccess._write_to_url(io.BytesIO(b"first\n"), urlparse(f"{base}/out/one.txt"))
    KeepURLAccess._write_to_url(io.StringIO("second\n"), urlparse(f"{base}/out/two.txt"), executable=True)
    KeepURLAccess._write_to_url(io.BytesIO(b"first, again\n"), urlparse(f"{base}/out/one.txt"))
    found = api.collections().list(filters=[["owner_uuid", "=", project], ["name", "=", "Run 1 outputs"]]).execute()
    assert found["items_available"] == 1
    uuid = found["items"][0]["uuid"]
    assert plugin.list_url(f"{base}/out") == ["one.txt", "two.txt"]
    assert plugin.open_url(f"{base}/out/one.txt").read() == b"first, again\n"
    assert plugin.open_url(f"keep:{uuid}/out/two.txt").read() == b"second\n"
    assert "Run%201%20outputs/" in plugin.list_url(f"keep:{project}")
    assert plugin.get_is_directory(f"keep:{project}/")

    # Writing into a collection by uuid updates it in place.
    KeepURLAccess._write_to_url(io.BytesIO(b"three\n"), urlparse(f"keep:{uuid}/three.txt"))
    assert sorted(plugin.list_url(f"keep:{uuid}")) == ["out/", "three.txt"]
    assert cluster_env["ARVADOS_API_TOKEN"].split("/")[-1] not in caplog.text

    # Fixed content cannot be written; the message says what to use instead.
    pdh = api.collections().get(uuid=uuid).execute()["portable_data_hash"]
    with pytest.raises(KeepURLError, match="cannot be written"):
        KeepURLAccess._write_to_url(io.BytesIO(b"x"), urlparse(f"keep:{pdh}/x.txt"))
    missing_project = "zzzzz-j7d0g-zzzzzzzzzzzzzzz"
    with pytest.raises(Exception) as e:
        KeepURLAccess._write_to_url(io.BytesIO(b"x"), urlparse(f"keep:{missing_project}/c/x.txt"))
    assert missing_project in str(e.value) and "\n" not in str(e.value)


def test_save_outputs_collection_references_keep_blocks(api, cluster, project, sample, tmp_path, caplog) -> None:
    import arvados.collection

    caplog.set_level(logging.INFO, logger="toil_arvados.keep_url")
    big = arvados.collection.Collection(api_client=api)
    with big.open("part.bin", "wb") as f:
        f.write(os.urandom((1 << 20) * 3))
    big.save_new(name="keep_url outputs source")
    before = keep_blocks(cluster)
    with CallCounter(cluster) as calls:
        uuid, pdh = save_outputs_collection(api, project, "workflow outputs", {
            "reads.txt": f"keep:{sample['pdh']}/reads.txt",
            "results/tree": f"keep:{sample['uuid']}/dir",
            "results/part.bin": f"keep:{big.portable_data_hash()}/part.bin",
        })
    assert keep_blocks(cluster) == before, "Keep sources must be referenced, not copied"
    # The collections named by hash are read with one listing, whatever their number.
    assert calls.by_endpoint == {"collections.list": 1, "collections.get": 1, "collections.create": 1}, calls.by_endpoint
    assert manifest_blocks(api, uuid) <= manifest_blocks(api, sample["uuid"]) | manifest_blocks(api, big.manifest_locator())
    assert uuid in caplog.text and pdh in caplog.text

    out = arvados.collection.CollectionReader(uuid, api_client=api)
    assert out.portable_data_hash() == pdh
    with out.open("results/tree/sub dir/b c.txt", "rb") as f:
        assert f.read().decode() == sample["dir/sub dir/b c.txt"]
    with out.open("reads.txt", "rb") as f:
        assert f.read().decode() == sample["reads.txt"]

    # A local source does write a block: the count above would notice a copy.
    local = tmp_path / "local.txt"
    local.write_bytes(os.urandom(4096))
    uuid2, _ = save_outputs_collection(api, project, "workflow outputs", {"local.txt": str(local),
                                                                          "reads.txt": f"keep:{sample['pdh']}/reads.txt"})
    assert len(keep_blocks(cluster) - before) == 1
    assert uuid2 != uuid  # a new collection each time (the API makes the name unique)
    with pytest.raises(KeepNotFoundError, match="no file or directory 'nope'"):
        save_outputs_collection(api, project, "bad", {"x": f"keep:{sample['pdh']}/nope"})


@pytest.fixture(scope="module")
def second_user(api, cluster_env):
    """A non-admin user (Keep signatures are checked for them) with its own SDK client and token."""
    import arvados

    tag = secrets.token_hex(4)
    user = api.users().create(body={"user": {
        "first_name": "Keep", "last_name": tag, "email": f"keep-{tag}@localhost",
        "username": f"keep{tag}", "is_active": True}}).execute()
    token = api.api_client_authorizations().create(body={"api_client_authorization": {
        "owner_uuid": user["uuid"]}}).execute()["api_token"]
    client = arvados.api("v1", host=cluster_env["ARVADOS_API_HOST"], token=token, insecure=True, num_retries=2)
    return user["uuid"], token, client


def test_non_admin_user(plugin, sample, second_user, cluster, monkeypatch) -> None:
    """Permissions hold (no shared caches across tokens) and references carry valid signatures."""
    import arvados.collection

    user_uuid, token, other = second_user
    own = arvados.collection.Collection(api_client=other)
    with own.open("mine.txt", "wb") as f:
        f.write(b"my data\n")
    own.save_new(name="own data", owner_uuid=user_uuid)
    mine = f"keep:{own.portable_data_hash()}/mine.txt"

    assert plugin.url_exists(f"keep:{sample['pdh']}/reads.txt")  # as admin: now in the reader cache
    monkeypatch.setenv("ARVADOS_API_TOKEN", token)  # the plugin honours a changed environment
    try:
        assert plugin.url_exists(mine)
        assert plugin.open_url(mine).read() == b"my data\n"
        assert plugin.url_exists(f"keep:{sample['pdh']}/reads.txt") is False
        with pytest.raises(KeepNotFoundError, match="no such collection"):
            plugin.open_url(f"keep:{sample['uuid']}/reads.txt")
        ku.KeepURLAccess._write_to_url(io.BytesIO(b"out\n"), urlparse(f"keep:{user_uuid}/exported/out.txt"))
        assert plugin.open_url(f"keep:{user_uuid}/exported/out.txt").read() == b"out\n"
    finally:
        monkeypatch.undo()

    before = keep_blocks(cluster)
    uuid, _ = save_outputs_collection(other, user_uuid, "my outputs", {"copy.txt": mine})
    assert keep_blocks(cluster) == before
    assert other.collections().get(uuid=uuid).execute()["owner_uuid"] == user_uuid
    with pytest.raises(KeepNotFoundError, match="no such collection"):
        save_outputs_collection(other, user_uuid, "not mine", {"r.txt": f"keep:{sample['pdh']}/reads.txt"})


def _toil_env(extra_pythonpath: bool) -> dict[str, str]:
    """The test's environment (it holds the cluster's ARVADOS_* settings) for a Toil subprocess."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"  # _toil_worker for single_machine
    env.pop("PYTHONPATH", None)
    if extra_pythonpath:
        # The repo root on sys.path, as site-packages is for a regular (non-editable) install.
        env["PYTHONPATH"] = str(REPO)
    return env


_DISCOVERY_PROBE = textwrap.dedent("""
    from urllib.parse import urlparse
    from toil.lib.url import URLAccess
    impl = URLAccess._find_url_implementation(urlparse("keep:%s/x"))
    print(impl.__module__ + "." + impl.__name__)
""") % PDH


def test_toil_finds_plugin_by_scheme(tmp_path) -> None:
    """A fresh interpreter resolves "keep:" through Toil's plugin discovery alone (no import by us)."""
    p = subprocess.run([sys.executable, "-c", _DISCOVERY_PROBE], env=_toil_env(True), cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip() == "toil_arvados.keep_url.KeepURLAccess"


def test_installed_package_is_discoverable(tmp_path) -> None:
    """As installed in the venv (no PYTHONPATH, neutral cwd) Toil must find ``toil_url_access_keep``.

    Toil discovers plugins with ``pkgutil.iter_modules()``, which only sees sys.path entries. A
    setuptools editable install in its default mode serves top-level modules through an import hook
    instead, so they are importable but not discoverable; install with
    ``pip install -e . --config-settings editable_mode=compat`` (or a regular install) to fix it.
    """
    p = subprocess.run([sys.executable, "-c", _DISCOVERY_PROBE], env=_toil_env(False), cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, (p.stderr.strip().splitlines() or ["?"])[-1]
    assert p.stdout.strip() == "toil_arvados.keep_url.KeepURLAccess"


CWL_TOOL = """\
cwlVersion: v1.2
class: CommandLineTool
requirements:
  InlineJavascriptRequirement: {}
baseCommand: [sh, -c]
arguments:
  - 'wc -c < "$0"; cat "$1/a.txt" "$1/sub dir/b c.txt"'
  - $(inputs.reads.path)
  - $(inputs.tree.path)
inputs:
  reads: File
  tree: Directory
stdout: report.txt
outputs:
  report:
    type: File
    outputBinding: {glob: report.txt}
"""


def test_toil_cwl_runner_stages_keep_inputs(sample, cluster_env, tmp_path) -> None:
    """toil-cwl-runner with a keep: File and a keep: Directory input (single_machine, file job store)."""
    tool = tmp_path / "tool.cwl"
    tool.write_text(CWL_TOOL)
    job = tmp_path / "job.json"
    job.write_text(json.dumps({
        "reads": {"class": "File", "location": f"keep:{sample['pdh']}/reads.txt"},
        "tree": {"class": "Directory", "location": f"keep:{sample['pdh']}/dir/"},
    }))
    out = tmp_path / "out"
    p = subprocess.run([str(VENV_BIN / "toil-cwl-runner"), "--jobStore", f"file:{tmp_path / 'js'}",
                        "--outdir", str(out), "--no-container", "--logLevel", "INFO", str(tool), str(job)],
                       env=_toil_env(True), cwd=tmp_path, capture_output=True, text=True, timeout=500)
    assert p.returncode == 0, p.stderr[-4000:]
    assert f"Importing input keep:{sample['pdh']}/reads.txt" in p.stderr
    result = json.loads(p.stdout)
    report = Path(result["report"]["path"]).read_text()
    assert report == (f"{len(sample['reads.txt'])}\n" + sample["dir/a.txt"] + sample["dir/sub dir/b c.txt"])


def test_toil_cwl_runner_exports_outputs_to_keep(plugin, api, sample, project, tmp_path) -> None:
    """``--destBucket keep:<project>/<name>`` saves the outputs into that collection through the plugin."""
    tool = tmp_path / "tool.cwl"
    tool.write_text(CWL_TOOL)
    job = tmp_path / "job.json"
    job.write_text(json.dumps({
        "reads": {"class": "File", "location": f"keep:{sample['pdh']}/reads.txt"},
        "tree": {"class": "Directory", "location": f"keep:{sample['pdh']}/dir"},
    }))
    dest = f"keep:{project}/cwl%20outputs"
    p = subprocess.run([str(VENV_BIN / "toil-cwl-runner"), "--jobStore", f"file:{tmp_path / 'js'}",
                        "--destBucket", dest, "--no-container", "--logLevel", "INFO", str(tool), str(job)],
                       env=_toil_env(True), cwd=tmp_path, capture_output=True, text=True, timeout=500)
    assert p.returncode == 0, p.stderr[-4000:]
    location = json.loads(p.stdout)["report"]["location"]
    assert location == f"{dest}/report.txt"
    found = api.collections().list(filters=[["owner_uuid", "=", project], ["name", "=", "cwl outputs"]]).execute()
    assert found["items_available"] == 1
    with plugin.open_url(location) as f:
        report = f.read().decode()
    assert report.startswith(f"{len(sample['reads.txt'])}\n") and report.endswith(sample["dir/sub dir/b c.txt"])
