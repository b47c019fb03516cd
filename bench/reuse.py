#!/usr/bin/env python3
"""Benchmark: Arvados container reuse across runs of the demo workflow with ``--batchSystem arvados``.

Runs ``toil_arvados/demo/workflow.cwl`` once on ``single_machine`` (baseline), then three times on
``arvados`` against a fresh local cluster: run 1 (cold), run 2 (identical inputs, fresh job store:
every step should reuse a finished container) and run 3 (a different header file: only ``merge``
depends on it, so exactly one new container). Per run it prints wall time and, counted at the
server, the run's step requests, the containers the run created and how many step requests ended
on a container that already existed before the run. Figures also go to ``bench/out/reuse.json``.

    .venv/bin/python bench/reuse.py [--words 20]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._common import list_all  # noqa: E402
from toil_arvados.localcluster import control  # noqa: E402

DEMO = REPO / "toil_arvados" / "demo"
WORKFLOW = DEMO / "workflow.cwl"
CHANGED_HEADER = "changed header: word bytes\n"


def parse_time(text: str) -> float:
    """An Arvados timestamp (UTC, up to nanoseconds) as a POSIX time."""
    whole, _, frac = text.rstrip("Z").partition(".")
    dt = datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
    return dt.timestamp() + float("0." + (frac or "0"))


def container_uuids(api) -> set[str]:
    return {c["uuid"] for c in list_all(api.containers().list, select=["uuid"])}


def request_uuids(api, project: str) -> set[str]:
    return {r["uuid"] for r in list_all(api.container_requests().list, filters=[["owner_uuid", "=", project]],
                                        select=["uuid"])}


def toil_cmd(batch_system: str, jobstore: str, outdir: Path, inputs: Path, project: str | None) -> list[str]:
    cmd = [str(Path(sys.executable).parent / "toil-cwl-runner"), "--batchSystem", batch_system,
           "--jobStore", jobstore, "--outdir", str(outdir), "--logLevel", "WARNING", str(WORKFLOW), str(inputs)]
    if batch_system == "arvados" and project:
        cmd[1:1] = ["--arvadosProject", project]
    return cmd


def run_workflow(label: str, cmd: list[str], work: Path, env: dict, outdir: Path) -> tuple[float, bytes, float]:
    """Runs one workflow; returns its wall time, its report's bytes and its start (POSIX time)."""
    shutil.rmtree(outdir, ignore_errors=True)
    started = time.time()
    t0 = time.monotonic()
    proc = subprocess.run(cmd, env=env, cwd=work, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        sys.exit(f"bench: {label} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    try:
        report = Path(json.loads(proc.stdout)["report"]["path"])
    except (ValueError, KeyError, TypeError):
        report = outdir / "report.txt"
    if not report.is_file():
        sys.exit(f"bench: {label} produced no report file (stdout: {proc.stdout[-1000:]!r})")
    return wall, report.read_bytes(), started


def arvados_run(label: str, api, project: str, inputs: Path, work: Path, env: dict) -> dict:
    """One ``--batchSystem arvados`` run, with its container and request counts taken at the server."""
    containers_before = container_uuids(api)
    count_before = api.containers().list(limit=0, count="exact").execute()["items_available"]
    requests_before = request_uuids(api, project)
    jobstore = f"arvados:{project}/reuse-{label}-{time.strftime('%Y%m%d-%H%M%S')}"
    outdir = work / f"out-{label}"
    wall, report, started = run_workflow(label, toil_cmd("arvados", jobstore, outdir, inputs, project), work, env, outdir)
    count_after = api.containers().list(limit=0, count="exact").execute()["items_available"]
    # The run's requests: those in the project that were not there before it started.
    new_requests = [r for r in list_all(api.container_requests().list, filters=[["owner_uuid", "=", project]],
                                        select=["uuid", "properties", "container_uuid", "state", "name"])
                    if r["uuid"] not in requests_before]
    workflow_ids = {(r.get("properties") or {}).get("toil_workflow_id") for r in new_requests} - {None}
    if len(workflow_ids) != 1:
        sys.exit(f"bench: {label}: expected one toil_workflow_id among the run's new requests, found {workflow_ids}")
    wf_id = workflow_ids.pop()
    steps = list_all(api.container_requests().list,
                     filters=[["owner_uuid", "=", project], ["properties", "exists", "toil_step"],
                              ["properties.toil_workflow_id", "=", wf_id]],
                     select=["uuid", "properties", "container_uuid", "state", "name", "created_at", "modified_at"])
    if not steps:
        sys.exit(f"bench: {label}: no step requests with toil_workflow_id {wf_id}")
    reused = [s for s in steps if s.get("container_uuid") in containers_before]
    created = [s for s in steps if s.get("container_uuid") and s["container_uuid"] not in containers_before]
    no_container = [s for s in steps if not s.get("container_uuid")]
    # Where the wall time goes (server timestamps; the cluster runs on this machine, same clock).
    first_step = min(parse_time(s["created_at"]) for s in steps)
    last_final = max(parse_time(s["modified_at"]) for s in steps)
    phases = {"before_first_step_s": round(first_step - started, 2),
              "first_step_to_last_final_s": round(last_final - first_step, 2),
              "after_last_final_s": round(started + wall - last_final, 2)}
    others = [r for r in new_requests if "toil_step" not in (r.get("properties") or {})]
    return {
        "run": label, "wall_s": round(wall, 2), "jobstore": jobstore, "workflow_id": wf_id,
        "step_requests": len(steps), "new_containers": count_after - count_before, "reused": len(reused),
        **phases,
        "steps_on_new_containers": sorted(s["properties"].get("toil_step") or s["name"] for s in created),
        "steps_without_container": sorted(s["name"] for s in no_container),
        "other_requests": [{"name": r["name"], "state": r["state"], "type": (r.get("properties") or {}).get("type")}
                           for r in others],
        "_report": report,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--words", type=int, default=20, help="use the first N words of the demo inputs")
    args = parser.parse_args()
    import yaml

    words = yaml.safe_load((DEMO / "inputs.yml").read_text())["words"][:args.words]
    if not words:
        sys.exit("bench: --words must be at least 1")
    results: dict = {"words": len(words), "runs": []}
    # Not under /tmp: containers get their own /tmp.
    with tempfile.TemporaryDirectory(prefix="bench-reuse-", dir=REPO / "bench") as tmp:
        work = Path(tmp)
        header2 = work / "header-changed.txt"
        header2.write_text(CHANGED_HEADER)
        if header2.read_bytes() == (DEMO / "header.txt").read_bytes():
            sys.exit("bench: the changed header must differ from the demo's")
        inputs1 = work / "inputs.json"
        inputs1.write_text(json.dumps({"words": words, "header": {"class": "File", "path": str(DEMO / "header.txt")}}))
        inputs3 = work / "inputs-changed-header.json"
        inputs3.write_text(json.dumps({"words": words, "header": {"class": "File", "path": str(header2)}}))

        with control.running_cluster(work / "cluster", cores=os.cpu_count() or 2) as cfg:
            env = dict(os.environ, **control.client_env(cfg))
            env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
            import arvados

            api = arvados.api("v1", host=cfg.api_host, token=cfg.root_token, insecure=True)
            from toil_arvados.images.worker import store_worker_image

            store_worker_image(api)  # what Toil workers and tools without an image run in
            project = api.groups().create(body={"group": {"name": "bench reuse", "group_class": "project"}},
                                          ensure_unique_name=True).execute()["uuid"]

            outdir = work / "out-single_machine"
            sm_wall, sm_report, _ = run_workflow(
                "single_machine", toil_cmd("single_machine", str(work / "js-single_machine"), outdir, inputs1, None),
                work, env, outdir)
            results["runs"].append({"run": "single_machine", "wall_s": round(sm_wall, 2)})
            print(f"  single_machine  wall {sm_wall:7.1f}s", flush=True)
            reports = {"single_machine": sm_report}
            for label, inputs in (("run1", inputs1), ("run2", inputs1), ("run3", inputs3)):
                r = arvados_run(label, api, project, inputs, work, env)
                reports[label] = r.pop("_report")
                results["runs"].append(r)
                print(f"  {label:15s} wall {r['wall_s']:7.1f}s  steps {r['step_requests']}  "
                      f"new containers {r['new_containers']}  reused {r['reused']}", flush=True)

    runs = {r["run"]: r for r in results["runs"]}
    print(f"\n{'run':15s} {'wall s':>8s} {'step requests':>14s} {'new containers':>15s} {'reused':>7s}")
    for r in results["runs"]:
        def fmt(key: str) -> str:
            return str(r[key]) if key in r else "-"
        print(f"{r['run']:15s} {r['wall_s']:8.1f} {fmt('step_requests'):>14s} {fmt('new_containers'):>15s} "
              f"{fmt('reused'):>7s}")
    results["ratio_run2_vs_run1"] = round(runs["run2"]["wall_s"] / runs["run1"]["wall_s"], 3)
    results["ratio_run1_vs_single_machine"] = round(runs["run1"]["wall_s"] / runs["single_machine"]["wall_s"], 3)
    print(f"\nwall time run2/run1 {results['ratio_run2_vs_run1']:.2f}, "
          f"run1/single_machine {results['ratio_run1_vs_single_machine']:.2f}")
    expected_steps = 2 * len(words) + 1
    for label in ("run1", "run2", "run3"):
        r = runs[label]
        print(f"  {label}: {r['before_first_step_s']:.1f}s before the first step request, "
              f"{r['first_step_to_last_final_s']:.1f}s from it to the last step's end, "
              f"{r['after_last_final_s']:.1f}s after")
        if r["steps_on_new_containers"] and label != "run1":
            print(f"  {label} steps on new containers: {', '.join(r['steps_on_new_containers'])}")
        if r["steps_without_container"]:
            print(f"  {label} step requests without a container: {', '.join(r['steps_without_container'])}")
    out_dir = REPO / "bench" / "out"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "reuse.json").write_text(json.dumps(results, indent=2))

    problems = []
    for label in ("run1", "run2"):
        if reports[label] != reports["single_machine"]:
            problems.append(f"the {label} report differs from single_machine's:\n"
                            f"  {label}: {reports[label]!r}\n  single_machine: {reports['single_machine']!r}")
    old_header = (DEMO / "header.txt").read_bytes()
    if reports["run3"] != CHANGED_HEADER.encode() + reports["single_machine"][len(old_header):]:
        problems.append(f"the run3 report is not the changed header + the run1 measurements: {reports['run3']!r}")
    for label in ("run1", "run2", "run3"):
        if runs[label]["step_requests"] != expected_steps:
            problems.append(f"{label} has {runs[label]['step_requests']} step requests, expected {expected_steps}")
    if runs["run2"]["new_containers"] != 0:
        problems.append(f"run2 created {runs['run2']['new_containers']} new containers, expected 0 (steps: "
                        f"{', '.join(runs['run2']['steps_on_new_containers']) or '?'})")
    if runs["run3"]["new_containers"] != 1:
        problems.append(f"run3 created {runs['run3']['new_containers']} new containers, expected exactly 1 (merge) "
                        f"(steps: {', '.join(runs['run3']['steps_on_new_containers']) or '?'})")
    if problems:
        sys.exit("bench: FAILED\n" + "\n".join(problems))
    print("checks passed: same report on single_machine, run1 and run2; run2 reused every container; "
          "run3 ran only merge")
    return 0


if __name__ == "__main__":
    sys.exit(main())
