"""``--arvadosSubmit``: the runner container request, and what goes in it (pure functions).

The runner request is the run's record on Arvados, as ``arvados-cwl-runner --submit`` makes
it: the packed workflow and the input object (its files already in Keep) are ``json`` mounts,
the Toil leader runs inside with ``API: true`` (Arvados gives it its own token), and
``/var/spool/cwl`` is its output: the workflow's final outputs and ``cwl.output.json``. Every
step request the leader submits names the runner's container as ``requesting_container_uuid``.

Nothing secret goes in the command, environment or mounts: the runner gets its token from
Arvados, and ``cwltool:Secrets`` inputs travel in ``secret_mounts``, included by the input
object with ``$include``.
"""
from __future__ import annotations

import math
import posixpath
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

OUTPUT_DIR = "/var/spool/cwl"
WORKFLOW_MOUNT = "/var/lib/cwl/workflow.json"
INPUT_MOUNT = "/var/lib/cwl/cwl.input.json"
SECRETS_DIR = "/secrets"
OUTPUT_OBJECT = "cwl.output.json"
#: Marks the runner request and names the workflow it runs (Workbench shows properties).
PROPERTY_RUNNER = "toil_workflow_runner"
#: Scratch for the leader (its work dir, coordination dir) and for the outputs.
LEADER_TMP_BYTES = 4 << 30
OUTPUT_BYTES = 16 << 30

#: Options that name this machine (its disk, its log files) or the submission itself: the
#: runner does not get them. The workflow and input object are replaced by the mounts.
LOCAL_DESTS = frozenset({
    "arvados_submit", "arvados_no_wait", "arvados_submit_cores", "arvados_submit_ram", "jobStore", "outdir",
    "workDir", "coordination_dir", "tmpdir_prefix", "tmp_outdir_prefix", "runDir", "logFile", "writeLogs",
    "writeLogsGzip", "cachedir", "provenance", "batchSystem", "arvados_project", "arvados_worker_image",
    "restart", "cwltool", "cwljob", "basedir",
})


@dataclass(frozen=True)
class RunnerSettings:
    """Where and how the runner runs."""

    name: str  # the request's name (Workbench shows it)
    project_uuid: str
    image: str  # the Toil worker image: the leader runs in it
    job_store: str  # an ``arvados:`` locator: workers cannot see the runner's disk
    cores: float = 1
    ram: int = 1 << 30
    priority: int = 500
    python: str = "python3"


def runner_command(settings: RunnerSettings, passthrough: Sequence[str], workflow_ref: str) -> list[str]:
    """The leader's command line inside the runner container."""
    return [settings.python, "-m", "toil_arvados.cwl_submit_runner", OUTPUT_DIR, "--",
            "toil-cwl-runner", "--batchSystem", "arvados", "--jobStore", settings.job_store,
            "--arvadosProject", settings.project_uuid, "--arvadosWorkerImage", settings.image,
            *passthrough, workflow_ref, INPUT_MOUNT]


def runner_request_body(settings: RunnerSettings, packed: Mapping[str, Any], job_order: Mapping[str, Any],
                        secret_mounts: Mapping[str, Any], passthrough: Sequence[str]) -> dict[str, Any]:
    """The committed runner container request (``API: true``: the leader submits the steps)."""
    return {
        "name": settings.name,
        "owner_uuid": settings.project_uuid,
        "state": "Committed",
        "priority": settings.priority,
        "container_image": settings.image,
        "command": runner_command(settings, passthrough, f"{WORKFLOW_MOUNT}#main"),
        "cwd": OUTPUT_DIR,
        "output_path": OUTPUT_DIR,
        "environment": {"HOME": "/tmp", "TMPDIR": "/tmp"},
        "mounts": {
            OUTPUT_DIR: {"kind": "tmp", "capacity": OUTPUT_BYTES},
            "/tmp": {"kind": "tmp", "capacity": LEADER_TMP_BYTES},
            WORKFLOW_MOUNT: {"kind": "json", "content": dict(packed)},
            INPUT_MOUNT: {"kind": "json", "content": dict(job_order)},
        },
        "secret_mounts": dict(secret_mounts),
        "runtime_constraints": {"vcpus": max(1, math.ceil(settings.cores)), "ram": int(settings.ram), "API": True},
        "use_existing": False,  # a workflow run is never "the same" as an earlier one
        # A workflow runner, as Arvados marks arvados-cwl-runner's: the dispatcher keeps runners
        # to a share of the cluster, so they cannot take every slot their steps need.
        "scheduling_parameters": {"supervisor": True},
        "properties": {PROPERTY_RUNNER: settings.name, "type": "workflow"},
    }


def main_process(packed: Mapping[str, Any]) -> Mapping[str, Any]:
    """The top-level process of a packed document (``#main``)."""
    for process in packed.get("$graph") or [packed]:
        if str(process.get("id", "")).endswith("#main") or process.get("id") == "main":
            return process
    return packed


def secret_input_names(packed: Mapping[str, Any]) -> list[str]:
    """The top-level inputs a ``cwltool:Secrets`` hint or requirement names (short names)."""
    process = main_process(packed)
    names: list[str] = []
    for entry in list(process.get("hints") or []) + list(process.get("requirements") or []):
        if isinstance(entry, Mapping) and str(entry.get("class", "")).endswith("Secrets"):
            names += [str(s).rsplit("/", 1)[-1].rsplit("#", 1)[-1] for s in entry.get("secrets") or []]
    return names


