"""Collections: manifests stored unsigned, served signed, named by portable data hash.

As on a real cluster, a client may only put a block locator in a manifest if Keep signed that
locator for the client's token (proof it may read the block), the stored manifest drops those
signatures, and every read signs the locators again for the reader's token.
"""
from __future__ import annotations

import logging
from typing import Any

from . import manifest as mf
from .api import ApiError, Request, Trashable, unprocessable
from .auth import token_secret
from .signing import sign_locator, verify_locator
from .store import Store, timestamp

logger = logging.getLogger(__name__)


def manifest_attrs(manifest_text: str) -> dict[str, Any]:
    """The attributes Arvados derives from a manifest (hash, counts, sizes)."""
    stripped = mf.strip_signatures(manifest_text)
    count, size = mf.file_stats(stripped)
    return {
        "manifest_text": stripped,
        "portable_data_hash": mf.portable_data_hash(stripped),
        "file_count": count,
        "file_size_total": size,
    }


def store_manifest(store: Store, manifest_text: str, *, name: str, owner_uuid: str,
                   properties: dict | None = None, uuid: str | None = None) -> dict:
    """Save a system-made collection (container output and logs) straight into the store."""
    attrs = collection_defaults()
    attrs.update(manifest_attrs(manifest_text))
    attrs.update({"name": name, "owner_uuid": owner_uuid, "properties": properties or {}})
    rec = store.create("collections", attrs, by=store.system_user_uuid, uuid=uuid)
    return store.update(rec["uuid"], {"current_version_uuid": rec["uuid"]}, log=False, touch=False)


def collection_defaults() -> dict[str, Any]:
    return {
        "name": None, "description": None, "properties": {}, "manifest_text": "",
        "portable_data_hash": "d41d8cd98f00b204e9800998ecf8427e+0",
        "replication_desired": None, "replication_confirmed": None, "replication_confirmed_at": None,
        "storage_classes_desired": ["default"], "storage_classes_confirmed": [],
        "storage_classes_confirmed_at": None, "trash_at": None, "delete_at": None, "is_trashed": False,
        "current_version_uuid": None, "version": 1, "preserve_version": False,
        "file_count": 0, "file_size_total": 0,
    }


class Collections(Trashable):
    table = "collections"
    list_omits = frozenset({"manifest_text", "unsigned_manifest_text"})

    # Keep's permission signatures ----------------------------------------------------------

    def _sign(self, req: Request, manifest_text: str) -> str:
        secret = token_secret(req.user.token["api_token"])
        key, ttl = self.api.config.blob_signing_key, self.api.config.blob_signature_ttl
        return mf.sign_manifest(manifest_text, lambda loc: sign_locator(loc, secret, key, ttl))

    def _check_signatures(self, req: Request, manifest_text: str) -> None:
        """Refuse locators the caller was not given by Keep (Arvados: 422 naming the locator)."""
        if req.user.is_admin:
            return  # as on Arvados, admins may reference any block
        secret = token_secret(req.user.token["api_token"])
        key, ttl = self.api.config.blob_signing_key, self.api.config.blob_signature_ttl
        for loc in mf.locators(manifest_text):
            if loc.startswith("d41d8cd98f00b204e9800998ecf8427e+0"):
                continue
            if not verify_locator(loc, secret, key, ttl):
                raise unprocessable(f"Invalid signature on locator {loc.split('+A')[0]}: "
                                    "blocks must be written to Keep with your token before use in a manifest")

    # Hooks ---------------------------------------------------------------------------------

    def present(self, req: Request, record: dict) -> dict:
        if "manifest_text" in record:
            record["unsigned_manifest_text"] = record["manifest_text"]
            record["manifest_text"] = self._sign(req, record["manifest_text"])
        return record

    def prepare_create(self, req: Request, attrs: dict) -> dict:
        text = attrs.get("manifest_text") or ""
        self._validate_manifest(text)
        self._check_signatures(req, text)
        attrs.update(manifest_attrs(text))
        claimed = req.body("collection", "collections").get("portable_data_hash")
        if claimed and claimed != attrs["portable_data_hash"]:
            raise unprocessable(f"portable_data_hash {claimed} does not match manifest_text "
                                f"(computed {attrs['portable_data_hash']})")
        return attrs

    def prepare_update(self, req: Request, old: dict, changes: dict) -> dict:
        if "manifest_text" in changes:
            text = changes["manifest_text"] or ""
            self._validate_manifest(text)
            self._check_signatures(req, text)
            changes.update(manifest_attrs(text))
            if changes["portable_data_hash"] != old.get("portable_data_hash"):
                changes["version"] = (old.get("version") or 1) + 1
        if changes.get("trash_at") and changes["trash_at"] <= timestamp():
            changes["is_trashed"] = True
        if "is_trashed" in changes and not changes["is_trashed"]:
            changes.setdefault("trash_at", None)
        return changes

    def after_write(self, req: Request, record: dict, old: dict | None) -> None:
        if not record.get("current_version_uuid"):
            self.store.update(record["uuid"], {"current_version_uuid": record["uuid"]}, log=False, touch=False)

    def _validate_manifest(self, text: str) -> None:
        try:
            mf.parse(text)
        except mf.ManifestError as e:
            raise unprocessable(f"Invalid manifest_text: {e}") from None

    # Extra methods -------------------------------------------------------------------------

    async def get(self, req: Request) -> dict:
        uuid = req.params["uuid"]
        from .uuids import is_pdh

        if is_pdh(uuid):  # Arvados serves a collection by content hash too
            for rec in self.store.lookup("collections", "portable_data_hash", uuid):
                if rec.get("portable_data_hash") == uuid and self.visible(req, rec):
                    shown = self._shape(req, rec)
                    return {k: v for k, v in shown.items()
                            if k in ("kind", "portable_data_hash", "manifest_text", "unsigned_manifest_text",
                                     "file_count", "file_size_total")} | {"uuid": None, "etag": "", "owner_uuid": None}
            raise ApiError(404, "Path not found")
        record = self.fetch(req, uuid)
        if not self.visible(req, record):
            raise ApiError(404, "Path not found")
        return self._shape(req, record)

    async def provenance(self, req: Request) -> dict:
        rec = self.fetch(req, req.params["uuid"])
        return {rec["uuid"]: self._shape(req, rec)}

    async def used_by(self, req: Request) -> dict:
        rec = self.fetch(req, req.params["uuid"])
        return {rec["uuid"]: self._shape(req, rec)}
