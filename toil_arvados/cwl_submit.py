"""``toil-cwl-runner --batchSystem arvados --arvadosSubmit``: run the Toil leader itself on the cluster.

What arvados-cwl-runner users know as ``--submit``: the command checks the worker image, packs
the workflow, uploads local inputs to Keep (:mod:`cwl_submit_inputs`) and submits one runner
container request (:mod:`cwl_submit_request`) in which ``toil-cwl-runner`` leads the run with
a Keep job store (:mod:`cwl_submit_runner`). That request is the run's record in Workbench:
its log holds the leader's log, its output the workflow's outputs, and every step request is
its child. With ``--arvadosNoWait`` the command prints the request's UUID and exits; otherwise
it follows the run (:mod:`cwl_submit_follow`), downloads the outputs into ``--outdir`` and
prints the output object as a local run does, exits with the runner's exit code, and cancels
the run on Ctrl-C.

Toil's ``main`` reaches :func:`submit_main` through :func:`toil_arvados.toil_patches.submit_hook`
before it would start a local leader.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import time
from argparse import ArgumentParser, Namespace, _ArgumentGroup
from pathlib import Path
from typing import Any, Callable, TextIO

from . import arvados_client
from .arvados_client import ArvadosSetupError
from .cwl_submit_request import OUTPUT_OBJECT, RunnerSettings, env_options, passthrough_args, relocate_outputs, \
    runner_request_body, secret_input_names, split_secrets

logger = logging.getLogger(__name__)

FLAG = "--arvadosSubmit"
DEFAULT_RUNNER_RAM = "1Gi"


def add_options(parser: ArgumentParser | _ArgumentGroup) -> None:
    """The submission options (Toil's ``--help`` shows them with the batch system's)."""
    from toil.lib.conversions import human2bytes

    parser.add_argument(FLAG, dest="arvados_submit", default=False, action="store_true",
                        help="Run the Toil leader itself as a container request on Arvados (in the worker "
                             "image, local inputs uploaded to Keep) instead of on this machine")
    parser.add_argument("--arvadosNoWait", dest="arvados_no_wait", default=False, action="store_true",
                        help="With --arvadosSubmit: print the runner's container request UUID and exit at once")
    parser.add_argument("--arvadosSubmitCores", dest="arvados_submit_cores", default=1.0, type=float,
                        help="With --arvadosSubmit: cores for the runner (default: %(default)s)")
    parser.add_argument("--arvadosSubmitRam", dest="arvados_submit_ram", default=DEFAULT_RUNNER_RAM,
                        type=lambda s: int(human2bytes(s)),
                        help=f"With --arvadosSubmit: RAM for the runner (default: {DEFAULT_RUNNER_RAM})")


def wanted(args: list[str]) -> bool:
    """Whether this command line asks for a submission (before ``--``, Toil's option syntax)."""
    head = args[:args.index("--")] if "--" in args else args
    return FLAG in head


def submit_main(args: list[str], get_options: Callable[[list[str]], Namespace], stdout: TextIO) -> int:
    """Submit the run; follow it unless ``--arvadosNoWait``. The command's exit code."""
    from cwltool.loghandler import _logger as cwl_logger, defaultStreamHandler
    from toil.statsAndLogging import set_logging_from_options

    cwl_logger.removeHandler(defaultStreamHandler)  # as Toil's main: cwltool logs through Toil's handler
    options = get_options(args)
    _check_options(options)
    set_logging_from_options(options)
    logging.getLogger("toil_arvados").setLevel(logging.NOTSET)
    try:
        api, settings = _prepare(options)
        body = _runner_body(api, options, settings, args)
        cr = arvados_client.create_request(api, body, "submit the workflow runner", ensure_unique_name=True)
    except KeyboardInterrupt:
        logger.error("Interrupted before the workflow runner was submitted")
        return 130
    if options.arvados_no_wait:
        print(cr["uuid"], file=stdout)
        stdout.flush()
        return 0
    logger.info("Submitted workflow runner %s (%s); following it (Ctrl-C cancels the run)", cr["uuid"], cr["name"])
    return _follow(api, cr["uuid"], options, stdout)


def _check_options(options: Namespace) -> None:
    if options.batchSystem != "arvados":
        raise ArvadosSetupError(f"{FLAG} runs the workflow on Arvados: add --batchSystem arvados")
    if getattr(options, "restart", False):
        raise ArvadosSetupError(f"{FLAG} starts a new run and cannot --restart one")
    if options.jobStore and not str(options.jobStore).startswith("arvados:"):
        raise ArvadosSetupError(f"with {FLAG} the job store must be in Keep (the runner cannot see this "
                                f"machine's disk): use --jobStore arvados:<name>, or leave it out for a new one")
    extra = list(options.cwljob or [])
    if len(extra) > 1 or any(a.startswith("-") for a in extra):
        raise ArvadosSetupError(f"with {FLAG} give the workflow's inputs as one YAML or JSON file, not as "
                                "command-line options")


def _prepare(options: Namespace) -> tuple[Any, RunnerSettings]:
    """Check what the runner needs (credentials, project, worker image) before anything is made."""
    from .images.worker import check_worker_image, default_image_name

    arvados_client.mark_starting()
    api = arvados_client.connect()
    user = arvados_client.check_connection(api)
    project = arvados_client.resolve_project(api, options.arvados_project, user)
    image = options.arvados_worker_image or default_image_name()
    arvados_client.check_image(api, image)
    check_worker_image(api, image)
    name = f"toil-cwl-runner {os.path.basename(str(options.cwltool).split('#')[0])}"
    job_store = options.jobStore or f"arvados:{project}/toil-run-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    return api, RunnerSettings(
        name=name, project_uuid=project, image=image, job_store=job_store,
        cores=float(options.arvados_submit_cores), ram=int(options.arvados_submit_ram),
        priority=int(options.arvados_priority or 500), python=options.arvados_worker_python or "python3")


