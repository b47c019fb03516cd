"""Before a CWL workflow starts on Arvados: is every image its tools name in Keep?

Toil calls ``try_prepull`` on the leader before the workflow starts (unless ``--no-prepull`` or
``--no-container``); for other batch systems it pulls images with Docker. On Arvados "pulling"
means the image must already be in Keep (``arv-keepdocker``), so for ``--batchSystem arvados``
we check every DockerRequirement instead, and a missing image stops the run with one line naming
it and how to upload it -- before any step has started, rather than when the first step that
needs it is submitted, possibly hours in.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, Iterator, Mapping

logger = logging.getLogger(__name__)


def docker_requirements(process: Any) -> Iterator[dict]:
    """Every DockerRequirement (requirement or hint) of a loaded cwltool process and its steps."""
    seen: set[int] = set()

    def walk(p: Any) -> Iterator[dict]:
        if id(p) in seen:
            return
        seen.add(id(p))
        for entry in list(getattr(p, "requirements", []) or []) + list(getattr(p, "hints", []) or []):
            if isinstance(entry, dict) and entry.get("class") == "DockerRequirement":
                yield entry
        for step in getattr(p, "steps", []) or []:
            for entry in list(getattr(step, "requirements", []) or []) + list(getattr(step, "hints", []) or []):
                if isinstance(entry, dict) and entry.get("class") == "DockerRequirement":
                    yield entry
            embedded = getattr(step, "embedded_tool", None)
            if embedded is not None:
                yield from walk(embedded)

    yield from walk(process)


def missing_images(images: Iterable[str], exists: Callable[[str], bool]) -> list[str]:
    """The images (each once, in order) for which ``exists`` says no (pure)."""
    out: list[str] = []
    for image in images:
        if image not in out and not exists(image):
            out.append(image)
    return out


def load_process(uri: str) -> Any:
    """The workflow (or tool) at ``uri`` as cwltool objects, steps' tools embedded."""
    import cwltool.load_tool
    import cwltool.workflow
    from cwltool.context import LoadingContext

    return cwltool.load_tool.load_tool(uri, LoadingContext({
        "strict": False, "construct_tool_object": cwltool.workflow.default_make_tool}))


def check_workflow_images(uri: str, api: Any | None = None) -> None:
    """Raise a one-line :class:`ArvadosSetupError` if an image the workflow names is not in Keep."""
    from . import arvados_client
    from .cwl_step import image_name

    try:
        tool = load_process(uri)
    except Exception as e:  # Toil loads the workflow next and reports what is wrong with it
        logger.debug("image check skipped, the workflow did not load: %s", e)
        return
    images = [image_name(req, "") for req in docker_requirements(tool)]
    images = [i for i in images if i]
    if not images:
        return
    api = api or arvados_client.connect()
    missing = missing_images(images, lambda image: arvados_client.image_exists(api, image))
    if missing:
        first = missing[0]
        more = f"; {len(missing) - 1} more missing: {', '.join(missing[1:])}" if len(missing) > 1 else ""
        raise arvados_client.ArvadosSetupError(
            arvados_client.missing_image_message(first, f"image (DockerRequirement of {uri.rsplit('/', 1)[-1]})")
            + f"{more}; or run with --no-container")
    logger.info("All %d images the workflow names are in Keep", len(set(images)))


def arvados_batch_system(argv: list[str], environ: Mapping[str, str]) -> bool:
    """Whether this toil-cwl-runner command runs with ``--batchSystem arvados`` (pure)."""
    import argparse

    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    p.add_argument("--batchSystem", default=environ.get("TOIL_BATCH_SYSTEM"))
    known, _ = p.parse_known_args(argv)
    return bool(known.batchSystem == "arvados")


def native_steps_on_keep(argv: list[str], environ: Mapping[str, str]) -> bool:
    """Whether this toil-cwl-runner command runs native steps with a Keep job store (pure).

    Read from the command line because Toil's CWL main does not hand its options to the check.
    """
    import argparse

    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    p.add_argument("--batchSystem", default=environ.get("TOIL_BATCH_SYSTEM"))
    p.add_argument("--jobStore", default=None)
    p.add_argument("--noArvadosNativeSteps", action="store_true")
    known, _ = p.parse_known_args(argv)
    return (known.batchSystem == "arvados" and not known.noArvadosNativeSteps
            and str(known.jobStore or "").startswith("arvados:"))
