"""Toil plugin module: registers ``keep:`` URL access (Arvados Keep) with Toil.

Toil imports every installed top-level module whose name starts with ``toil_url_access_`` (see
``toil.lib.plugins``); this one registers a loader for the ``keep`` scheme. The loader imports the
implementation lazily, so Toil pays for the Arvados SDK only when a ``keep:`` URL is used.
"""
from toil.lib.plugins import register_plugin


def _keep_url_access() -> type:
    from toil_arvados.keep_url import KeepURLAccess

    return KeepURLAccess


register_plugin("url_access", "keep", _keep_url_access)