def _runner_body(api: Any, options: Namespace, settings: RunnerSettings, args: list[str]) -> dict:
    from .cwl_images import check_workflow_images
    from .cwl_submit_inputs import load_job_order, pack_workflow, upload_local_files

    uri, packed = pack_workflow(str(options.cwltool))
    if not options.no_container and not options.no_prepull:
        check_workflow_images(uri, api)
    job_order = load_job_order(options.cwljob[0]) if options.cwljob else {}
    packed, job_order = upload_local_files(api, settings.project_uuid, settings.name, packed, job_order)
    job_order, secret_mounts = split_secrets(job_order, secret_input_names(packed))
    parser = _toil_parser()
    env = [(a.option_strings[0], a.dest, a.env_var) for a in parser._actions
           if a.option_strings and getattr(a, "env_var", None)]
    passed = passthrough_args(args, _arity(parser)) + env_options(env, args, os.environ)
    return runner_request_body(settings, packed, job_order, secret_mounts, passed)


def _toil_parser() -> Any:
    """toil-cwl-runner's option parser, as Toil's ``get_options`` builds it."""
    from configargparse import ArgParser
    from toil.common import addOptions

    parser = ArgParser(allow_abbrev=False)
    addOptions(parser, jobstore_as_flag=True, cwl=True)
    return parser


def _arity(parser: Any = None) -> Callable[[str], tuple[str, int] | None]:
    """For each option string of toil-cwl-runner: its dest and how many values follow it."""
    actions = (parser or _toil_parser())._option_string_actions

    def arity(option: str) -> tuple[str, int] | None:
        action = actions.get(option)
        if action is None:
            return None
        # Flags take none; a fixed count takes that many; anything else (one value, "?", "*",
        # "+") is taken as one value, which is how Toil's own options of those kinds are used.
        return action.dest, action.nargs if isinstance(action.nargs, int) else 1

    return arity


def _follow(api: Any, uuid: str, options: Namespace, stdout: TextIO) -> int:
    from .cwl_submit_follow import cancel, exit_code, follow

    try:
        cr = follow(api, uuid)
    except KeyboardInterrupt:
        logger.error("Interrupted: cancelling workflow runner %s and its steps", uuid)
        try:
            cancel(api, uuid)
        except Exception as e:
            raise ArvadosSetupError(arvados_client.describe(e, f"could not cancel workflow runner {uuid} (cancel "
                                                               "it in Workbench)")) from None
        return 130
    code = exit_code(api, cr)
    if code != 0:
        logger.error("Workflow runner %s failed (exit code %d); its log: %s", uuid, code, cr.get("log_uuid"))
        return code
    return _deliver_outputs(api, cr, Path(options.outdir or os.getcwd()).resolve(), stdout)


def _deliver_outputs(api: Any, cr: dict, outdir: Path, stdout: TextIO) -> int:
    """As a local leader ends: the outputs in ``outdir``, the output object on stdout."""
    try:
        outputs = download_outputs(api, cr["output_uuid"], outdir)
    except KeyboardInterrupt:
        logger.error("Interrupted while downloading: the outputs are in collection %s", cr["output_uuid"])
        return 130
    logger.info("Workflow outputs are in collection %s, downloaded to %s", cr["output_uuid"], outdir)
    json.dump(outputs, stdout, indent=4)
    stdout.write("\n")
    stdout.flush()
    return 0


def download_outputs(api: Any, output_uuid: str, outdir: Path) -> dict:
    """The output collection's files in ``outdir``, and its output object pointing at them."""
    import arvados.collection

    coll = arvados.collection.CollectionReader(output_uuid, api_client=arvados_client.unwrapped(api))
    with coll.open(OUTPUT_OBJECT, "r") as f:
        outputs = json.load(f)
    outdir.mkdir(parents=True, exist_ok=True)
    for name, reader in _walk(coll, ""):
        if name == OUTPUT_OBJECT:
            continue
        target = outdir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        with reader.open(name.rsplit("/", 1)[-1], "rb") as src, open(target, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
    return relocate_outputs(outputs, "", outdir.as_uri() + "/", True)


def _walk(node: Any, prefix: str):  # type: ignore[no-untyped-def]
    import arvados.collection

    for name in sorted(node.keys()):
        item = node[name]
        if isinstance(item, arvados.collection.RichCollectionBase):
            yield from _walk(item, f"{prefix}{name}/")
        else:
            yield prefix + name, node


def refuse_unhandled(args: list[str]) -> None:
    """A leader starting here although the command asked for a submission (the hook did not
    take over Toil's main): stop instead of silently running the workflow on this machine."""
    if wanted(args):
        raise ArvadosSetupError(f"{FLAG} works with toil-cwl-runner only, and needs toil-arvados installed with "
                                "its startup hook (toil_arvados.pth): run toil-cwl-runner, or reinstall toil-arvados")
