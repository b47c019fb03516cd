"""A run's final outputs as one Arvados collection, as ``arvados-cwl-runner`` saves them.

Every ``toil-cwl-runner --batchSystem arvados`` run (without ``--destBucket``) saves its final
outputs as one new collection in the run's project, named ``--arvadosOutputName`` or, as
``arvados-cwl-runner`` names it, "Output from workflow <label or file name>", with the properties
``--arvadosOutputProperties KEY=VALUE ...`` and the workflow's ``arv:OutputCollectionProperties``
(values evaluated against the inputs; the command line wins on a clash). The files are laid out as
Toil lays them out in ``--outdir``, plus ``cwl.output.json`` (the output object with locations
relative to the collection), and are added by reference to their Keep blocks: no bytes move for
files already in Keep (every file of a Keep job store). The output object Toil prints then names
``keep:<pdh>/<path>`` locations, unless ``--outdir`` was given: then Toil also downloads the
outputs there and prints local paths, as it always has (the collection is saved all the same).

The name and properties are settled when the root job is made (the tool and its inputs are at
hand then) and kept in the job store, so ``--restart`` saves the same collection.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import tempfile
from argparse import ArgumentParser, ArgumentTypeError, _ArgumentGroup
from typing import Any, Iterator, Mapping
from urllib.parse import quote

logger = logging.getLogger(__name__)

#: Shared file of the job store holding the collection's name and properties.
SPEC_FILE = "toil_arvados_output_spec.json"
OUTPUT_PROPERTIES_REQ = "http://arvados.org/cwl#OutputCollectionProperties"
CWL_OUTPUT_JSON = "cwl.output.json"
_FILE_TYPES = ("File", "CreateFile", "WritableFile", "CreateWritableFile")
_STAGE_ROOT = "/toil-arvados-output"  # where Toil's path mapper is asked to lay the outputs out


class OutputOptionError(ArgumentTypeError):
    """A malformed ``--arvadosOutputProperties`` item (argparse prints it as one line)."""


def add_options(parser: ArgumentParser | _ArgumentGroup) -> None:
    """The output collection's options (Toil's camelCase, as the batch system's others)."""
    parser.add_argument("--arvadosOutputName", dest="arvados_output_name", default=None,
                        help="Name of the collection that holds the workflow's final outputs (default: "
                             "\"Output from workflow <workflow label or file name>\", as arvados-cwl-runner)")
    # One KEY=VALUE per flag, repeated: a list (nargs="+") would swallow the workflow argument.
    parser.add_argument("--arvadosOutputProperties", "--arvadosOutputProperty", dest="arvados_output_properties",
                        action="append", default=None, metavar="KEY=VALUE", type=property_item,
                        help="A property of the output collection (repeat the option for more); added to "
                             "the workflow's arv:OutputCollectionProperties")


# -- pure mappings -----------------------------------------------------------------------------

def property_item(item: str) -> str:
    """argparse ``type``: ``KEY=VALUE`` with a non-empty key, else one clear error."""
    key, eq, _value = item.partition("=")
    if not eq or not key.strip():
        raise OutputOptionError(f"{item!r} is not KEY=VALUE; write e.g. --arvadosOutputProperties sample=NA12878")
    return item


def parse_properties(items: list[str] | None) -> dict[str, str]:
    """``["k=v", ...]`` -> ``{"k": "v"}`` (a later key wins)."""
    out: dict[str, str] = {}
    for item in items or ():
        key, _eq, value = property_item(item).partition("=")
        out[key.strip()] = value
    return out


def cleanup_name(name: str) -> str:
    """A collection name can hold no ``/`` (arvados-cwl-runner turns them into spaces)."""
    return name.replace("/", " ")[:255]


def workflow_name(tool_doc: Mapping[str, Any], metadata: Mapping[str, Any] | None = None) -> str:
    """The workflow's label, else the base name of its id (as arvados-cwl-runner names runs)."""
    label = tool_doc.get("label") or (metadata or {}).get("label")
    return str(label or os.path.basename(str(tool_doc.get("id") or "workflow")))


def default_output_name(name: str) -> str:
    return cleanup_name(f"Output from workflow {name}")