def split_secrets(job_order: Mapping[str, Any], names: Iterable[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The input object with each secret input replaced by an ``$include`` of a secret mount,
    and those mounts (as arvados-cwl-runner keeps secret inputs out of its runner's mounts)."""
    order = dict(job_order)
    mounts: dict[str, Any] = {}
    for name in sorted(set(names)):
        if name in order and order[name] is not None:
            path = f"{SECRETS_DIR}/s{len(mounts)}"
            mounts[path] = {"kind": "text", "content": str(order[name])}
            order[name] = {"$include": path}
    return order, mounts


# -- argv -------------------------------------------------------------------------------------

def passthrough_args(argv: Sequence[str], arity: Callable[[str], tuple[str, int] | None]) -> list[str]:
    """The user's Toil options the runner's leader gets too: every option ``arity`` knows
    (``--opt`` -> (dest, how many values follow)) except :data:`LOCAL_DESTS`; positionals
    (workflow, input object) are left out."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--":
            break
        name, eq, _ = token.partition("=")
        known = arity(name) if token.startswith("-") else None
        if known is None:
            i += 1
            continue
        dest, values = known
        taken = [token] if eq else argv[i:i + 1 + values]
        if dest not in LOCAL_DESTS:
            out += taken
        i += len(taken)
    return out


def env_options(options: Iterable[tuple[str, str, str]], argv: Sequence[str], environ: Mapping[str, str]) -> list[str]:
    """This plugin's options set through their environment variables here (``(option, dest,
    variable)`` each), as options for the runner's leader, which does not have this environment;
    an option on the command line wins, as with configargparse."""
    given = {token.partition("=")[0] for token in argv}
    out: list[str] = []
    for option, dest, variable in options:
        if option.startswith("--arvados") and dest not in LOCAL_DESTS and option not in given \
                and environ.get(variable):
            out += [option, environ[variable]]
    return out


# -- locations --------------------------------------------------------------------------------

def common_parent(paths: Iterable[str]) -> str:
    """The deepest directory holding every path (uploads keep their layout below it)."""
    parents = [posixpath.dirname(p.rstrip("/")) for p in paths]
    return posixpath.commonpath(parents) if parents else "/"


def local_path(location: str) -> str | None:
    """The local path a ``file:`` location names, else None (``keep:``, ``http:`` stay as they are)."""
    from urllib.parse import unquote, urlsplit

    if location.startswith("file://"):
        return unquote(urlsplit(location).path)
    return None


def file_objects(doc: Any) -> Iterable[dict]:
    """Every CWL File and Directory object in a document, outermost first."""
    if isinstance(doc, Mapping):
        if doc.get("class") in ("File", "Directory"):
            yield doc  # type: ignore[misc]
        for value in doc.values():
            yield from file_objects(value)
    elif isinstance(doc, list):
        for value in doc:
            yield from file_objects(value)


def local_paths(doc: Any) -> list[str]:
    """The local files and directories a document names, each once; those inside a named
    directory are left out (the directory brings them)."""
    found = sorted({p for obj in file_objects(doc) if (p := local_path(str(obj.get("location", ""))))})
    dirs = [p for obj in file_objects(doc) if obj.get("class") == "Directory"
            and (p := local_path(str(obj.get("location", ""))))]
    return [p for p in found if not any(p != d and p.startswith(d.rstrip("/") + "/") for d in dirs)]


def to_keep(doc: Any, pdh: str, base: str) -> Any:
    """``doc`` with every local location rewritten to ``keep:<pdh>/<path below base>`` (and its
    local ``path`` dropped): where :func:`local_paths` were uploaded."""
    if isinstance(doc, Mapping):
        out = {k: to_keep(v, pdh, base) for k, v in doc.items()}
        path = local_path(str(doc.get("location", ""))) if doc.get("class") in ("File", "Directory") else None
        if path is not None:
            out["location"] = f"keep:{pdh}/{posixpath.relpath(path, base)}"
            out.pop("path", None)
        return out
    if isinstance(doc, list):
        return [to_keep(v, pdh, base) for v in doc]
    return doc


def relocate_outputs(doc: Any, old_prefix: str, new_prefix: str, with_path: bool) -> Any:
    """Output object locations under ``old_prefix`` moved under ``new_prefix`` (the runner makes
    them relative to its output collection; the follower makes them local files again)."""
    if isinstance(doc, Mapping):
        out = {k: relocate_outputs(v, old_prefix, new_prefix, with_path) for k, v in doc.items()}
        location = str(doc.get("location", ""))
        relative = ":" not in location.split("/", 1)[0]
        if doc.get("class") in ("File", "Directory") and location.startswith(old_prefix) and (old_prefix or relative):
            out["location"] = new_prefix + location[len(old_prefix):]
            out.pop("path", None)
            if with_path:
                out["path"] = local_path(out["location"]) or out["location"]
        return out
    if isinstance(doc, list):
        return [relocate_outputs(v, old_prefix, new_prefix, with_path) for v in doc]
    return doc
