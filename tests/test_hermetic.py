"""Containers on the local cluster see their image and their mounts, nothing else, within the
resources they asked for -- as on a real Arvados cluster, where a compute node offers nothing of
the machine that submitted the work."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import arvados.collection

from e2e_util import container, create_request, request_body, wait_final

REPO = Path(__file__).resolve().parent.parent


def _log(api, cr: dict, name: str) -> str:
    reader = arvados.collection.CollectionReader(cr["log_uuid"], api_client=api)
    text = reader.open(name).read() if name in reader else ""
    return re.sub(r"^\S+Z ", "", text, flags=re.M)


def _run(api, command: list[str], image: str, **over) -> tuple[dict, dict]:
    cr = wait_final(api, create_request(api, request_body(command, image, **over))["uuid"], timeout=120)
    return cr, container(api, cr["container_uuid"])


def test_host_files_state_dir_and_venv_are_invisible(api, cluster, test_image: str, tmp_path: Path) -> None:
    secret = tmp_path / "written-by-the-test.txt"
    secret.write_text("host only\n")
    paths = [str(secret), cluster.state_dir, str(Path(cluster.state_dir) / "cluster.json"), sys.prefix,
             str(REPO), str(Path.home() / ".cache" / "toil-arvados")]
    probe = "; ".join(f"if test -e '{p}'; then echo 'VISIBLE {p}'; fi" for p in paths)
    cr, c = _run(api, ["sh", "-c", f"{probe}; cat /etc/debian_version; echo done"], test_image)
    assert c["exit_code"] == 0, _log(api, cr, "stderr.txt")
    out = _log(api, cr, "stdout.txt")
    assert "VISIBLE" not in out and out.strip().endswith("done"), out
    assert "as the root filesystem" in _log(api, cr, "crunch-run.txt")


def test_leader_python_is_not_in_a_plain_image(api, test_image: str) -> None:
    cr, c = _run(api, [sys.executable, "-c", "print('leaked')"], test_image)
    assert c["exit_code"] == 127, c  # not found in the image: the leader's interpreter is not there
    assert "No such file or directory" in _log(api, cr, "stderr.txt")


def test_tmp_capacity_is_enforced(api, test_image: str) -> None:
    body = request_body(["sh", "-c", "dd if=/dev/zero of=big bs=1M count=8 2>&1; echo rc=$?"], test_image)
    body["mounts"]["/var/spool/cwl"]["capacity"] = 2 << 20
    cr = wait_final(api, create_request(api, body)["uuid"], timeout=120)
    out = _log(api, cr, "stdout.txt")
    assert "No space left on device" in out and "rc=1" in out, out
    assert "enforcing tmp capacity" in _log(api, cr, "crunch-run.txt")


def test_ram_is_enforced(api) -> None:
    from conftest import PYTHON_IMAGE

    body = request_body(["python3", "-c", "x = bytearray(600 << 20); print('allocated')"], PYTHON_IMAGE)
    body["runtime_constraints"]["ram"] = 128 << 20
    cr = wait_final(api, create_request(api, body)["uuid"], timeout=120)
    c = container(api, cr["container_uuid"])
    assert c["exit_code"] != 0 and "allocated" not in _log(api, cr, "stdout.txt")
    assert "enforcing ram" in _log(api, cr, "crunch-run.txt")
