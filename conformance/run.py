"""Run the CWL v1.2 conformance suite against ``toil-cwl-runner --batchSystem arvados``.

    python conformance/run.py [--baseline] [--tags required] [-j N] [--out DIR] [--jobstore keep|file]

One command does everything: it starts a local Arvados-compatible cluster in a temp dir, runs
``cwltest`` with one fresh job store per test (``toil-cwl-runner-arvados``), optionally runs the
same selection with ``--batchSystem single_machine`` (``--baseline``) with the same container flags,
stops the cluster (also on Ctrl-C), and writes JUnit XML plus ``summary.md`` into ``--out``.

Exit status: 0 when every failure of the arvados run is on ``expected-failures.yaml``; 1 when a
test failed that is not (listed tests that pass are reported as unexpected passes, not failures);
2 for a setup problem (one line saying what to do); 130 when interrupted.
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # run as a script: the sibling modules are importable by name
    sys.path.insert(0, str(HERE))

import summary  # noqa: E402
import suite as suite_mod  # noqa: E402

logger = logging.getLogger("conformance")

WRAPPER = HERE / "toil-cwl-runner-arvados"
EXPECTED_FILE = HERE / "expected-failures.yaml"
DEFAULT_OUT = HERE / "out"
RECORD = "run.json"  # what summary.md is rendered from, besides the JUnit XML
JOBSTORE_ENV = "TOIL_CONFORMANCE_JOBSTORE_BASE"
#: Toil flags for every test, both runners: delete each job store at the end even after a failure,
#: no progress bars in captured output, accept the suite's unusual file names (as Toil's own
#: conformance job does), no retries (a conformance test is deterministic: a retry would only hide
#: flakiness), and a JavaScript timeout that survives two busy cores.
TOIL_FLAGS = ["--clean=always", "--disableProgress", "--relax-path-checks", "--retryCount=0",
              "--eval-timeout=600"]
#: Arvados batch system flags: reconcile every second (the event bus normally reports sooner).
ARVADOS_FLAGS = ["--arvadosPollInterval", "1"]
#: single_machine flags with a Docker engine: don't pre-pull images on the leader (Toil's pre-pull
#: always runs `docker pull`, and no registry is reachable; the suite's images are built locally).
BASELINE_DOCKER_FLAGS = ["--no-prepull"]


class SetupError(Exception):
    """Something the user must fix before a run can start."""


@dataclass
class Variant:
    """One runner configuration: its name in the summary and the arguments after ``--``."""

    name: str
    runner_args: list[str]
    jobstore_base: str


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    cores = os.cpu_count() or 1
    p = argparse.ArgumentParser(prog="conformance/run.py", description=__doc__.splitlines()[0].replace("``", ""))
    p.add_argument("--baseline", action="store_true",
                   help="also run the selection with --batchSystem single_machine, for comparison")
    p.add_argument("--tags", help="comma-separated cwltest tags to run (default: the whole suite)")
    p.add_argument("--ids", help="comma-separated test ids to run (within --tags, if given)")
    p.add_argument("-j", type=int, default=cores, help="tests run at once (default: this machine's cores, %(default)s)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the JUnit XML and summary.md go (default: %(default)s)")
    p.add_argument("--jobstore", choices=("keep", "file"), default="keep",
                   help="job store kind for the arvados run: 'keep' (arvados:<project>/<name>) or 'file' "
                        "(a host directory the local cluster's containers see) (default: %(default)s)")
    p.add_argument("--containers", choices=("auto", *summary.CONTAINER_MODES), default="auto",
                   help="run CWL DockerRequirements in Docker ('docker'), in the tool's image by the local "
                        "cluster's namespace runtime ('namespace'), or ignore them with --no-container "
                        "('none'); 'auto' uses Docker when an engine answers, else namespaces "
                        "(default: %(default)s)")
    p.add_argument("--suite", type=Path, help="a cwl-v1.2 checkout (default: ../shared/cwl-v1.2, else the pinned download)")
    p.add_argument("--timeout", type=int, default=1200,
                   help="seconds before cwltest gives up on one test; the two-level nested scatters need over "
                        "10 minutes on 2 busy cores (default: %(default)s)")
    p.add_argument("--workdir", type=Path, default=_default_workdir_parent(),
                   help="parent of the run's temp dir (cluster state, file job stores) (default: %(default)s)")
    p.add_argument("--summary-only", action="store_true",
                   help="run nothing: re-render summary.md in --out from its JUnit XML and run.json, with the "
                        "current expected-failures.yaml")
    p.add_argument("--keep-workdir", action="store_true", help="keep the temp dir (cluster state and logs) for debugging")
    args = p.parse_args(argv)
    if args.j < 1:
        p.error("-j must be at least 1")
    return args


def _default_workdir_parent() -> Path:
    return Path(tempfile.gettempdir())


def docker_engine() -> str | None:
    """A description of a reachable Docker engine (DOCKER_HOST or the default socket), else None."""
    docker = shutil.which("docker")
    if docker is None:
        return None
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        return None
    try:
        out = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True,
                             text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return f"Docker engine {out.stdout.strip()}" if out.returncode == 0 and out.stdout.strip() else None


def container_mode(asked: str) -> tuple[str, str | None]:
    """The container mode a run uses for ``--containers asked``, and the Docker engine it uses.

    ``auto`` is Docker when an engine answers, else the local cluster's namespace runtime: either
    way each step runs in its DockerRequirement image, ENTRYPOINT included, as on Arvados.
    """
    engine = docker_engine() if asked in ("auto", "docker") else None
    if asked == "docker" and engine is None:
        raise SetupError("--containers docker, but no Docker engine answers `docker info`: start one "
                         "(DOCKER_HOST or /var/run/docker.sock) or use --containers namespace")
    if asked == "auto":
        return ("docker" if engine else "namespace"), engine
    return asked, engine


def _mode_fact(mode: str, engine: str | None) -> str:
    """The summary's line on how DockerRequirements ran."""
    return {"docker": f"{engine} (Docker)",
            "namespace": "each tool's image, run by the local cluster's namespace runtime (no Docker engine)",
            "none": "--no-container (asked)"}[mode]


