"""``--arvadosSubmit``: the workflow and its inputs made readable on the cluster.

As arvados-cwl-runner ``--submit`` does: the workflow is packed into one document (every
``run:``/``$import`` inlined) and the input object is read with cwltool's own loader; every
local file or directory either of them names is uploaded to one Keep collection, keeping its
layout below their common parent, and its location rewritten to ``keep:<pdh>/<path>``.
Nothing of this machine's disk is needed once the runner request exists.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from . import arvados_client
from .arvados_client import ArvadosSetupError
from .cwl_submit_request import common_parent, local_paths, to_keep

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20


def pack_workflow(workflow: str) -> tuple[str, dict]:
    """The workflow's URI, and the workflow packed into one document whose process is ``#main``."""
    from cwltool.context import LoadingContext
    from cwltool.load_tool import fetch_document, resolve_and_validate_document, resolve_tool_uri
    from cwltool.pack import pack

    context = LoadingContext({})
    uri, _ = resolve_tool_uri(workflow, context.resolver, context.fetcher_constructor)
    context, document, uri = fetch_document(uri, context)
    context, uri = resolve_and_validate_document(context, document, uri)
    return uri, _plain(pack(context, uri))


def load_job_order(path: str) -> dict:
    """The input object in ``path`` (YAML or JSON), locations made absolute as cwltool makes them."""
    from cwltool.main import jobloaderctx
    from schema_salad.ref_resolver import Loader, file_uri

    if not os.path.isfile(path):
        raise ArvadosSetupError(f"input object {path} is not a file: give the workflow's inputs as one YAML "
                                "or JSON file")
    loader = Loader(jobloaderctx)
    document, _ = loader.resolve_ref(file_uri(os.path.abspath(path)), checklinks=False)
    order = _plain(document)
    if not isinstance(order, dict):
        raise ArvadosSetupError(f"input object {path} is not a mapping of input names to values")
    for key in ("id", "__id"):  # the loader's note of where the file was: this machine's path
        order.pop(key, None)
    return order


def upload_local_files(api: Any, project: str, name: str, packed: dict, job_order: dict) -> tuple[dict, dict]:
    """``packed`` and ``job_order`` with their local files uploaded to one new collection."""
    paths = local_paths([packed, job_order])
    if not paths:
        return packed, job_order
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise ArvadosSetupError(f"input {missing[0]} does not exist: fix its location in the input object")
    base = common_parent(paths)
    pdh = _upload(api, project, name, paths, base)
    logger.info("Uploaded %d local inputs to Keep: %s", len(paths), pdh)
    return to_keep(packed, pdh, base), to_keep(job_order, pdh, base)


def _upload(api: Any, project: str, name: str, paths: list[str], base: str) -> str:
    import arvados.collection

    coll = arvados.collection.Collection(api_client=arvados_client.unwrapped(api))
    for path in paths:
        files = [Path(path)] if os.path.isfile(path) else sorted(p for p in Path(path).rglob("*") if p.is_file())
        if os.path.isdir(path) and not files:
            coll.mkdirs(os.path.relpath(path, base))
        for f in files:
            with open(f, "rb") as src, coll.open(os.path.relpath(f, base), "wb") as dst:
                while chunk := src.read(_CHUNK):
                    dst.write(chunk)
    coll.save_new(name=f"Inputs of {name}", owner_uuid=project, ensure_unique_name=True)
    return str(coll.portable_data_hash())


def _plain(doc: Any) -> Any:
    """ruamel's commented maps and sequences as plain dicts and lists (JSON for the request)."""
    if isinstance(doc, dict):
        return {str(k): _plain(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_plain(v) for v in doc]
    return doc
