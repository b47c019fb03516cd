"""``keep:`` URLs for :func:`urllib.request.urlopen`, through urllib's own handler mechanism.

Why: Toil's user-script deployment (``toil.resource.Resource``) downloads the script from the
job store's public URL with ``urlopen``; a Keep job store's URLs are ``keep:<pdh>/<name>``
(fetched with the worker's own token, never a token in the URL).  Installing a handler is
urllib's documented extension point, so nothing of Toil is patched.
"""
from __future__ import annotations

import email.message
import urllib.request
import urllib.response
from urllib.parse import urlparse


class KeepHandler(urllib.request.BaseHandler):
    """Opens ``keep:`` URLs with :mod:`toil_arvados.keep_url` (streaming, read-only)."""

    def keep_open(self, req: urllib.request.Request) -> urllib.response.addinfourl:
        from .keep_url import KeepURLAccess

        url = req.full_url
        stream = KeepURLAccess._open_url(urlparse(url))
        return urllib.response.addinfourl(stream, email.message.Message(), url, 200)


def install() -> None:
    """Make ``urlopen`` understand ``keep:`` in this process (keeps urllib's default handlers)."""
    urllib.request.install_opener(urllib.request.build_opener(KeepHandler()))