def _load_expected(known_ids: set[str], containers: str) -> dict[str, str]:
    """The expected failures that apply in container mode ``containers`` (see summary.CONTAINER_MODES)."""
    import yaml

    try:
        data = yaml.safe_load(EXPECTED_FILE.read_text()) if EXPECTED_FILE.exists() else None
    except yaml.YAMLError as e:
        raise SetupError(f"{EXPECTED_FILE} is not valid YAML: {str(e).splitlines()[0]}") from None
    try:
        return summary.parse_expected(data, known_ids, containers)
    except ValueError as e:
        raise SetupError(f"{EXPECTED_FILE}: {e}") from None


def _start_cluster(state: Path, docker_host: str | None) -> tuple[object, dict[str, str]]:
    """The cluster, told which Docker engine runs real images (None: namespaces only)."""
    from toil_arvados.localcluster import control

    cfg = control.up(state, cores=os.cpu_count() or 1, docker_host=docker_host)
    return cfg, control.client_env(cfg)


def _docker_host() -> str:
    """The engine ``docker_engine`` found: DOCKER_HOST, else Docker's default socket."""
    from toil_arvados.localcluster.runtime.selection import resolve_docker_host

    return resolve_docker_host(None)


def _prepare_cluster(env: dict[str, str], date: str) -> str:
    """A project for this run's requests, and the worker image in Keep: the project uuid."""
    from toil_arvados.images.worker import store_worker_image

    api = _api(env)
    project = api.groups().create(body={"group": {"name": f"CWL conformance {date}", "group_class": "project"}},
                                  ensure_unique_name=True).execute()["uuid"]
    print("== building (or finding in the cache) the Toil worker image", flush=True)
    started = time.monotonic()
    built, pdh = store_worker_image(api)
    print(f"   {built.name}: {pdh} ({time.monotonic() - started:.0f}s)", flush=True)
    return project


def _api(env: dict[str, str]):
    import arvados

    return arvados.api("v1", host=env["ARVADOS_API_HOST"], token=env["ARVADOS_API_TOKEN"], insecure=True,
                       num_retries=3)


def _store(api, built) -> None:
    from toil_arvados.images.keep import store_image

    started = time.monotonic()
    pdh = store_image(api, built.tarball, built.image_id, built.names, properties=built.properties)
    print(f"   {built.name}: {pdh} ({'built' if built.rebuilt else 'cached'} in {built.seconds:.0f}s, "
          f"stored in {time.monotonic() - started:.0f}s)", flush=True)


def _load_suite_images(env: dict[str, str]) -> None:
    """The images the suite names, in Keep (no registry is reachable: built from Debian packages)."""
    from toil_arvados.images.build import SUITE_RECIPES, build_image
    from toil_arvados.images.debian import ImageBuildError

    api = _api(env)
    print("== building the suite's images (debian:stable-slim, python:3-slim, bash:4.4, alpine:latest)",
          flush=True)
    try:
        for recipe in SUITE_RECIPES.values():
            _store(api, build_image(recipe))
    except ImageBuildError as e:
        raise SetupError(f"building the suite's images failed: {e}") from None