def relocate(outobj: Any, location_of: Any) -> None:
    """Point every File/Directory of ``outobj`` at ``location_of(location)``; drop local paths."""
    from cwltool.utils import visit_class

    def adjust(f: dict) -> None:
        f["location"] = location_of(f["location"])
        for key in ("path", "contents", "dirname"):
            f.pop(key, None)

    visit_class(outobj, ("File", "Directory"), adjust)


# -- the spec: name and properties, settled with the root job --------------------------------------

def make_spec(tool: Any, job_order: Mapping[str, Any], runtime_context: Any, options: Any) -> dict:
    """The collection's name and properties for this run (requirement values evaluated)."""
    name = getattr(options, "arvados_output_name", None) or default_output_name(
        workflow_name(tool.tool, getattr(tool, "metadata", None)))
    props: dict[str, Any] = {}
    req, _ = tool.get_requirement(OUTPUT_PROPERTIES_REQ)
    if req:
        builder = tool._init_job(copy.deepcopy(dict(job_order)), runtime_context)
        for prop in _property_defs(req.get("outputProperties")):
            props[str(prop["propertyName"])] = builder.do_eval(prop.get("propertyValue"))
    props.update(parse_properties(getattr(options, "arvados_output_properties", None)))
    return {"name": cleanup_name(name), "properties": props}


def _property_defs(defs: Any) -> list[dict]:
    """``outputProperties`` as a list of PropertyDefs (also written as a propertyName map)."""
    if isinstance(defs, Mapping):
        return [{"propertyName": k, "propertyValue": v} for k, v in defs.items()]
    return [d for d in defs or () if isinstance(d, Mapping) and "propertyName" in d]


def save_spec(job_store: Any, spec: dict) -> None:
    with job_store.write_shared_file_stream(SPEC_FILE) as f:
        f.write(json.dumps(spec).encode())


def load_spec(job_store: Any, options: Any) -> dict:
    """The spec saved with the root job; a default one for a store made before there was one."""
    try:
        with job_store.read_shared_file_stream(SPEC_FILE) as f:
            return dict(json.loads(f.read()))
    except Exception:  # NoSuchFileException, but only Toil knows which class: any failure -> default
        name = getattr(options, "arvados_output_name", None) or default_output_name(
            os.path.basename(str(getattr(options, "cwltool", "") or "workflow")))
        return {"name": cleanup_name(name),
                "properties": parse_properties(getattr(options, "arvados_output_properties", None))}


# -- saving ----------------------------------------------------------------------------------------

def save_outputs(toil: Any, outobj: Any, spec: Mapping[str, Any], project_uuid: str, api: Any,
                 compute_checksum: bool) -> tuple[str, str, Any]:
    """Save ``outobj``'s files as the run's output collection: (uuid, pdh, output object with
    ``keep:`` locations). ``outobj`` itself is left as it was."""
    from toil.cwl.cwltoil import ToilPathMapper

    from .keep_url import save_outputs_collection

    mapped = copy.deepcopy(outobj)
    entries = list(_file_objects(mapped))
    pm = ToilPathMapper(entries, "", _STAGE_ROOT, separateDirs=False, stage_listing=True)
    files: dict[str, str] = {}
    contents: dict[str, bytes] = {}
    urls = _public_urls(toil, [ent for _key, ent in pm.items() if ent.staged])
    with tempfile.TemporaryDirectory(prefix="toil-arvados-out-") as tmp:
        for _key, ent in pm.items():
            if ent.staged:
                _add_entry(toil, ent, _relative(ent.target), files, contents, tmp, urls)
        relative = copy.deepcopy(mapped)
        relocate(relative, lambda loc: quote(_relative(pm.mapper(loc).target)))
        contents[CWL_OUTPUT_JSON] = json.dumps(relative, indent=4, sort_keys=True).encode()
        uuid, pdh = save_outputs_collection(api, project_uuid, spec["name"], files, contents=contents,
                                            properties=dict(spec.get("properties") or {}))
    relocate(mapped, lambda loc: f"keep:{pdh}/{quote(_relative(pm.mapper(loc).target))}")
    if compute_checksum:
        _add_checksums(api, pdh, mapped)
    return uuid, pdh, mapped


