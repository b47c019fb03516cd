#!/usr/bin/env python3
"""Benchmark: toil-arvados against arvados-cwl-runner (and single_machine) at scale, in one run.

On one fresh local cluster, each workload runs with three runners: ``toil-cwl-runner --batchSystem
single_machine`` (file job store), ``toil-cwl-runner --batchSystem arvados`` (Keep job store) and
arvados-cwl-runner ``--local`` (its own venv, as the tests build it). Workloads: a scatter of N
``echo`` steps per size, and the demo workflow twice (a cold run, then a rerun that should reuse
every container). Per run: wall time, CPU seconds and peak RSS of the runner and its children
(``os.wait4``), API calls per step by endpoint and containers created (counted at the server), and
whether the outputs are right. Table on stdout, figures in ``bench/out/scale.json``. One warm-up
container runs first, so no runner pays the worker image's first load on the node.

CPU and RSS are the runner's processes only: with toil-arvados and a-c-r the steps run in the
cluster's containers (not counted), with single_machine in the runner's own children (counted).

    .venv/bin/python bench/scale.py [--sizes 100 1000] [--huge] [--words 20] [--timeout S]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import unquote, urlparse

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._common import acr_venv, list_all, stats  # noqa: E402
from toil_arvados.localcluster import control  # noqa: E402

DEMO = REPO / "toil_arvados" / "demo"
OUT = REPO / "bench" / "out" / "scale.json"
WAIT4 = REPO / "bench" / "_wait4.py"
TOIL_CWL_RUNNER = Path(sys.executable).parent / "toil-cwl-runner"
RUNNERS = ("single_machine", "toil-arvados", "a-c-r")
HUGE = 10_000

# Strings, not ints: every run echoes its own values, so no run can reuse another's containers.
SCATTER = """\
cwlVersion: v1.2
class: Workflow
requirements: {ScatterFeatureRequirement: {}}
inputs:
  xs: string[]
outputs:
  out:
    type: File[]
    outputSource: step/out
steps:
  step:
    run:
      class: CommandLineTool
      baseCommand: echo
      inputs: {x: {type: string, inputBinding: {}}}
      stdout: $(inputs.x).txt
      outputs: {out: stdout}
    scatter: x
    in: {x: xs}
    out: [out]
"""


@dataclass
class Workload:
    """One workflow run, the same for every runner (except ``inputs``, made per runner)."""

    name: str
    workflow: Path
    steps: int
    inputs: Callable[[str], dict]  # runner -> the job's inputs
    check: Callable[[Any, str, dict], str | None]  # (api, runner, output object) -> problem or None
    # A rerun runs with reuse on and must create no container; a first run has reuse off, so it
    # never picks up another runner's identical containers (Arvados reuses across projects).
    rerun: bool = False


@dataclass
class Measured:
    """What ``os.wait4`` says about one runner process and the children it waited for."""

    exit_code: int | None
    timed_out: bool
    wall_s: float
    cpu_s: float
    peak_rss_mib: float


@dataclass
class Result:
    workload: str
    runner: str
    status: str  # "ok", "failed: ...", "timeout", "wrong output: ..."
    timeout_s: float
    steps: int
    wall_s: float | None = None
    cpu_s: float | None = None
    peak_rss_mib: float | None = None
    containers_created: int | None = None
    api_calls: int | None = None
    api_calls_per_step: float | None = None
    calls_per_step_by_endpoint: dict[str, float] = field(default_factory=dict)
    stderr_tail: str | None = None


# --------------------------------------------------------------------------- running one process

def measure(cmd: list[str], env: dict, cwd: Path, timeout: float, log: Path) -> Measured:
    """Run ``cmd`` under ``_wait4.py`` in its own process group, stdout/stderr to ``log``.{out,err};
    kill the group after ``timeout`` s. Figures are the wrapper's (see there why a wrapper)."""
    rusage = log.with_suffix(".rusage.json")
    wrapped = [sys.executable, "-I", "-S", str(WAIT4), str(rusage), *cmd]
    with open(log.with_suffix(".out"), "wb") as out, open(log.with_suffix(".err"), "wb") as err:
        proc = subprocess.Popen(wrapped, env=env, cwd=cwd, stdout=out, stderr=err, start_new_session=True)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        proc.wait()
        return Measured(exit_code=None, timed_out=True, wall_s=0.0, cpu_s=0.0, peak_rss_mib=0.0)
    finally:
        _kill_group(proc.pid)  # stragglers the runner left behind
    ru = json.loads(rusage.read_text()) if rusage.is_file() else {}
    return Measured(exit_code=proc.returncode, timed_out=False, wall_s=ru.get("wall_s", 0.0),
                    cpu_s=ru.get("cpu_s", 0.0), peak_rss_mib=ru.get("maxrss_kib", 0) / 1024)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").strip().splitlines()[-lines:])