def run_cwltest(variant: Variant, *, suite: Path, selection: list[str], args: argparse.Namespace,
                env: dict[str, str], out: Path) -> tuple[list[tuple[str, summary.Result]], float]:
    """One cwltest run over the selection: (JUnit cases in selection order, wall seconds)."""
    junit = out / f"{variant.name}.junit.xml"
    junit.unlink(missing_ok=True)
    command = [sys.executable, "-m", "cwltest", "--test", str(suite / suite_mod.TESTS_FILE),
               "--tool", str(WRAPPER), "-j", str(args.j), "--timeout", str(args.timeout),
               "--junit-xml", str(junit), "--junit-verbose", "--classname", variant.name, *selection,
               "--", *variant.runner_args]
    run_env = dict(env)
    run_env[JOBSTORE_ENV] = variant.jobstore_base
    # The wrapper's "#!/usr/bin/env python3" must find this interpreter (with Toil and the plugin).
    run_env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), run_env.get("PATH", "")])
    log_path = out / f"{variant.name}.cwltest.log"
    print(f"== {variant.name}: cwltest -j {args.j}, log in {log_path}", flush=True)
    logger.debug("running %s", " ".join(command))
    start = time.monotonic()
    with open(log_path, "w", buffering=1) as log:  # line-buffered: follow it with tail -f
        # Its own session: a Ctrl-C here is turned into an orderly stop of the whole tree below.
        proc = subprocess.Popen(command, cwd=suite, env=run_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                if line.startswith("Test [") or re.match(r"Test \S+ (failed|timed out)", line):
                    print(f"   {variant.name}: {line.rstrip()[:160]}", flush=True)
            proc.wait()
        except BaseException:
            _stop_tree(proc)
            raise
    wall = time.monotonic() - start
    if not junit.exists():
        print(f"   {variant.name}: cwltest wrote no JUnit XML (exit {proc.returncode}); see {log_path}", flush=True)
        return [], wall
    return summary.parse_junit(junit.read_text(errors="replace")), wall


def _stop_tree(proc: subprocess.Popen, grace: float = 15.0) -> None:
    """Stop cwltest and every runner it started: its whole process group, SIGTERM then SIGKILL.

    Waits for the group, not just cwltest: cwltest dies at once, but a Toil leader's SIGTERM
    shutdown can outlive it (and would hang retrying once the cluster is stopped).
    """
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            proc.poll()  # reap cwltest itself; its orphans are reaped by init
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)  # polling interval while the group exits; the deadline bounds it


