"""Keep block permission signatures (``+A<hmac>@<expiry>`` hints).

The HMAC message layout follows Arvados (``hash@token@expiryhex@ttlhex``
keyed with the cluster's blob signing key) so signatures look and behave
like real ones: bound to one token, to the TTL setting, and to an expiry.
For ``v2/<uuid>/<secret>`` tokens only the secret is signed, so a client may
present the same token in either the v1 (bare secret) or v2 form.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time

_SIGNED_RE = re.compile(r"^([0-9a-f]{32})(?:\+[^+]*)*?\+A([0-9a-f]{40})@([0-9a-f]{8})(?:\+.*)?$")
_PERM_HINT_RE = re.compile(r"\+A[^+]*")


def token_secret(token: str) -> str:
    """The part of an API token that signatures are bound to."""
    if token.startswith("v2/"):
        parts = token.split("/")
        if len(parts) >= 3:
            return parts[2]
    return token


def _signature(md5: str, token: str, expiry_hex: str, key: str, ttl_seconds: int) -> str:
    msg = f"{md5}@{token_secret(token)}@{expiry_hex}@{int(ttl_seconds):x}"
    return hmac.new(key.encode(), msg.encode(), hashlib.sha1).hexdigest()


def sign_locator(locator: str, token: str, key: str, ttl_seconds: int,
                 now: float | None = None, expires_at: int | None = None) -> str:
    """Return ``locator`` with a fresh permission hint appended.

    Any existing ``+A`` hint is dropped first so re-signing never stacks
    hints.  ``expires_at`` lets callers cap the expiry (e.g. at a
    collection's ``trash_at``) as the API server does.
    """
    base = _PERM_HINT_RE.sub("", locator)
    expiry = int(now if now is not None else time.time()) + int(ttl_seconds)
    if expires_at is not None:
        expiry = min(expiry, int(expires_at))
    expiry_hex = f"{expiry:08x}"
    return f"{base}+A{_signature(base[:32], token, expiry_hex, key, ttl_seconds)}@{expiry_hex}"


def signature_expiry(locator: str) -> int | None:
    """Unix time the locator's signature expires, or None if unsigned."""
    m = _SIGNED_RE.match(locator)
    return int(m.group(3), 16) if m else None


def verify_locator(locator: str, token: str, key: str, ttl_seconds: int,
                   now: float | None = None) -> bool:
    """True iff the locator carries a valid, unexpired signature for ``token``."""
    m = _SIGNED_RE.match(locator)
    if not m or not token:
        return False
    md5, sig, expiry_hex = m.groups()
    if int(expiry_hex, 16) <= (now if now is not None else time.time()):
        return False
    return hmac.compare_digest(sig, _signature(md5, token, expiry_hex, key, ttl_seconds))
