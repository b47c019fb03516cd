"""Arvados object identifiers: ``<cluster>-<type code>-<15 random chars>``.

The five-character type code in the middle is how Arvados (and the SDK, e.g. ``arv-ls``) tells a
collection UUID from a project UUID, so ours must use the same codes.
"""
from __future__ import annotations

import re
import secrets
import string

from .registry import KINDS

#: Resource table name -> (Arvados kind, five-character type code), from the registry.
RESOURCE_KINDS: dict[str, tuple[str, str]] = {
    t: (k.kind, k.uuid_code) for t, k in KINDS.items() if k.kind and k.uuid_code
}

TYPE_CODE_TO_TABLE = {code: table for table, (_kind, code) in RESOURCE_KINDS.items()}
KIND_TO_TABLE = {kind: table for table, (kind, _code) in RESOURCE_KINDS.items()}

UUID_RE = re.compile(r"^([a-z0-9]{5})-([a-z0-9]{5})-([a-z0-9]{15})$")
PDH_RE = re.compile(r"^([0-9a-f]{32})\+(\d+)$")

BASE36 = string.digits + string.ascii_lowercase


def new_uuid(cluster_id: str, table: str) -> str:
    """A fresh random UUID for an object stored in ``table``: as Arvados makes the tail, the last
    15 base-36 digits of a 256-bit random number (15 divisions, not 15 draws from the OS)."""
    code = RESOURCE_KINDS[table][1]
    n, digits = secrets.randbits(256), []
    for _ in range(15):
        n, r = divmod(n, 36)
        digits.append(BASE36[r])
    return f"{cluster_id}-{code}-{''.join(reversed(digits))}"


def table_of(uuid: str) -> str | None:
    """The resource table a UUID belongs to, or None if it is not a UUID we know."""
    m = UUID_RE.match(uuid or "")
    return TYPE_CODE_TO_TABLE.get(m.group(2)) if m else None


def kind_of_table(table: str) -> str:
    return RESOURCE_KINDS[table][0]


def is_pdh(value: str) -> bool:
    """True for a portable data hash (``<md5>+<size>``), which names a collection by content."""
    return bool(PDH_RE.match(value or ""))