def _raise_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for dist in ("toil", "cwltool", "cwltest"):
        try:
            parts.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            parts.append(f"{dist} ?")
    return ", ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return _main(args)
    except (SetupError, suite_mod.SuiteError) as e:
        print(f"conformance/run.py: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("conformance/run.py: interrupted; cluster stopped", file=sys.stderr)
        return 130


def _main(args: argparse.Namespace) -> int:
    from toil_arvados.localcluster.control import ClusterError, down

    suite = suite_mod.locate(args.suite)
    tests = suite_mod.load_tests(suite)
    tags = set(args.tags.split(",")) if args.tags else None
    ids = set(args.ids.split(",")) if args.ids else None
    chosen = suite_mod.select(tests, tags, ids)
    if not chosen:
        raise SetupError(f"no test has any of the tags {args.tags}: see `cwltest --show-tags --test {suite}/conformance_tests.yaml`")
    known = {t.id for t in tests}
    _load_expected(known, "none")  # validates every entry before anything starts
    if args.summary_only:
        return _summarize(args.out.resolve(), tests, known)
    # --tags alone when it suffices: cwltest then names its JUnit cases right (see summary.assign).
    selection = (["--tags", args.tags] if args.tags and not ids else
                 ["-n", suite_mod.number_ranges(tests, chosen)] if len(chosen) < len(tests) else [])
    mode, engine = container_mode(args.containers)
    container_flags = ["--no-container"] if mode == "none" else []
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out.resolve()
    now = datetime.datetime.now(datetime.timezone.utc)
    date = now.strftime("%Y-%m-%d %H:%M UTC")

    signal.signal(signal.SIGTERM, _raise_interrupt)
    args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="toil-arvados-conformance-", dir=args.workdir))
    state = work / "cluster"
    runs: list[summary.Run] = []
    try:
        try:
            _cfg, cluster_env = _start_cluster(state, _docker_host() if engine else None)
        except ClusterError as e:
            raise SetupError(f"the local cluster did not start: {e}") from None
        env = dict(os.environ)
        env.update(cluster_env)
        project = _prepare_cluster(cluster_env, date)
        if mode != "none":
            _load_suite_images(cluster_env)
        (work / "jobstores").mkdir()
        jobstore_base = f"arvados:{project}" if args.jobstore == "keep" else f"file:{work / 'jobstores'}"
        variants = [Variant("arvados", ["--batchSystem", "arvados", "--arvadosProject", project, *ARVADOS_FLAGS,
                                        *TOIL_FLAGS, *container_flags], jobstore_base)]
        if args.baseline:
            # In Docker, no pre-pull: Toil's leader would `docker pull` each image (no registry is
            # reachable); cwltool finds the ones built above in the engine and pulls nothing.
            # Without an engine single_machine cannot run an image: it ignores them (--no-container).
            baseline_flags = BASELINE_DOCKER_FLAGS if engine else ["--no-container"]
            variants.append(Variant("single_machine", ["--batchSystem", "single_machine", *TOIL_FLAGS,
                                                       *baseline_flags], f"file:{work / 'jobstores'}"))
        print(f"== {len(chosen)} tests from {suite}; containers: {_mode_fact(mode, engine)}"
              f"; job store: {args.jobstore}", flush=True)
        for variant in variants:
            cases, wall = run_cwltest(variant, suite=suite, selection=selection, args=args, env=env, out=out)
            runs.append(summary.Run(variant.name, summary.assign(cases, [t.id for t in chosen]), wall))
    finally:
        # Cleanup must not be cut short by a second signal (the cluster and the temp dir would stay).
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        down(state)
        if args.keep_workdir:
            print(f"== kept {work}", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)

    facts = [
        f"date: {date}",
        f"suite: CWL v1.2 conformance tests at commit {suite_mod.pinned_commit()[:12]} ({len(chosen)} tests"
        + (f" tagged {args.tags}" if args.tags else "") + ")",
        f"containers: {_mode_fact(mode, engine)}",
        f"job store: {args.jobstore} for arvados" + (", file for single_machine" if args.baseline else ""),
        f"cwltest -j {args.j} on {os.cpu_count()} cores; {_versions()}",
        f"Toil flags: {' '.join(TOIL_FLAGS)}; arvados: {' '.join(ARVADOS_FLAGS)}"
        + (f"; single_machine: {' '.join(BASELINE_DOCKER_FLAGS if engine else ['--no-container'])}"
           if args.baseline else ""),
        f"expected failures: the entries of conformance/expected-failures.yaml for containers `{mode}`",
    ]
    record = {"facts": facts, "containers": mode, "tests": [t.id for t in chosen], "runs": [{"name": r.name, "wall_seconds": r.wall_seconds}
                                                                        for r in runs]}
    (out / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return _summarize(out, tests, known)


def _record_mode(record: dict) -> str:
    """The run's container mode; records written before it was stored say it in their facts."""
    mode = record.get("containers")
    if mode in summary.CONTAINER_MODES:
        return mode
    return "docker" if any(f.startswith("containers:") and "(Docker)" in f for f in record.get("facts", ())) \
        else "none"


def _summarize(out: Path, tests: list[suite_mod.ConformanceTest], known: set[str]) -> int:
    """Render summary.md from the run record and JUnit XML in ``out``, judged against the
    expected failures of the run's container mode; 1 on unexpected failures."""
    try:
        record = json.loads((out / RECORD).read_text())
    except (OSError, ValueError) as e:
        raise SetupError(f"no readable run record in {out} ({e}): run without --summary-only first") from None
    mode = _record_mode(record)
    expected = _load_expected(known, mode)
    tags_by_id = {t.id: t.tags for t in tests}
    selected = [tid for tid in record["tests"] if tid in tags_by_id]
    runs = []
    for entry in record["runs"]:
        junit = out / f"{entry['name']}.junit.xml"
        cases = summary.parse_junit(junit.read_text(errors="replace")) if junit.exists() else []
        log = out / f"{entry['name']}.cwltest.log"
        failures = summary.log_failures(log.read_text(errors="replace")) if log.exists() else {}
        results = summary.with_log_failures(summary.assign(cases, selected), failures)
        runs.append(summary.Run(entry["name"], results, entry["wall_seconds"]))
    verdict = summary.judge(runs[0].results, expected)
    text = summary.render(title="CWL v1.2 conformance: toil-cwl-runner --batchSystem arvados",
                          facts=record["facts"], runs=runs, tags=tags_by_id, expected=expected, verdict=verdict)
    (out / "summary.md").write_text(text)
    print(text, flush=True)
    print(f"== summary: {out / 'summary.md'}; JUnit XML: " + ", ".join(str(out / f"{r.name}.junit.xml") for r in runs))
    if not verdict.ok:
        print(f"== FAILED: {len(verdict.unexpected_failures)} unexpected failure(s): "
              + ", ".join(verdict.unexpected_failures), flush=True)
        return 1
    return 0

if __name__ == "__main__":
    sys.exit(main())
