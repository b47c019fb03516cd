"""``toil-arvados``: manage the local cluster and run the demo.

Errors reach the user as one line naming the problem and what to do, never a traceback.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .localcluster.config import DEFAULT_STATE_DIR, ClusterConfig, parse_size


def _cluster_up(args: argparse.Namespace) -> int:
    from .localcluster import control

    cfg = control.up(args.state_dir, cores=args.cores, ram=parse_size(args.ram) if args.ram else None,
                     port=args.port, docker_host=args.docker_host)
    print(f"cluster {cfg.cluster_id} is up at https://{cfg.api_host} "
          f"({cfg.cores} cores, {cfg.ram >> 20} MiB RAM, state in {cfg.state_dir})")
    print(f"use it with: eval \"$(toil-arvados cluster env --state-dir {cfg.state_dir})\"")
    return 0


def _cluster_down(args: argparse.Namespace) -> int:
    from .localcluster import control

    print("cluster stopped" if control.down(args.state_dir) else "cluster was not running")
    return 0


def _load(state_dir: Path) -> ClusterConfig:
    if not (Path(state_dir) / "cluster.json").exists():
        raise SystemExit(f"toil-arvados: no cluster in {state_dir}: start one with `toil-arvados cluster up`")
    return ClusterConfig.load(Path(state_dir).resolve())


def _cluster_status(args: argparse.Namespace) -> int:
    from .localcluster import control

    cfg = _load(args.state_dir)
    if control.is_running(args.state_dir) and control.answers(cfg):
        print(f"running: https://{cfg.api_host} ({cfg.cores} cores, {cfg.ram >> 20} MiB RAM, state in {cfg.state_dir})")
        return 0
    print(f"stopped (state in {cfg.state_dir}); start it with `toil-arvados cluster up`")
    return 3


def _cluster_env(args: argparse.Namespace) -> int:
    from .localcluster import control

    cfg = _load(args.state_dir)
    print("\n".join(control.env_lines(cfg)))
    return 0


def _register_image(args: argparse.Namespace) -> int:
    from .localcluster import control
    from .localcluster.images import register_stand_in

    cfg = _load(args.state_dir)
    pdh = register_stand_in(control.client_env(cfg), args.image)
    print(f"{args.image} registered as a stand-in image: {pdh}")
    return 0


def _build_standins(args: argparse.Namespace) -> int:
    from .localcluster import control
    from .localcluster.runtime.selection import resolve_docker_host
    from .localcluster.standin_images import DEFAULT_CACHE_DIR, build_and_upload

    cfg = _load(args.state_dir)
    if not (control.is_running(args.state_dir) and control.answers(cfg)):
        raise control.ClusterError(f"the cluster in {cfg.state_dir} is not running: start it with "
                                   "`toil-arvados cluster up`")
    import arvados

    env = control.client_env(cfg)
    api = arvados.api("v1", host=env["ARVADOS_API_HOST"], token=env["ARVADOS_API_TOKEN"], insecure=True,
                      num_retries=3)
    docker_host = resolve_docker_host(args.docker_host or cfg.docker_host)
    for image in build_and_upload(api, docker_host, args.only, cache_dir=args.cache_dir or DEFAULT_CACHE_DIR,
                                  owner_uuid=args.project):
        print(f"{image.name}: sha256:{image.image_id[:12]} in Keep as {image.pdh} "
              f"({'built' if image.rebuilt else 'cached'} {image.seconds:.1f}s, upload {image.upload_seconds:.1f}s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="toil-arvados", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cluster = sub.add_parser("cluster", help="the single-machine Arvados-compatible cluster")
    csub = cluster.add_subparsers(dest="action", required=True)

    def with_state(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR,
                       help=f"where the cluster keeps its database and Keep blocks (default {DEFAULT_STATE_DIR})")
        return p

    p = with_state(csub.add_parser("up", help="start the cluster and wait until it answers"))
    p.add_argument("--cores", type=int, help="cores containers may use (default: all)")
    p.add_argument("--ram", help="RAM containers may use, e.g. 8G (default: all)")
    p.add_argument("--port", type=int, help="API server port (default: a free one)")
    p.add_argument("--docker-host", help="Docker engine for containers with real images, e.g. "
                   "unix:///run/docker.sock (default: $DOCKER_HOST, else Docker's default socket; "
                   "without an engine every container runs in the namespace runtime)")
    p.set_defaults(func=_cluster_up)
    with_state(csub.add_parser("down", help="stop the cluster (its state is kept)")).set_defaults(func=_cluster_down)
    with_state(csub.add_parser("status", help="is the cluster running?")).set_defaults(func=_cluster_status)
    with_state(csub.add_parser("env", help="print the ARVADOS_API_* exports for a shell")).set_defaults(func=_cluster_env)
    p = with_state(csub.add_parser("register-image", help="register a stand-in Docker image name in Keep"))
    p.add_argument("image", help="image name, e.g. arvados/jobs:3.2.1")
    p.set_defaults(func=_register_image)

    images = sub.add_parser("images", help="Docker images for the local cluster")
    isub = images.add_subparsers(dest="action", required=True)
    p = with_state(isub.add_parser(
        "build-standins", help="build the images the CWL suite names (debian:stable-slim, python:3-slim, "
        "bash:4.4, alpine:latest) from Debian packages and load them into the cluster's Keep"))
    p.add_argument("--only", action="append", metavar="IMAGE",
                   help="build just this image (repeatable; default: all four)")
    p.add_argument("--docker-host", help="Docker engine to build in (default: the cluster's, else $DOCKER_HOST)")
    p.add_argument("--cache-dir", type=Path,
                   help="where the debootstrap base filesystem is cached (default ~/.cache/toil-arvados)")
    p.add_argument("--project", help="project (or user) UUID to own the image collections (default: you)")
    p.set_defaults(func=_build_standins)

    demo = sub.add_parser("demo", help="start the local cluster and run the demo workflow on it")
    demo.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    demo.set_defaults(func=_demo)
    return parser


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.state_dir)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from .localcluster.control import ClusterError

    try:
        return args.func(args)
    except ClusterError as e:
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
