#!/usr/bin/env python3
"""Benchmark: a CWL scatter of N trivial steps on ``single_machine`` and on ``arvados``, in one run.

Prints, per batch system and N: wall time, per-job overhead (wall time per step, and the marginal
cost per extra step between the two N), and for ``arvados`` the API calls per job counted at the
server (all calls, and the leader's own scheduling calls). Figures also go to
``bench/out/scatter.json``.

    .venv/bin/python bench/scatter.py [--sizes 10 100] [--jobstore keep|file]
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
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._common import stats  # noqa: E402
from toil_arvados.localcluster import control  # noqa: E402

WORKFLOW = """\
cwlVersion: v1.2
class: Workflow
requirements: {ScatterFeatureRequirement: {}}
inputs:
  n: int[]
outputs:
  out:
    type: File[]
    outputSource: step/out
steps:
  step:
    run:
      class: CommandLineTool
      baseCommand: echo
      inputs: {x: {type: int, inputBinding: {}}}
      stdout: out$(inputs.x).txt
      outputs: {out: stdout}
    scatter: x
    in: {x: n}
    out: [out]
"""


def run(batch_system: str, n: int, work: Path, env: dict, jobstore: str, project: str | None) -> float:
    wf = work / "scatter.cwl"
    wf.write_text(WORKFLOW)
    inputs = work / f"inputs-{n}.json"
    inputs.write_text(json.dumps({"n": list(range(n))}))
    out = work / f"out-{batch_system}-{n}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [str(Path(sys.executable).parent / "toil-cwl-runner"), "--no-prepull", "--batchSystem", batch_system,
           "--jobStore", jobstore, "--outdir", str(out), "--logLevel", "WARNING", str(wf), str(inputs)]
    if batch_system == "arvados" and project:
        cmd[1:1] = ["--arvadosProject", project]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, env=env, cwd=work, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        sys.exit(f"bench: {batch_system} N={n} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    produced = len(list(out.glob("out*.txt")))
    if produced != n:
        sys.exit(f"bench: {batch_system} N={n} produced {produced} outputs, expected {n}")
    return wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--jobstore", choices=["keep", "file"], default="keep",
                        help="job store for the arvados runs (single_machine always uses a file job store)")
    parser.add_argument("--batch-systems", nargs="+", choices=["single_machine", "arvados"],
                        default=["single_machine", "arvados"],
                        help="which runs to make (the marginal-cost ratio needs both)")
    args = parser.parse_args()
    results: dict = {"sizes": args.sizes, "jobstore": args.jobstore, "runs": []}
    with tempfile.TemporaryDirectory(prefix="bench-scatter-", dir=REPO / "bench") as tmp:
        work = Path(tmp)
        with control.running_cluster(work / "cluster", cores=os.cpu_count() or 2) as cfg:
            env = dict(os.environ, **control.client_env(cfg))
            env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
            import arvados

            api = arvados.api("v1", host=cfg.api_host, token=cfg.root_token, insecure=True)
            from toil_arvados.images.worker import store_worker_image

            store_worker_image(api)  # what Toil workers and tools without an image run in
            project = api.groups().create(body={"group": {"name": "bench", "group_class": "project"}},
                                          ensure_unique_name=True).execute()["uuid"]
            for n in args.sizes:
                for bs in args.batch_systems:
                    if bs == "arvados" and args.jobstore == "keep":
                        jobstore = f"arvados:{project}/bench-{n}-{int(time.time())}"
                    else:
                        jobstore = str(work / f"js-{bs}-{n}")  # not under /tmp: containers get their own /tmp
                    before = stats(cfg)
                    wall = run(bs, n, work, env, jobstore, project)
                    after = stats(cfg)
                    leader = cfg.root_token_uuid
                    total = after["calls_total"] - before["calls_total"]
                    own = after["calls_by_token"].get(leader, 0) - before["calls_by_token"].get(leader, 0)
                    by_kind = {k: after["calls_by_endpoint"].get(k, 0) - before["calls_by_endpoint"].get(k, 0)
                               for k in after["calls_by_endpoint"]}
                    # Scheduling = what the batch system itself does (requests, containers); the rest
                    # is the job store (collections, groups) used by the leader and the workers.
                    sched = sum(v for k, v in by_kind.items() if k.split(".")[0] in ("container_requests", "containers"))
                    arv = bs == "arvados"
                    results["runs"].append({"batch_system": bs, "n": n, "wall_s": round(wall, 2),
                                            "per_job_s": round(wall / n, 3),
                                            "api_calls_per_job": round(total / n, 2) if arv else None,
                                            "scheduling_calls_per_job": round(sched / n, 2) if arv else None,
                                            "leader_calls_per_job": round(own / n, 2) if arv else None,
                                            "calls_by_endpoint": {k: v for k, v in sorted(by_kind.items()) if v}
                                            if arv else None})
                    print(f"  {bs:15s} N={n:<4d} wall {wall:7.1f}s", flush=True)
    runs = {(r["batch_system"], r["n"]): r for r in results["runs"]}
    lo, hi = min(args.sizes), max(args.sizes)
    print(f"\n{'batch system':15s} {'N':>5s} {'wall s':>8s} {'s/job':>7s} {'API calls/job':>14s} "
          f"{'scheduling/job':>15s} {'leader/job':>11s}")
    for r in results["runs"]:
        def fmt(key: str) -> str:
            return "" if r[key] is None else f"{r[key]:.2f}"
        print(f"{r['batch_system']:15s} {r['n']:5d} {r['wall_s']:8.1f} {r['per_job_s']:7.3f} "
              f"{fmt('api_calls_per_job'):>14s} {fmt('scheduling_calls_per_job'):>15s} {fmt('leader_calls_per_job'):>11s}")
    for r in results["runs"]:
        if r["calls_by_endpoint"]:
            top = sorted(r["calls_by_endpoint"].items(), key=lambda kv: -kv[1])
            print(f"  arvados N={r['n']} calls per step by endpoint: "
                  + ", ".join(f"{k} {v / r['n']:.2f}" for k, v in top))
    if lo != hi and len(args.batch_systems) == 2:
        for bs in ("single_machine", "arvados"):
            marginal = (runs[(bs, hi)]["wall_s"] - runs[(bs, lo)]["wall_s"]) / (hi - lo)
            results[f"marginal_s_per_job_{bs}"] = round(marginal, 3)
        ratio = results["marginal_s_per_job_arvados"] / max(results["marginal_s_per_job_single_machine"], 1e-6)
        results["overhead_ratio_arvados_vs_single_machine"] = round(ratio, 2)
        print(f"\nmarginal cost per extra step (N {lo}->{hi}): single_machine "
              f"{results['marginal_s_per_job_single_machine']:.3f}s, arvados {results['marginal_s_per_job_arvados']:.3f}s "
              f"(ratio {ratio:.2f}; aim <= 2)")
    out_dir = REPO / "bench" / "out"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "scatter.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
