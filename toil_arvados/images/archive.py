"""Docker image archives: the ``docker save`` format ``arv-keepdocker`` stores in Keep.

An archive is a tar holding ``manifest.json`` (``[{"Config", "RepoTags", "Layers"}]``), the image
config (``<image id>.json``, whose ``rootfs.diff_ids`` are the sha256 of each uncompressed layer)
and one tar per layer.  The image id is the sha256 of the config bytes, which is why
``arv-keepdocker`` names the file in Keep ``<image id>.tar``.

This module writes such archives from layer tars (so images are built without a Docker engine)
and reads them back: the image's run settings (Env, Entrypoint, WorkingDir) and its layers,
verified against their diff ids while they are unpacked.
"""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator, Optional

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_CHUNK = 1 << 20


class ArchiveError(ValueError):
    """The tarball is not a usable ``docker save`` archive; the message says what is wrong."""


@dataclass(frozen=True)
class RunSettings:
    """What an image contributes to running a command in it (Docker's semantics)."""

    env: dict[str, str]
    entrypoint: tuple[str, ...] = ()
    workdir: str = ""

    def argv(self, command: list[str]) -> list[str]:
        """The process Docker starts for a container command: ENTRYPOINT + command."""
        return [*self.entrypoint, *command]

    def environment(self, container_env: dict[str, str]) -> dict[str, str]:
        """The image's ENV overlaid by the container's environment (the container wins)."""
        return {**self.env, **container_env}


def run_settings(config: dict) -> RunSettings:
    """The run settings of an image config (the ``<image id>.json`` document)."""
    cfg = config.get("config") or config.get("container_config") or {}
    env: dict[str, str] = {}
    for item in cfg.get("Env") or []:
        key, _, value = str(item).partition("=")
        env[key] = value
    env.setdefault("PATH", DEFAULT_PATH)
    return RunSettings(env=env, entrypoint=tuple(cfg.get("Entrypoint") or ()),
                       workdir=str(cfg.get("WorkingDir") or ""))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def image_config(diff_ids: list[str], *, env: dict[str, str], entrypoint: list[str] | None = None,
                 cmd: list[str] | None = None, labels: dict[str, str] | None = None,
                 comment: str = "") -> bytes:
    """A deterministic image config document for layers with these (hex) diff ids."""
    config = {
        "architecture": "amd64", "os": "linux", "created": "1970-01-01T00:00:00Z",
        "config": {"Env": [f"{k}={v}" for k, v in env.items()], "Entrypoint": entrypoint,
                   "Cmd": cmd, "Labels": labels or {}},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{d}" for d in diff_ids]},
        "comment": comment,
    }
    return json.dumps(config, sort_keys=True).encode()


def write_archive(out: Path, layers: list[Path], config: bytes, repo_tags: list[str]) -> str:
    """Write a ``docker save`` archive of *layers* (tar files, bottom first); its image id."""
    image_id = hashlib.sha256(config).hexdigest()
    diff_ids = [d.removeprefix("sha256:") for d in json.loads(config)["rootfs"]["diff_ids"]]
    members = [f"{d}/layer.tar" for d in diff_ids]
    manifest = json.dumps([{"Config": f"{image_id}.json", "RepoTags": repo_tags,
                            "Layers": members}]).encode()
    with tarfile.open(out, "w", format=tarfile.GNU_FORMAT) as tar:
        _add_bytes(tar, f"{image_id}.json", config)
        for member, layer in zip(members, layers):
            info = tar.gettarinfo(str(layer), arcname=member)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            with open(layer, "rb") as f:
                tar.addfile(info, f)
        _add_bytes(tar, "manifest.json", manifest)
    return image_id


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), 0
    tar.addfile(info, io.BytesIO(data))


@dataclass(frozen=True)
class ArchiveIndex:
    """Where things are in an archive: its config and its layer members, bottom first."""

    image_id: str
    config: dict
    layers: tuple[tuple[str, str], ...]  # (diff id hex, member name)


def read_index(fileobj: IO[bytes]) -> ArchiveIndex:
    """Read manifest.json and the config of an archive (seekable *fileobj*)."""
    try:
        with tarfile.open(fileobj=fileobj, mode="r:") as tar:
            manifest = json.load(_member(tar, "manifest.json"))
            if not isinstance(manifest, list) or len(manifest) != 1:
                raise ArchiveError("manifest.json must describe exactly one image")
            entry = manifest[0]
            raw = _member(tar, entry["Config"]).read()
    except (tarfile.TarError, KeyError, TypeError, ValueError) as e:
        if isinstance(e, ArchiveError):
            raise
        raise ArchiveError(f"not a docker save archive ({e})") from None
    config = json.loads(raw)
    diff_ids = [d.removeprefix("sha256:") for d in config.get("rootfs", {}).get("diff_ids", [])]
    members = list(entry.get("Layers") or [])
    if len(diff_ids) != len(members):
        raise ArchiveError("the image config lists a different number of layers than manifest.json")
    return ArchiveIndex(hashlib.sha256(raw).hexdigest(), config, tuple(zip(diff_ids, members)))


def _member(tar: tarfile.TarFile, name: str) -> IO[bytes]:
    f = tar.extractfile(name)
    if f is None:
        raise ArchiveError(f"{name} is not a file in the archive")
    return f


def layer_stream(fileobj: IO[bytes], member: str) -> Iterator[bytes]:
    """The bytes of one layer member, uncompressed, in chunks."""
    fileobj.seek(0)
    with tarfile.open(fileobj=fileobj, mode="r:") as tar:
        f = _member(tar, member)
        head = f.read(2)
        if head == b"\x1f\x8b":  # a gzip-compressed layer (OCI archives may have them)
            import zlib

            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            yield d.decompress(head)
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                yield d.decompress(chunk)
            yield d.flush()
            return
        yield head
        yield from iter(lambda: f.read(_CHUNK), b"")


def find_tarball(directory: Path) -> Optional[Path]:
    """The ``<image id>.tar`` of an image collection (as arv-keepdocker names it)."""
    tars = sorted(directory.glob("*.tar"))
    return tars[0] if tars else None
