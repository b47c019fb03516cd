"""The SDK's own command-line tools (arv-put, arv-ls, arv-get) against the local cluster.

They run as subprocesses with only the ARVADOS_* environment to find the cluster, the way a
user runs them after ``eval $(toil-arvados cluster env)``.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    path = BIN / name
    assert path.exists(), f"{name} not found next to {sys.executable}: install arvados-python-client"
    return str(path)


@pytest.fixture
def tool_env(cluster_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARVADOS_")}
    env.update(cluster_env)
    env["HOME"] = str(tmp_path / "home")  # the tools' caches stay out of the real home
    return env


def _run(args: list[str], env: dict[str, str]) -> str:
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{args[0]} exited {proc.returncode}: {proc.stderr[-2000:]}"
    assert env["ARVADOS_API_TOKEN"].split("/")[-1] not in proc.stderr + proc.stdout
    return proc.stdout


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every entry under root: file path -> bytes, directory path -> None."""
    out: dict[str, bytes | None] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        out[rel] = None if path.is_dir() else path.read_bytes()
    return out


def _make_source(src: Path) -> None:
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "top.txt").write_text("top level\n")
    (src / "empty.txt").write_bytes(b"")
    (src / "sub" / "data.bin").write_bytes(os.urandom(300_000))
    (src / "sub" / "deeper" / "notes.md").write_text("# notes\n" * 100)
    (src / "sub" / "deeper" / "also-empty").write_bytes(b"")
    (src / "name with spaces.txt").write_text("spaces\n")


def test_put_ls_get_round_trip(api, project: str, tool_env: dict[str, str], tmp_path: Path) -> None:
    src = tmp_path / "src"
    _make_source(src)

    out = _run([_tool("arv-put"), "--no-cache", "--no-progress", "--project-uuid", project,
                "--name", "cli round trip", f"{src}/"], tool_env)
    uuid = out.strip().splitlines()[-1]
    record = api.collections().get(uuid=uuid).execute()
    assert record["owner_uuid"] == project and record["name"] == "cli round trip"
    assert record["file_count"] == 6

    listing = _run([_tool("arv-ls"), uuid], tool_env).split("\n")
    expected = sorted(f"./{p}" for p, v in _tree(src).items() if v is not None)
    assert sorted(line for line in listing if line) == expected

    sized = _run([_tool("arv-ls"), "-s", uuid], tool_env)
    assert any(line.split(None, 1) == ["0", "./empty.txt"] for line in sized.splitlines()), sized

    dst = tmp_path / "dst"
    dst.mkdir()
    _run([_tool("arv-get"), "--no-progress", "-r", f"{uuid}/", f"{dst}/"], tool_env)
    assert _tree(dst) == _tree(src)

    # One file by path, to stdout.
    one = subprocess.run([_tool("arv-get"), f"{uuid}/sub/data.bin", "-"], env=tool_env, capture_output=True,
                         timeout=120)
    assert one.returncode == 0, one.stderr.decode()[-2000:]
    assert one.stdout == (src / "sub" / "data.bin").read_bytes()


def test_put_by_portable_data_hash_and_bad_token(api, project: str, tool_env: dict[str, str],
                                                 tmp_path: Path) -> None:
    src = tmp_path / "one.txt"
    src.write_text("single file\n")
    pdh = _run([_tool("arv-put"), "--no-cache", "--no-progress", "--portable-data-hash",
                "--project-uuid", project, str(src)], tool_env).strip().splitlines()[-1]
    assert pdh == api.collections().list(filters=[["owner_uuid", "=", project]]).execute()["items"][0][
        "portable_data_hash"]
    got = subprocess.run([_tool("arv-get"), f"{pdh}/one.txt", "-"], env=tool_env, capture_output=True,
                         timeout=120)
    assert got.returncode == 0 and got.stdout == b"single file\n", got.stderr.decode()[-2000:]

    bad_env = dict(tool_env, ARVADOS_API_TOKEN="v2/local-gj3su-000000000000000/wrongwrongwrong")
    bad = subprocess.run([_tool("arv-ls"), pdh], env=bad_env, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0
    assert "wrongwrongwrong" not in bad.stderr + bad.stdout
