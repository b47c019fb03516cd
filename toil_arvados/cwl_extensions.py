"""The Arvados CWL extensions (``arv:`` hints and requirements) known to cwltool in this process.

cwltool validates a tool's ``requirements`` against its schema and only logs "Unknown hint" for
hints it has no schema for. Users of Arvados write ``arv:PartitionRequirement`` & co. either way,
so toil-arvados registers its own description of those classes
(``schemas/arvados-extensions.yml``) the way cwltool supports extension schemas
(``use_custom_schema``), and lists them as supported requirements. A hint or requirement with a
wrong value is then a validation error before anything runs, as for any CWL class.

cwltool keeps one custom schema per CWL version; with ``--enable-ext`` its own extension schema
is merged with ours instead of being replaced.
"""
from __future__ import annotations

import functools
import importlib.resources
import threading
from typing import Any

NAMESPACE = "http://arvados.org/cwl#"
SCHEMA_NAME = "http://arvados.org/cwl"
VERSIONS = ("v1.0", "v1.1", "v1.2")

#: The classes whose values toil-arvados acts on (see cwl_step_request.StepHints).
CLASSES = ("PartitionRequirement", "OutputStorageClass", "OutOfMemoryRetry", "RuntimeConstraints",
           "KeepCacheTypeRequirement", "APIRequirement", "ReuseRequirement", "ProcessProperties",
           "UsePreemptible")

_lock = threading.Lock()


@functools.cache
def schema_text() -> str:
    return importlib.resources.files("toil_arvados").joinpath("schemas/arvados-extensions.yml").read_text("utf-8")


def merged_schema(ours: str, theirs: str) -> str:
    """One schema document holding both graphs (pure): ``theirs`` (e.g. cwltool's extensions)
    first, then our classes, with both sets of namespaces."""
    from io import StringIO

    from ruamel.yaml import YAML

    yaml = YAML(typ="safe")
    a, b = yaml.load(theirs), yaml.load(ours)
    a.setdefault("$namespaces", {}).update(b.get("$namespaces") or {})
    a["$graph"] = list(a.get("$graph") or []) + [e for e in b["$graph"] if "$import" not in e]
    out = StringIO()
    yaml.dump(a, out)
    return out.getvalue()


def register() -> None:
    """Make cwltool in this process know our classes, for every CWL version (idempotent)."""
    import cwltool.process as process

    with _lock:
        for version in VERSIONS:
            current = process.custom_schemas.get(version)
            if current is not None and current[0] == SCHEMA_NAME:
                continue
            text = schema_text() if current is None else merged_schema(schema_text(), current[1])
            process.use_custom_schema(version, SCHEMA_NAME, text)
        for name in CLASSES:
            if NAMESPACE + name not in process.supportedProcessRequirements:
                process.supportedProcessRequirements.append(NAMESPACE + name)


def registered(version: str) -> bool:
    """Whether the schema cwltool uses for ``version`` is ours (alone or merged)."""
    import cwltool.process as process

    current = process.custom_schemas.get(version)
    return current is not None and current[0] == SCHEMA_NAME


def schema_names(version: str) -> Any:
    """cwltool's schema names for ``version`` with our extensions (see toil_patches)."""
    import cwltool.process as process

    register()
    return process.get_schema(version)[1]
