"""Stand-in Docker images: registering an image name in Keep when no Docker engine is present.

Arvados finds images as ``arv-keepdocker`` stores them: a collection holding ``<image id>.tar``
(a ``docker save`` tarball) plus a ``docker_image_hash`` link (name ``sha256:<id>``) and a
``docker_image_repo+tag`` link (name ``repo:tag``) pointing at it. Tools such as
``arvados-cwl-runner`` refuse to submit work whose image is not found that way. On this cluster's
namespace runtime the image is recorded, not run, so a *stand-in*, a valid but empty image
tarball marked as such in the collection's properties, is enough to make the name resolvable.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import time
from typing import Mapping

STAND_IN_PROPERTY = "toil_arvados.stand_in"


def stand_in_tarball(image: str) -> tuple[str, bytes]:
    """A minimal ``docker save``-format tarball (one empty layer) for ``image``: (image id, bytes)."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w"):
        pass
    layer_bytes = layer.getvalue()
    layer_id = hashlib.sha256(layer_bytes).hexdigest()
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "created": "1970-01-01T00:00:00Z",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_id}"]},
        "comment": f"toil-arvados stand-in for {image}",
    }, sort_keys=True).encode()
    image_id = hashlib.sha256(config).hexdigest()
    manifest = json.dumps([{"Config": f"{image_id}.json", "RepoTags": [repo_tag(image)],
                            "Layers": [f"{layer_id}/layer.tar"]}]).encode()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in ((f"{image_id}.json", config), (f"{layer_id}/layer.tar", layer_bytes),
                           ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return image_id, out.getvalue()


def repo_tag(image: str) -> str:
    return image if ":" in image.rsplit("/", 1)[-1] else image + ":latest"


def register_stand_in(env: Mapping[str, str], image: str, project_uuid: str | None = None) -> str:
    """Upload a stand-in for ``image`` (idempotent) and return its collection's PDH."""
    import arvados
    import arvados.collection

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        api = arvados.api("v1", host=env["ARVADOS_API_HOST"], token=env["ARVADOS_API_TOKEN"], insecure=True)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    tag = repo_tag(image)
    existing = api.links().list(filters=[["link_class", "=", "docker_image_repo+tag"],
                                         ["name", "=", tag]]).execute()["items"]
    for link in existing:
        found = api.collections().list(filters=[["uuid", "=", link["head_uuid"]]]).execute()["items"]
        if found:
            return found[0]["portable_data_hash"]
    image_id, tarball = stand_in_tarball(image)
    coll = arvados.collection.Collection(api_client=api)
    with coll.open(f"{image_id}.tar", "wb") as f:
        f.write(tarball)
    owner = project_uuid or api.users().current().execute()["uuid"]
    coll.save_new(name=f"Docker image {tag} sha256:{image_id[:12]}", owner_uuid=owner,
                  properties={STAND_IN_PROPERTY: "empty image: the namespace runtime runs commands on the "
                                                  "host filesystem", "docker-image-repo-tag": tag},
                  ensure_unique_name=True)
    timestamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for link_class, name in (("docker_image_hash", f"sha256:{image_id}"), ("docker_image_repo+tag", tag)):
        api.links().create(body={"link": {
            "link_class": link_class, "name": name, "head_uuid": coll.manifest_locator(),
            "owner_uuid": owner, "properties": {"image_timestamp": timestamp}}}).execute()
    return coll.portable_data_hash()
