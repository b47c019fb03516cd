"""``toil-arvados``: manage the local cluster and run the demo.

Errors reach the user as one line naming the problem and what to do, never a traceback.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .localcluster.config import DEFAULT_STATE_DIR, ClusterConfig, find_state_dir, parse_size


def _state_dir(args: argparse.Namespace) -> Path:
    """The cluster a command is about: ``--state-dir``; else the local cluster whose recorded
    address ``ARVADOS_API_HOST`` names (what `cluster env` exported); else the default."""
    from .localcluster.control import ClusterError

    if args.state_dir is not None:
        return Path(args.state_dir).resolve()
    host = os.environ.get("ARVADOS_API_HOST")
    if host:
        found = find_state_dir(host)
        if found is None:
            raise ClusterError(f"ARVADOS_API_HOST={host} is no local cluster known here: pass --state-dir, "
                               "or unset ARVADOS_API_HOST for the default cluster")
        return found
    return DEFAULT_STATE_DIR


def _storage_classes(value: str | None) -> list[str] | None:
    return [c.strip() for c in value.split(",") if c.strip()] if value else None


def _cluster_up(args: argparse.Namespace) -> int:
    from .localcluster import control

    cfg = control.up(_state_dir(args), cores=args.cores, ram=parse_size(args.ram) if args.ram else None,
                     port=args.port, docker_host=args.docker_host, if_running="refuse",
                     storage_classes=_storage_classes(args.storage_classes))
    print(f"cluster {cfg.cluster_id} is up at https://{cfg.api_host} "
          f"({cfg.cores} cores, {cfg.ram >> 20} MiB RAM, state in {cfg.state_dir})")
    print(f"use it with: eval \"$(toil-arvados cluster env --state-dir {cfg.state_dir})\"")
    return 0


def _cluster_down(args: argparse.Namespace) -> int:
    from .localcluster import control

    stopped = control.down(_state_dir(args), keep_containers=args.keep_containers)
    print(("cluster stopped; running containers keep running until the next `up` adopts them" if args.keep_containers
           else "cluster stopped") if stopped else "cluster was not running")
    return 0


def _load(state_dir: Path) -> ClusterConfig:
    if not (Path(state_dir) / "cluster.json").exists():
        raise SystemExit(f"toil-arvados: no cluster in {state_dir}: start one with `toil-arvados cluster up`")
    return ClusterConfig.load(Path(state_dir).resolve())


def _cluster_status(args: argparse.Namespace) -> int:
    from .localcluster import control

    state_dir = _state_dir(args)
    cfg = _load(state_dir)
    if control.is_running(state_dir):
        if control.answers(cfg):
            print(f"running: https://{cfg.api_host} ({cfg.cores} cores, {cfg.ram >> 20} MiB RAM, "
                  f"state in {cfg.state_dir})")
            return 0
        print(f"not answering: a cluster process holds {cfg.state_dir} but https://{cfg.api_host} does not "
              "answer (starting, or hung: `toil-arvados cluster down` stops it)")
        return 4
    print(f"stopped (state in {cfg.state_dir}); start it with `toil-arvados cluster up`")
    return 3


def _cluster_env(args: argparse.Namespace) -> int:
    from .localcluster import control

    cfg = _load(_state_dir(args))
    print("\n".join(control.env_lines(cfg)))
    return 0


def _build_worker(args: argparse.Namespace) -> int:
    from .images.cache import DEFAULT_CACHE_DIR
    from .images.worker import build_worker_image

    _check_upload_target(args)
    built = build_worker_image(args.cache_dir or DEFAULT_CACHE_DIR)
    _report(built, args)
    return 0


def _build_images(args: argparse.Namespace) -> int:
    from .images.build import SUITE_RECIPES, build_image
    from .images.cache import DEFAULT_CACHE_DIR

    names = args.names or list(SUITE_RECIPES)
    unknown = sorted(set(names) - set(SUITE_RECIPES))
    if unknown:
        raise ValueError(f"no recipe for image {unknown[0]}: choose from {', '.join(SUITE_RECIPES)} "
                         "(the worker image: toil-arvados images build-worker)")
    _check_upload_target(args)
    for name in names:
        _report(build_image(SUITE_RECIPES[name], args.cache_dir or DEFAULT_CACHE_DIR), args)
    return 0


def _check_upload_target(args: argparse.Namespace) -> None:
    """With --upload, fail in one line within seconds, before building anything, if the API
    does not answer (the SDK would retry for a minute or more before saying so)."""
    if not args.upload:
        return
    from . import arvados_client
    from .localcluster.control import ClusterError, host_answers

    host = arvados_client.api_host()
    if host and not host_answers(host):
        raise ClusterError(f"the Arvados API at {host} does not answer: check ARVADOS_API_HOST and that "
                           "the cluster is up (`toil-arvados cluster status`)")


def _report(built, args: argparse.Namespace) -> None:
    """Print what was built and, with --upload, store it in Keep where ARVADOS_API_HOST says."""
    line = (f"{built.name}: sha256:{built.image_id[:12]} ({'built' if built.rebuilt else 'cached'} "
            f"in {built.seconds:.1f}s, {built.tarball})")
    if args.upload:
        from . import arvados_client
        from .images.keep import store_image

        api = arvados_client.connect()
        arvados_client.check_connection(api)
        pdh = store_image(api, built.tarball, built.image_id, (*built.names, *args.name), owner_uuid=args.project,
                          properties=built.properties)
        line += f"; in Keep on {arvados_client.api_host()} as {pdh}"
    print(line)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="toil-arvados", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cluster = sub.add_parser("cluster", help="the single-machine Arvados-compatible cluster")
    csub = cluster.add_subparsers(dest="action", required=True)

    def with_state(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--state-dir", type=Path, default=None,
                       help="where the cluster keeps its database and Keep blocks (default: the local "
                            f"cluster ARVADOS_API_HOST names, if set, else {DEFAULT_STATE_DIR})")
        return p

    p = with_state(csub.add_parser("up", help="start the cluster and wait until it answers"))
    p.add_argument("--cores", type=int, help="cores containers may use (default: all)")
    p.add_argument("--ram", help="RAM containers may use, e.g. 8G (default: all)")
    p.add_argument("--port", type=int, help="API server port (default: a free one)")
    p.add_argument("--docker-host", help="Docker engine for containers with real images, e.g. "
                   "unix:///run/docker.sock (default: $DOCKER_HOST, else Docker's default socket; "
                   "without an engine every container runs in the namespace runtime)")
    p.add_argument("--storage-classes", metavar="CLASS[,CLASS...]",
                   help="Keep storage classes the cluster declares (StorageClasses), the first the default "
                        "(default: default)")
    p.set_defaults(func=_cluster_up)
    down = with_state(csub.add_parser("down", help="stop the cluster (its state is kept)"))
    down.add_argument("--keep-containers", action="store_true",
                      help="stop only the services (API, Keep, websocket, dispatcher): running containers "
                           "keep running and the next `up` adopts them, as on a cluster whose services restart")
    down.set_defaults(func=_cluster_down)
    with_state(csub.add_parser("status", help="is the cluster running?")).set_defaults(func=_cluster_status)
    with_state(csub.add_parser("env", help="print the ARVADOS_API_* exports for a shell")).set_defaults(func=_cluster_env)

    images = sub.add_parser("images", help="container images, built from Debian packages without Docker")
    isub = images.add_subparsers(dest="action", required=True)

    def image_options(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--upload", action="store_true",
                       help="store the image in Keep as arv-keepdocker does, on the cluster "
                            "ARVADOS_API_HOST/ARVADOS_API_TOKEN name")
        p.add_argument("--project", help="project (or user) UUID to own the image collection (default: you)")
        p.add_argument("--name", action="append", default=[], metavar="REPO:TAG",
                       help="with --upload: also register the image under this name (repeatable)")
        p.add_argument("--cache-dir", type=Path, help="build cache (default ~/.cache/toil-arvados)")
        return p

    image_options(isub.add_parser(
        "build-worker", help="build the Toil worker image for this leader's toil and toil-arvados "
        "versions")).set_defaults(func=_build_worker)
    p = image_options(isub.add_parser(
        "build", help="build the images the CWL suite names (debian:stable-slim, python:3-slim, "
        "bash:4.4, alpine:latest) from Debian packages"))
    p.add_argument("names", nargs="*", metavar="IMAGE", help="just these (default: all four)")
    p.set_defaults(func=_build_images)

    demo = with_state(sub.add_parser("demo", help="start the local cluster and run the demo workflow on it"))
    demo.set_defaults(func=_demo)
    return parser


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(_state_dir(args))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from .arvados_client import ArvadosSetupError
    from .images.archive import ArchiveError
    from .images.debian import ImageBuildError
    from .localcluster.control import ClusterError

    try:
        return args.func(args)
    except (ClusterError, ArvadosSetupError, ImageBuildError, ArchiveError) as e:
        print(f"toil-arvados: {e}", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"toil-arvados: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("toil-arvados: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
