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
                     port=args.port)
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
    p.set_defaults(func=_cluster_up)
    with_state(csub.add_parser("down", help="stop the cluster (its state is kept)")).set_defaults(func=_cluster_down)
    with_state(csub.add_parser("status", help="is the cluster running?")).set_defaults(func=_cluster_status)
    with_state(csub.add_parser("env", help="print the ARVADOS_API_* exports for a shell")).set_defaults(func=_cluster_env)
    p = with_state(csub.add_parser("register-image", help="register a stand-in Docker image name in Keep"))
    p.add_argument("image", help="image name, e.g. arvados/jobs:3.2.1")
    p.set_defaults(func=_register_image)

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