# --------------------------------------------------------------------------- runners

@dataclass
class Session:
    """What every run needs: the cluster, a client, per-runner projects and environments."""

    cfg: Any
    api: Any
    work: Path
    acr: Path
    projects: dict[str, str]
    header_url: str
    words: list[str]

    def toil_env(self) -> dict:
        env = dict(os.environ, **control.client_env(self.cfg))
        env["PATH"] = f"{TOIL_CWL_RUNNER.parent}:{env.get('PATH', '')}"
        return env

    def acr_env(self) -> dict:
        """As the a-c-r tests run it: no PYTHONPATH/VIRTUAL_ENV of ours, its caches in the work dir."""
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env.update(control.client_env(self.cfg), HOME=str(self.work / "acr-home"))
        return env


def command(s: Session, runner: str, w: Workload, label: str, inputs: Path) -> list[str]:
    """The runner's command line for one run; ``label`` names its job store and output dir."""
    if runner == "single_machine":
        return [str(TOIL_CWL_RUNNER), "--batchSystem", "single_machine", "--disableCaching",
                "--jobStore", f"file:{s.work / ('js-' + label)}", "--outdir", str(s.work / f"out-{label}"),
                "--logLevel", "WARNING", str(w.workflow), str(inputs)]
    project = s.projects[runner]
    if runner == "toil-arvados":
        return [str(TOIL_CWL_RUNNER), "--batchSystem", "arvados", "--arvadosProject", project,
                "--jobStore", f"arvados:{project}/{label}", "--outdir", str(s.work / f"out-{label}"),
                "--logLevel", "WARNING", *([] if w.rerun else ["--noArvadosStepReuse"]),
                str(w.workflow), str(inputs)]
    return [str(s.acr), "--local", "--api=containers", f"--project-uuid={project}",
            *([] if w.rerun else ["--disable-reuse"]), str(w.workflow), str(inputs)]


def container_count(api) -> int:
    return api.containers().list(limit=0, count="exact").execute()["items_available"]


def run_one(s: Session, w: Workload, runner: str, timeout: float) -> Result:
    """One measured run, with the server's counters and the container count taken around it."""
    label = f"{w.name}-{runner}"
    inputs = s.work / f"inputs-{label}.json"
    inputs.write_text(json.dumps(w.inputs(runner)))
    env = s.acr_env() if runner == "a-c-r" else s.toil_env()
    containers0, calls0 = container_count(s.api), stats(s.cfg)["calls_by_endpoint"]
    m = measure(command(s, runner, w, label, inputs), env, s.work, timeout, s.work / "logs" / label)
    calls1, containers1 = stats(s.cfg)["calls_by_endpoint"], container_count(s.api)
    r = Result(workload=w.name, runner=runner, status="ok", timeout_s=timeout, steps=w.steps)
    r.containers_created = containers1 - containers0
    calls = call_deltas(calls0, calls1)
    r.api_calls = sum(calls.values())
    r.api_calls_per_step = round(r.api_calls / w.steps, 2)
    r.calls_per_step_by_endpoint = {k: round(v / w.steps, 2) for k, v in calls.items()}
    if m.timed_out:
        r.status = "timeout"
        cancel_project(s.api, s.projects.get(runner))
    elif m.exit_code != 0:
        r.status = f"failed: exit {m.exit_code}"
    else:
        r.status = output_problem(s, w, runner, s.work / "logs" / f"{label}.out", r) or "ok"
    if r.status == "ok":  # a failed run is reported as failed, not timed
        r.wall_s, r.cpu_s, r.peak_rss_mib = round(m.wall_s, 2), round(m.cpu_s, 2), round(m.peak_rss_mib, 1)
    else:
        r.stderr_tail = tail(s.work / "logs" / f"{label}.err")
    return r


