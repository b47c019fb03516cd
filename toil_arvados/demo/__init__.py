"""``toil-arvados demo``: the README's first command, end to end on the embedded local cluster.

It starts the local cluster (or finds it running), makes sure the Toil worker image is in its
Keep (building it from Debian packages the first time), uploads the demo's header file, runs the
three-step scatter workflow with ``toil-cwl-runner --batchSystem arvados`` and a Keep job store,
saves the outputs as a collection in a "toil-arvados demo" project, and prints where to look.
The cluster stays up afterwards so the requests, logs and collections can be inspected with the
SDK's tools (``arv-ls``, ``arv-get``); ``toil-arvados cluster down`` stops it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT_NAME = "toil-arvados demo"


def _project(api) -> str:
    me = api.users().current().execute()["uuid"]
    found = api.groups().list(filters=[["owner_uuid", "=", me], ["name", "=", PROJECT_NAME],
                                       ["group_class", "=", "project"]]).execute()["items"]
    if found:
        return found[0]["uuid"]
    return api.groups().create(body={"group": {"name": PROJECT_NAME, "group_class": "project",
                                               "owner_uuid": me}}).execute()["uuid"]


def _upload_header(api, project: str) -> str:
    import arvados.collection

    coll = arvados.collection.Collection(api_client=api)
    with coll.open("header.txt", "wb") as f:
        f.write((HERE / "header.txt").read_bytes())
    coll.save_new(name="toil-arvados demo inputs", owner_uuid=project, ensure_unique_name=True)
    return f"keep:{coll.portable_data_hash()}/header.txt"


def _ensure_worker_image(api) -> None:
    """The Toil worker image in the cluster's Keep: built from Debian packages the first time
    (a few minutes, then cached under ~/.cache/toil-arvados), stored as arv-keepdocker would."""
    from ..images.worker import store_worker_image

    print("building (or finding in the cache) the Toil worker image ...", flush=True)
    built, pdh = store_worker_image(api)
    print(f"worker image {built.name} in Keep as {pdh}", flush=True)


def _count(resource, filters: list) -> int:
    return int(resource.list(filters=filters, limit=0, count="exact").execute()["items_available"])


def run_demo(state_dir: Path) -> int:
    from ..localcluster import control

    print(f"starting the local cluster in {state_dir} ...", flush=True)
    cfg = control.up(state_dir)
    env = dict(os.environ, **control.client_env(cfg))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    os.environ.update(control.client_env(cfg))
    import arvados

    api = arvados.api("v1", host=cfg.api_host, token=cfg.root_token, num_retries=3)  # verified: SSL_CERT_FILE
    _ensure_worker_image(api)
    project = _project(api)
    header = _upload_header(api, project)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    with tempfile.TemporaryDirectory(prefix="toil-arvados-demo-") as tmp:
        inputs = Path(tmp) / "inputs.json"
        words = _words()
        inputs.write_text(json.dumps({"words": words, "header": {"class": "File", "location": header}}))
        outdir = Path(tmp) / "out"
        output_collection = f"keep:{project}/demo output {stamp}"
        cmd = [str(Path(sys.executable).parent / "toil-cwl-runner"),
               "--batchSystem", "arvados", "--arvadosProject", project,
               "--jobStore", f"arvados:{project}/demo-jobstore-{stamp}",
               "--no-prepull", "--outdir", str(outdir),
               "--destBucket", output_collection.replace(" ", "%20"),
               "--logInfo", str(HERE / "workflow.cwl"), str(inputs)]
        print(f"running: toil-cwl-runner --batchSystem arvados ... workflow.cwl ({len(words)} words, "
              f"header from {header})", flush=True)
        containers_before = _count(api.containers(), [])
        t0 = time.monotonic()
        proc = subprocess.run(cmd, env=env, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wall = time.monotonic() - t0
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-4000:])
            print(f"toil-arvados: the demo workflow failed (exit {proc.returncode}); the log is above", file=sys.stderr)
            return 1
        report = json.loads(proc.stdout)["report"]
    new_containers = _count(api.containers(), []) - containers_before
    runs = api.container_requests().list(filters=[["owner_uuid", "=", project], ["properties.type", "=", "workflow"]],
                                         order=["created_at desc"], limit=1).execute()["items"]
    run_id = runs[0]["properties"].get("toil_workflow_id") if runs else None
    steps = _count(api.container_requests(), [["owner_uuid", "=", project], ["properties.toil_workflow_id", "=",
                                                                             run_id or "-"],
                                              ["properties.toil_step", "exists", True]])
    saved = api.collections().list(filters=[["owner_uuid", "=", project],
                                            ["name", "=", f"demo output {stamp}"]]).execute()["items"]
    print(f"\nthe workflow finished in {wall:.0f}s; its report ({report['location']}):\n")
    import arvados.collection

    if saved:
        reader = arvados.collection.CollectionReader(saved[0]["uuid"], api_client=api)
        with reader.open("report.txt") as f:
            print("  " + f.read().replace("\n", "\n  ").rstrip())
        print(f"\noutput collection: {saved[0]['uuid']} (portable data hash {saved[0]['portable_data_hash']})")
    print(f"this run: {steps} container requests in project {project}, one per tool run, under "
          f"{runs[0]['uuid'] if runs else 'no'} request for the run; {new_containers} new containers, "
          f"{max(0, steps - new_containers)} steps reused from earlier runs.")
    if new_containers:
        print("run the demo again: Arvados reuses every step, so it starts no new containers.")
    print(f"look around:  eval \"$(toil-arvados cluster env --state-dir {cfg.state_dir})\"; "
          f"arv-ls {saved[0]['uuid'] if saved else project}")
    print(f"stop the cluster:  toil-arvados cluster down --state-dir {cfg.state_dir}")
    return 0


def _words() -> list[str]:
    import yaml

    return yaml.safe_load((HERE / "inputs.yml").read_text())["words"]
