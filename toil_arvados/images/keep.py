"""Images in Keep, stored and found the way ``arv-keepdocker`` and Arvados do it.

An image is a collection holding ``<image id>.tar`` (the ``docker save`` archive), with a
``docker_image_hash`` link (name ``sha256:<image id>``) and one ``docker_image_repo+tag`` link
per name pointing at it; Arvados resolves a ``container_image`` name through those links, the
newest (``image_timestamp``) first, among what the requester can read.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

_CHUNK = 1 << 20


def repo_tag(image: str) -> str:
    """``name`` -> ``name:latest``, as arv-keepdocker and Docker complete a bare name (a
    ``name@digest`` or a name whose last component has a tag is kept)."""
    if "@" in image:
        return image
    return image if ":" in image.rsplit("/", 1)[-1] else image + ":latest"


def find_image(api: Any, image: str) -> Optional[dict]:
    """The newest readable collection registered under *image* (a name or a PDH), or None."""
    from ..arvados_client import list_all

    if "+" in image and len(image.split("+", 1)[0]) == 32:
        found = api.collections().list(filters=[["portable_data_hash", "=", image]], limit=1).execute()["items"]
        return found[0] if found else None
    links = list_all(api.links().list, [["link_class", "=", "docker_image_repo+tag"],
                                        ["name", "=", repo_tag(image)]], what="look up image links")
    links.sort(key=lambda l: ((l.get("properties") or {}).get("image_timestamp") or "", l.get("created_at") or ""),
               reverse=True)
    for link in links:
        found = api.collections().list(filters=[["uuid", "=", link["head_uuid"]]]).execute()["items"]
        if found:
            return found[0]
    return None


def store_image(api: Any, tarball: Path, image_id: str, names: tuple[str, ...], *,
                owner_uuid: Optional[str] = None, properties: Optional[dict] = None) -> str:
    """Upload *tarball* (once per image id) and register *names* for it; the collection's PDH."""
    owner = owner_uuid or api.users().current().execute()["uuid"]
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    coll = _by_hash(api, image_id, owner)
    if coll is None:
        # As arv-keepdocker: an image already in Keep elsewhere is copied into the project by
        # reference (same blocks, nothing uploaded); otherwise it is uploaded.
        elsewhere = _by_hash(api, image_id, None)
        props = {"docker-image-repo-tag": repo_tag(names[0]), **(properties or {})}
        if elsewhere is not None:
            coll = api.collections().create(body={"collection": {
                "name": _name(names[0], image_id), "owner_uuid": owner, "properties": props,
                "manifest_text": api.collections().get(uuid=elsewhere["uuid"]).execute()["manifest_text"]}},
                ensure_unique_name=True).execute()
        else:
            coll = _upload(api, tarball, image_id, names[0], owner, props)
        _link(api, "docker_image_hash", f"sha256:{image_id}", coll["uuid"], owner, stamp)
    have = {l["name"] for l in api.links().list(filters=[
        ["link_class", "=", "docker_image_repo+tag"], ["head_uuid", "=", coll["uuid"]]]).execute()["items"]}
    for name in names:
        if repo_tag(name) not in have:
            _link(api, "docker_image_repo+tag", repo_tag(name), coll["uuid"], owner, stamp)
    return coll["portable_data_hash"]


def _by_hash(api: Any, image_id: str, owner: Optional[str]) -> Optional[dict]:
    """The collection of image *image_id* (in project *owner*, if given)."""
    filters = [["link_class", "=", "docker_image_hash"], ["name", "=", f"sha256:{image_id}"]]
    if owner:
        filters.append(["owner_uuid", "=", owner])
    for link in api.links().list(filters=filters).execute()["items"]:
        found = api.collections().list(filters=[["uuid", "=", link["head_uuid"]]]).execute()["items"]
        if found:
            return found[0]
    return None


def _upload(api: Any, tarball: Path, image_id: str, name: str, owner: str, properties: dict) -> dict:
    import arvados.collection

    new = arvados.collection.Collection(api_client=api)
    with new.open(f"{image_id}.tar", "wb") as out, open(tarball, "rb") as src:
        for chunk in iter(lambda: src.read(_CHUNK), b""):
            out.write(chunk)
    new.save_new(name=_name(name, image_id), owner_uuid=owner, ensure_unique_name=True, properties=properties)
    return {"uuid": new.manifest_locator(), "portable_data_hash": new.portable_data_hash()}


def _name(name: str, image_id: str) -> str:
    return f"Docker image {repo_tag(name)} sha256:{image_id[:12]}"


def _link(api: Any, link_class: str, name: str, head_uuid: str, owner: str, stamp: str) -> None:
    api.links().create(body={"link": {"link_class": link_class, "name": name, "head_uuid": head_uuid,
                                      "owner_uuid": owner, "properties": {"image_timestamp": stamp}}}).execute()
