"""One place to reach Arvados: client construction and user-facing error messages.

Credentials come from where the SDK always looks (``ARVADOS_API_HOST``/``ARVADOS_API_TOKEN``
environment variables, ``~/.config/arvados/settings.conf``), never from the command line, and
never appear in an error message. Failures become :class:`ArvadosSetupError`, one line that
names the problem and what to do, which the command-line entry points print without a traceback.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from typing import Any

logger = logging.getLogger(__name__)

NUM_RETRIES = 5
# The first contact (the discovery document) retries less: with NUM_RETRIES the SDK's randomised
# exponential backoff keeps a leader pointed at a dead host waiting 30-60 s before it can say so.
CONNECT_RETRIES = 3


class ArvadosSetupError(Exception):
    """A configuration problem the user must fix (bad token, unknown project, missing image...)."""


_clients: dict[tuple[str, str], Any] = {}
_lock = threading.Lock()


def api_host() -> str:
    import arvados.config

    return os.environ.get("ARVADOS_API_HOST") or arvados.config.get("ARVADOS_API_HOST", "")


def connect() -> Any:
    """A thread-safe SDK client for the configured cluster (cached per host and token)."""
    import arvados
    import arvados.config

    host = api_host()
    token = os.environ.get("ARVADOS_API_TOKEN") or arvados.config.get("ARVADOS_API_TOKEN", "")
    if not host or not token:
        raise ArvadosSetupError(
            "no Arvados credentials: set ARVADOS_API_HOST and ARVADOS_API_TOKEN (for the local cluster: "
            "eval \"$(toil-arvados cluster env)\")")
    key = (host, token)
    with _lock:
        client = _clients.get(key)
        if client is None:
            insecure = (os.environ.get("ARVADOS_API_HOST_INSECURE")
                        or arvados.config.get("ARVADOS_API_HOST_INSECURE", "")).lower() in ("1", "true", "yes")
            try:
                client = arvados.api("v1", host=host, token=token, insecure=insecure, num_retries=CONNECT_RETRIES)
            except Exception as e:
                raise ArvadosSetupError(describe(e, f"cannot reach the Arvados API at {host}")) from None
            _full_retries(client)
            _clients[key] = client
    return client


def _full_retries(client: Any) -> None:
    """Once the host answered, give every later call (in any thread) the full retry budget.

    ``arvados.api`` builds this thread's client at once and other threads' clients lazily from
    the same keyword arguments; the SDK's retry wrapper uses the larger of a call's own
    ``num_retries`` and the HTTP object's, so raising both is enough.
    """
    kwargs = getattr(client, "_api_kwargs", None)
    if isinstance(kwargs, dict):
        kwargs["num_retries"] = max(int(kwargs.get("num_retries") or 0), NUM_RETRIES)
    http = getattr(getattr(getattr(client, "local", None), "api", None), "_http", None)
    if http is not None and hasattr(http, "num_retries"):
        http.num_retries = max(int(http.num_retries or 0), NUM_RETRIES)


def describe(error: BaseException, context: str) -> str:
    """A one-line description of an SDK or HTTP error, with any token scrubbed out."""
    status = getattr(getattr(error, "resp", None), "status", None)
    detail = ""
    content = getattr(error, "content", None)
    if content:
        try:
            detail = "; ".join(json.loads(content.decode("utf-8", "replace"))["errors"])
        except (ValueError, KeyError, TypeError, AttributeError):
            detail = ""
    if not detail:
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
    hint = ""
    if status == 401:
        hint = ": check ARVADOS_API_TOKEN (it is missing, wrong or expired)"
    elif status == 403:
        hint = ": the token lacks permission for this"
    elif status is None and "Connection" in type(error).__name__ + detail or "timed out" in detail:
        hint = ": check ARVADOS_API_HOST and that the cluster is up"
    return scrub(f"{context}: {detail}{hint}")


def scrub(text: str) -> str:
    """Remove the API token (and its secret part) from text bound for logs or errors."""
    token = os.environ.get("ARVADOS_API_TOKEN", "")
    for secret in {token, token.split("/")[-1] if token.startswith("v2/") else ""}:
        if secret and len(secret) > 8:
            text = text.replace(secret, "<token>")
    return text


def check_connection(api: Any) -> dict:
    """The current user, or a clear error for a bad token / unreachable host."""
    try:
        return api.users().current().execute()
    except Exception as e:
        raise ArvadosSetupError(describe(e, f"cannot use the Arvados API at {api_host()}")) from None


def resolve_project(api: Any, project_uuid: str | None, user: dict) -> str:
    """The project to own requests and collections: given, or the user's home project."""
    if not project_uuid:
        return user["uuid"]
    if project_uuid == user["uuid"]:
        return project_uuid
    try:
        group = api.groups().get(uuid=project_uuid).execute()
    except Exception as e:
        status = getattr(getattr(e, "resp", None), "status", None)
        if status in (404, 422):
            raise ArvadosSetupError(
                f"project {project_uuid} not found on {api_host()}: check --arvadosProject "
                "(list projects with `arv group list` or create one)") from None
        raise ArvadosSetupError(describe(e, f"cannot look up project {project_uuid}")) from None
    if group.get("group_class") not in ("project", "filter"):
        raise ArvadosSetupError(f"{project_uuid} is a {group.get('group_class')} group, not a project: "
                                "give a project UUID to --arvadosProject")
    return project_uuid


def image_exists(api: Any, image: str) -> bool:
    """Whether ``image`` (``repo:tag`` or a portable data hash) is in Keep, as arv-keepdocker sees it."""
    from arvados.commands.keepdocker import list_images_in_arv  # the SDK's own image lookup

    repo, _, tag = image.partition(":")
    try:
        if _looks_like_pdh(image):
            found = api.collections().list(filters=[["portable_data_hash", "=", image]], limit=1,
                                           select=["uuid"]).execute()["items"]
        else:
            found = list_images_in_arv(api, NUM_RETRIES, repo, tag or "latest")
    except Exception as e:
        raise ArvadosSetupError(describe(e, f"cannot look up image {image}")) from None
    return bool(found)


def check_image(api: Any, image: str) -> None:
    """Fail early, with the fix, when the worker image is not in Keep."""
    repo, _, tag = image.partition(":")
    if not image_exists(api, image):
        raise ArvadosSetupError(
            f"worker image {image} not found in Keep on {api_host()}: upload it with "
            f"`arv-keepdocker {repo} {tag or 'latest'}` (local cluster: `toil-arvados cluster register-image {image}`), "
            "or choose another with --arvadosWorkerImage")


def _looks_like_pdh(value: str) -> bool:
    head, _, size = value.partition("+")
    return len(head) == 32 and size.isdigit()


def cluster_config(api: Any) -> dict:
    """The cluster's exported config (``GET /arvados/v1/config``), {} when not offered."""
    try:
        return api.configs().get().execute()
    except Exception as e:
        logger.debug("cluster config unavailable: %s", scrub(str(e)))
        return {}