def _file_objects(obj: Any) -> Iterator[dict]:
    """Every top-level File/Directory of an output object (with secondaryFiles), as Toil stages them."""
    if isinstance(obj, dict):
        if obj.get("class") in ("File", "Directory"):
            yield obj
            yield from _file_objects(obj.get("secondaryFiles") or [])
        else:
            for v in obj.values():
                yield from _file_objects(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _file_objects(v)


def _relative(target: str) -> str:
    return target[len(_STAGE_ROOT):].lstrip("/")


def _public_urls(toil: Any, entries: list) -> dict[str, str]:
    """The ``keep:`` URLs of the outputs already in the job store, looked up together (one
    batched call for what the leader's job store knows, instead of one call per file)."""
    from toil.fileStores import FileID

    from .jobstore.keep_jobstore import KeepJobStore

    store = getattr(toil, "_jobStore", None)
    ids = [str(FileID.unpack(str(e.resolved)[len("toilfile:"):])) for e in entries
           if e.type in _FILE_TYPES and str(e.resolved).startswith("toilfile:")]
    return store.public_urls(ids) if isinstance(store, KeepJobStore) and ids else {}


def _add_entry(toil: Any, ent: Any, path: str, files: dict[str, str], contents: dict[str, bytes], tmp: str,
               urls: Mapping[str, str]) -> None:
    """One path-mapper entry into the collection: by Keep reference when it is in Keep."""
    resolved = str(ent.resolved)
    if ent.type in ("CreateFile", "CreateWritableFile"):
        contents[path] = resolved.encode("utf-8")
    elif ent.type in ("Directory", "WritableDirectory"):
        if resolved.startswith("keep:"):  # a Keep directory passed through (its listing may be absent)
            files[path] = resolved
    elif ent.type in _FILE_TYPES:
        files[path] = _source_of(toil, resolved, tmp, urls)


def _source_of(toil: Any, resolved: str, tmp: str, urls: Mapping[str, str]) -> str:
    """A ``keep:`` URL or local path holding a file the output object names."""
    from toil.cwl.cwltoil import decode_directory
    from toil.fileStores import FileID

    if resolved.startswith("toildir:"):
        here, subpath, _, _, _ = decode_directory(resolved)
        for part in (subpath or "").split("/") if subpath else ():
            here = here[part]
        resolved = str(here)
    if resolved.startswith("keep:"):
        return resolved
    if resolved.startswith("file:") or resolved.startswith("/"):
        from cwltool.utils import uri_file_path

        return uri_file_path(resolved) if resolved.startswith("file:") else resolved
    if not resolved.startswith("toilfile:"):
        resolved = "toilfile:" + toil.import_file(resolved, symlink=False).pack()
    file_id = FileID.unpack(resolved[len("toilfile:"):])
    public = urls.get(str(file_id)) or _keep_url_of(toil, file_id)
    if public:
        return public
    local = tempfile.mkdtemp(dir=tmp)
    dest = os.path.join(local, "f")
    toil.export_file(file_id, "file://" + quote(dest))
    return dest


def _keep_url_of(toil: Any, file_id: Any) -> str | None:
    from .jobstore.keep_jobstore import KeepJobStore

    store = getattr(toil, "_jobStore", None)
    return str(store.get_public_url(file_id)) if isinstance(store, KeepJobStore) else None


def _add_checksums(api: Any, pdh: str, outobj: Any) -> None:
    """sha1 and size of each File that has none yet, read from the saved collection (what Toil
    would compute from ``--outdir``; it cannot read ``keep:`` locations itself)."""
    import arvados.collection
    from cwltool.utils import visit_class
    from urllib.parse import unquote

    prefix = f"keep:{pdh}/"
    reader = arvados.collection.CollectionReader(pdh, api_client=api)

    def add(f: dict) -> None:
        if "checksum" in f or not str(f.get("location", "")).startswith(prefix):
            return
        sha1 = hashlib.sha1()
        size = 0
        with reader.open(unquote(f["location"][len(prefix):]), "rb") as src:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                sha1.update(chunk)
                size += len(chunk)
        f["checksum"] = f"sha1${sha1.hexdigest()}"
        f["size"] = size

    visit_class(outobj, ("File",), add)