def call_deltas(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Calls made between two snapshots of the counters, by endpoint, most called first."""
    deltas = {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}
    return dict(sorted(deltas.items(), key=lambda kv: -kv[1]))


def output_problem(s: Session, w: Workload, runner: str, stdout: Path, r: Result) -> str | None:
    """Why the run's outputs (or its reuse) are wrong, or None."""
    try:
        out = json.loads(stdout.read_text())
    except ValueError:
        return f"wrong output: stdout is not a CWL output object ({tail(stdout, 3)!r})"
    try:
        problem = w.check(s.api, runner, out)
    except Exception as e:  # an output that cannot be read is a wrong output, not a crash
        problem = f"cannot read it: {type(e).__name__}: {e}"
    if problem:
        return f"wrong output: {problem}"
    if runner != "single_machine" and w.rerun and r.containers_created:
        return f"not reused: {r.containers_created} new containers"
    return None


def cancel_project(api, project: str | None) -> None:
    """Priority 0 for a killed run's requests still in flight, so they don't load the next run."""
    if not project:
        return
    for cr in list_all(api.container_requests().list, filters=[["owner_uuid", "=", project],
                                                               ["state", "=", "Committed"]], select=["uuid"]):
        api.container_requests().update(uuid=cr["uuid"], body={"container_request": {"priority": 0}}).execute()


# --------------------------------------------------------------------------- workloads and checks

def read_output(api, file_obj: dict) -> bytes:
    """A CWL output File's bytes: a local file (Toil's --outdir) or a Keep file (a-c-r)."""
    location = file_obj.get("location", "")
    if location.startswith("keep:"):
        import arvados.collection

        pdh, _, name = location[len("keep:"):].partition("/")
        with arvados.collection.CollectionReader(pdh, api_client=api).open(unquote(name), "rb") as f:
            return f.read()
    return Path(file_obj.get("path") or unquote(urlparse(location).path)).read_bytes()


def scatter_values(runner: str, n: int) -> list[str]:
    return [f"{runner}-{n}-{i}" for i in range(n)]


def scatter_workload(work: Path, n: int) -> Workload:
    wf = work / "scatter.cwl"
    wf.write_text(SCATTER)

    def check(api, runner: str, out: dict) -> str | None:
        names = sorted(f.get("basename", "") for f in out.get("out") or [])
        want = sorted(f"{x}.txt" for x in scatter_values(runner, n))
        return None if names == want else f"{len(names)} output files, expected {n}"

    return Workload(name=f"scatter-{n}", workflow=wf, steps=n,
                    inputs=lambda runner: {"xs": scatter_values(runner, n)}, check=check)


def expected_report(words: list[str], header: bytes) -> bytes:
    """What single_machine's demo report is: the header, then ``<word> <bytes of its shout>`` per word."""
    return header + "".join(f"{w} {len(w) + 1}\n" for w in words).encode()


def demo_workloads(s: Session) -> list[Workload]:
    """The demo cold, then again with reuse on: the rerun must create no container."""
    want = expected_report(s.words, (DEMO / "header.txt").read_bytes())

    def check(api, runner: str, out: dict) -> str | None:
        if not isinstance(out.get("report"), dict):
            return "no report in the output object"
        got = read_output(api, out["report"])
        return None if got == want else f"report differs from single_machine's: {got[:200]!r}"

    def inputs(runner: str) -> dict:
        return {"words": s.words, "header": {"class": "File", "location": s.header_url}}

    steps = 2 * len(s.words) + 1
    return [Workload("demo", DEMO / "workflow.cwl", steps, inputs, check),
            Workload("demo-rerun", DEMO / "workflow.cwl", steps, inputs, check, rerun=True)]


# --------------------------------------------------------------------------- setup

def store_images(api, runner_image: str) -> str:
    """The worker image, also under a-c-r's runner image name: a-c-r runs tools without a
    DockerRequirement in it (no registry here, so an administrator would mirror it like this).
    Returns its portable data hash."""
    from toil_arvados.images.keep import store_image
    from toil_arvados.images.worker import build_worker_image

    built = build_worker_image()
    return store_image(api, built.tarball, built.image_id, (*built.names, runner_image),
                       properties=built.properties)


def warm_node(api, image_pdh: str, timeout: float = 300) -> None:
    """Run one container in the image before anything is measured, as on a node that has run it
    before: otherwise whichever runner goes first pays the image's one load from Keep (several
    seconds for the worker image) and the others do not."""
    cr = api.container_requests().create(body={"container_request": {
        "name": "bench warm-up", "container_image": image_pdh, "command": ["true"], "output_path": "/out",
        "mounts": {"/out": {"kind": "tmp", "capacity": 1 << 20}}, "use_existing": False,
        "runtime_constraints": {"vcpus": 1, "ram": 256 << 20}, "state": "Committed", "priority": 1}}).execute()
    deadline = time.monotonic() + timeout
    while cr["state"] != "Final":
        if time.monotonic() > deadline:
            raise RuntimeError(f"warm-up container request {cr['uuid']} did not finish in {timeout:g} s")
        time.sleep(0.2)
        cr = api.container_requests().get(uuid=cr["uuid"]).execute()
    c = api.containers().get(uuid=cr["container_uuid"]).execute()
    if c["state"] != "Complete" or c["exit_code"] != 0:
        raise RuntimeError(f"warm-up container {c['uuid']} ended {c['state']} (exit {c['exit_code']})")


def make_session(cfg, work: Path, words: list[str]) -> Session:
    import arvados
    import arvados.collection

    acr = acr_venv()
    exe = acr.ensure_venv()
    api = arvados.api("v1", host=cfg.api_host, token=cfg.root_token, insecure=True)
    warm_node(api, store_images(api, f"arvados/jobs:{acr.ACR_VERSION}"))
    projects = {runner: api.groups().create(body={"group": {"name": f"bench scale {runner}", "group_class": "project"}},
                                            ensure_unique_name=True).execute()["uuid"]
                for runner in RUNNERS[1:]}
    coll = arvados.collection.Collection(api_client=api)
    with coll.open("header.txt", "wb") as f:
        f.write((DEMO / "header.txt").read_bytes())
    coll.save_new(name="bench scale demo header", ensure_unique_name=True)
    (work / "logs").mkdir()
    (work / "acr-home").mkdir()
    return Session(cfg=cfg, api=api, work=work, acr=exe, projects=projects,
                   header_url=f"keep:{coll.portable_data_hash()}/header.txt", words=words)


# --------------------------------------------------------------------------- report

def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def ratios(results: list[Result]) -> list[dict]:
    """toil-arvados against a-c-r and against single_machine, per workload (ok runs only)."""
    by = {(r.workload, r.runner): r for r in results if r.status == "ok"}
    out = []
    for workload in dict.fromkeys(r.workload for r in results):
        ta = by.get((workload, "toil-arvados"))
        row: dict = {"workload": workload}
        for other in ("a-c-r", "single_machine"):
            o = by.get((workload, other))
            for key in ("wall_s", "cpu_s", "peak_rss_mib", "api_calls_per_step"):
                row[f"{key}_vs_{other}"] = ratio(getattr(ta, key), getattr(o, key)) if ta and o else None
        out.append(row)
    return out


def fmt(value: Any, spec: str = "") -> str:
    return "-" if value is None else format(value, spec)


def print_table(results: list[Result], rat: list[dict]) -> None:
    head = f"{'workload':12s} {'runner':14s} {'wall s':>8s} {'cpu s':>8s} {'RSS MiB':>8s} {'calls/step':>10s} " \
           f"{'new ctrs':>8s} {'timeout':>7s}  status"
    print("\n" + head + "\n" + "-" * len(head))
    for r in results:
        print(f"{r.workload:12s} {r.runner:14s} {fmt(r.wall_s, '.1f'):>8s} {fmt(r.cpu_s, '.1f'):>8s} "
              f"{fmt(r.peak_rss_mib, '.0f'):>8s} {fmt(r.api_calls_per_step, '.2f'):>10s} "
              f"{fmt(r.containers_created):>8s} {r.timeout_s:7.0f}  {r.status}")
    print("\ntoil-arvados ratios (wall / cpu / RSS / calls per step; < 1 = toil-arvados is cheaper)")
    for row in rat:
        parts = [f"vs {o}: " + " / ".join(fmt(row[f'{k}_vs_{o}'], '.2f') for k in
                                          ("wall_s", "cpu_s", "peak_rss_mib", "api_calls_per_step"))
                 for o in ("a-c-r", "single_machine")]
        print(f"  {row['workload']:12s} " + "   ".join(parts))
    print("\nAPI calls per step, top endpoints")
    for r in results:
        if r.runner != "single_machine" and r.calls_per_step_by_endpoint:
            top = list(r.calls_per_step_by_endpoint.items())[:6]
            print(f"  {r.workload:12s} {r.runner:14s} " + ", ".join(f"{k} {v:g}" for k, v in top))
    for r in results:
        if r.stderr_tail:
            print(f"\n--- {r.workload} {r.runner}: {r.status}; stderr tail:\n{r.stderr_tail}")


# --------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000], help="scatter widths")
    parser.add_argument("--huge", action="store_true", help=f"also a scatter of {HUGE} steps")
    parser.add_argument("--words", type=int, default=20, help="the demo's first N words")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds per run (default: 600 + 3 per step)")
    parser.add_argument("--runners", nargs="+", choices=RUNNERS, default=list(RUNNERS))
    args = parser.parse_args(argv)
    if any(n < 1 for n in args.sizes) or args.words < 1:
        parser.error("--sizes and --words must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import yaml

    words = yaml.safe_load((DEMO / "inputs.yml").read_text())["words"][:args.words]
    sizes = args.sizes + ([HUGE] if args.huge else [])
    results: list[Result] = []
    load_start = round(os.getloadavg()[0], 2)
    # Not under /tmp: containers get their own /tmp.
    with tempfile.TemporaryDirectory(prefix="bench-scale-", dir=REPO / "bench") as tmp:
        work = Path(tmp)
        with control.running_cluster(work / "cluster", cores=os.cpu_count() or 2) as cfg:
            s = make_session(cfg, work, words)
            workloads = [scatter_workload(work, n) for n in sizes] + demo_workloads(s)
            for w in workloads:
                for runner in args.runners:
                    r = run_one(s, w, runner, args.timeout or 600 + 3 * w.steps)
                    results.append(r)
                    print(f"  {w.name:12s} {runner:14s} {fmt(r.wall_s, '7.1f')}s  {r.status}", flush=True)
    rat = ratios(results)
    print_table(results, rat)
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps({"sizes": sizes, "words": len(words), "cpus": os.cpu_count(), "loadavg_1m_at_start": load_start,
                               "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
                               "runs": [asdict(r) for r in results], "ratios": rat}, indent=2) + "\n")
    print(f"\nfigures written to {OUT}")
    return 0 if all(r.status == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
