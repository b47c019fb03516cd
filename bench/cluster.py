"""Benchmark of the local cluster on this machine: API round trip, dispatch overhead, Keep throughput.

Not a test: it starts its own cluster in a temp dir (with a fresh image layer cache, so the first
container shows what unpacking its image costs, once per image), measures through the real SDK,
prints a compact table and writes the figures to ``bench/out/cluster.json``. Targets (reported,
not enforced): dispatch overhead < 0.3 s with a cached image, Keep >= 100 MB/s for writes and reads.

    /work/main/.venv/bin/python bench/cluster.py [--api-calls 200] [--containers 20] [--keep-mib 256]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

from toil_arvados.localcluster import control
from toil_arvados.timestamps import parse_timestamp

log = logging.getLogger(__name__)

OUT = Path(__file__).resolve().parent / "out" / "cluster.json"
DISPATCH_TARGET_S = 0.3
KEEP_TARGET_MBPS = 100.0
IMAGE = "debian:stable-slim"


def _api(env: dict[str, str]):
    import arvados

    return arvados.api("v1", host=env["ARVADOS_API_HOST"], token=env["ARVADOS_API_TOKEN"], insecure=True,
                       num_retries=2)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _timed(n: int, call: Callable[[], Any]) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        out.append(time.perf_counter() - t0)
    return out


def bench_api(api, n: int) -> dict[str, Any]:
    """Median and p95 round trip of two cheap calls, after a few warm-up calls."""
    figures: dict[str, Any] = {}
    for name, call in (("users.current", lambda: api.users().current().execute()),
                       ("collections.list(limit=1)", lambda: api.collections().list(limit=1).execute())):
        _timed(5, call)
        times = _timed(n, call)
        figures[name] = {"calls": n, "median_ms": statistics.median(times) * 1e3,
                         "p95_ms": _percentile(times, 0.95) * 1e3}
    return figures


class _FinalWatcher:
    """Websocket subscription telling when a container request reaches Final (client wall clock)."""

    def __init__(self, api) -> None:
        import arvados.events

        self._seen: dict[str, float] = {}
        self._cond = threading.Condition()
        self._ws = arvados.events.subscribe(api, [["object_uuid", "is_a", "arvados#containerRequest"]],
                                            self._on_event)

    def _on_event(self, ev: dict) -> None:
        new = (ev.get("properties") or {}).get("new_attributes") or {}
        if new.get("state") == "Final":
            with self._cond:
                self._seen.setdefault(ev["object_uuid"], time.time())
                self._cond.notify_all()

    def wait(self, uuid: str, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        with self._cond:
            while uuid not in self._seen:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"container request {uuid} did not reach Final within {timeout:.0f}s")
                self._cond.wait(left)
            return self._seen[uuid]

    def close(self) -> None:
        self._ws.close()


def _store_image(api) -> None:
    from toil_arvados.images.build import SUITE_RECIPES, build_image
    from toil_arvados.images.keep import store_image

    built = build_image(SUITE_RECIPES[IMAGE])
    store_image(api, built.tarball, built.image_id, built.names, properties=built.properties)


def _unpack_seconds(api, cr: dict) -> float | None:
    """What the first container's crunch log says unpacking its image took."""
    import re

    import arvados.collection

    log = arvados.collection.CollectionReader(cr["log_uuid"], api_client=api).open("crunch-run.txt").read()
    m = re.search(r"unpacked image sha256:\S+ in ([0-9.]+)s", log)
    return float(m.group(1)) if m else None


def bench_dispatch(api, n: int) -> dict[str, Any]:
    """Sequential `true` containers, no reuse: client commit -> Final seen, and the server's phases.
    The first one unpacks the image (timed apart); the figures are over the n after it."""
    watcher = _FinalWatcher(api)
    client, queued, running, total = [], [], [], []
    unpack: float | None = None
    try:
        for i in range(n + 1):
            body = {"name": f"bench true {i}", "state": "Committed", "priority": 1, "use_existing": False,
                    "command": ["true"], "container_image": IMAGE, "output_path": "/out", "cwd": "/out",
                    "mounts": {"/out": {"kind": "tmp", "capacity": 1 << 20}},
                    "runtime_constraints": {"vcpus": 1, "ram": 64 << 20}}
            cr = api.container_requests().create(body=body).execute()
            committed = time.time()
            seen = watcher.wait(cr["uuid"], timeout=60)
            cr = api.container_requests().get(uuid=cr["uuid"]).execute()
            c = api.containers().get(uuid=cr["container_uuid"]).execute()
            if c["state"] != "Complete" or c["exit_code"] != 0:
                raise RuntimeError(f"container {c['uuid']} ended {c['state']} exit {c['exit_code']}; "
                                   "see the cluster's server.log")
            if i == 0:
                unpack = _unpack_seconds(api, cr)
                continue
            created, started, finished = (parse_timestamp(c[k]) for k in ("created_at", "started_at",
                                                                          "finished_at"))
            client.append(seen - committed)
            queued.append(started - created)
            running.append(finished - started)
            total.append(finished - created)
    finally:
        watcher.close()
    return {"containers": n, "image_unpack_s": unpack,
            "commit_to_final_seen_median_s": statistics.median(client),
            "commit_to_final_seen_p95_s": _percentile(client, 0.95),
            "created_to_started_median_s": statistics.median(queued),
            "started_to_finished_median_s": statistics.median(running),
            "created_to_finished_median_s": statistics.median(total)}


def _cpu_seconds(pid: int | None = None) -> float:
    """CPU time (user + system) of this process, or of another one through /proc."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_keep(env: dict[str, str], mib: int, server_pid: int) -> dict[str, Any]:
    """Write ``mib`` MiB of distinct random bytes into a collection, then read them back.

    Besides wall time, the CPU seconds the client (SDK) and the cluster process spent: those
    hardly depend on other load on the machine, which skews wall-clock throughput.
    """
    import arvados.collection

    size = mib << 20
    data = os.urandom(size)  # made before timing; distinct blocks, so no dedup shortcut
    chunk = 1 << 20
    api = _api(env)
    cpu0 = (_cpu_seconds(), _cpu_seconds(server_pid))
    t0 = time.perf_counter()
    coll = arvados.collection.Collection(api_client=api)
    with coll.open("data.bin", "wb") as f:
        view = memoryview(data)
        for off in range(0, size, chunk):
            f.write(view[off:off + chunk])
    coll.save_new(name=f"bench keep {time.time_ns()}")
    write_s = time.perf_counter() - t0
    cpu1 = (_cpu_seconds(), _cpu_seconds(server_pid))
    pdh = coll.portable_data_hash()

    reader_api = _api(env)  # a fresh client: no block cache shared with the writer
    t0 = time.perf_counter()
    reader = arvados.collection.CollectionReader(pdh, api_client=reader_api)
    got = 0
    check = bytearray()
    with reader.open("data.bin", "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            if got < chunk:
                check += block
            got += len(block)
    read_s = time.perf_counter() - t0
    cpu2 = (_cpu_seconds(), _cpu_seconds(server_pid))
    if got != size or bytes(check[:chunk]) != data[:chunk]:
        raise RuntimeError(f"read back {got} bytes of {size}, or the first MiB differs")
    mb = size / 1e6
    return {"mib": mib, "write_s": write_s, "read_s": read_s,
            "write_MBps": mb / write_s, "read_MBps": mb / read_s,
            "write_cpu_s": {"client": cpu1[0] - cpu0[0], "cluster": cpu1[1] - cpu0[1]},
            "read_cpu_s": {"client": cpu2[0] - cpu1[0], "cluster": cpu2[1] - cpu1[1]}}


def _table(fig: dict[str, Any]) -> str:
    rows = []
    for name, r in fig["api"].items():
        rows.append((f"API {name}", f"median {r['median_ms']:.2f} ms, p95 {r['p95_ms']:.2f} ms", ""))
    d = fig["dispatch"]
    rows.append(("image unpack (first container only)", f"{d['image_unpack_s']} s", "once per image"))
    rows.append(("dispatch: commit -> Final seen (client)",
                 f"median {d['commit_to_final_seen_median_s']:.3f} s, p95 {d['commit_to_final_seen_p95_s']:.3f} s",
                 "ok" if d["commit_to_final_seen_median_s"] < DISPATCH_TARGET_S else "MISSED (< 0.3 s)"))
    rows.append(("dispatch: created -> started (server)", f"median {d['created_to_started_median_s']:.3f} s", ""))
    rows.append(("dispatch: started -> finished (server)", f"median {d['started_to_finished_median_s']:.3f} s", ""))
    rows.append(("dispatch: created -> finished (server)", f"median {d['created_to_finished_median_s']:.3f} s", ""))
    k = fig["keep"]
    for way in ("write", "read"):
        ok = k[f"{way}_MBps"] >= KEEP_TARGET_MBPS
        cpu = k[f"{way}_cpu_s"]
        rows.append((f"Keep {way} {k['mib']} MiB", f"{k[f'{way}_MBps']:.0f} MB/s ({k[f'{way}_s']:.2f} s; cpu "
                     f"client {cpu['client']:.2f} s, cluster {cpu['cluster']:.2f} s)",
                     "ok" if ok else "MISSED (>= 100 MB/s)"))
    width = max(len(r[0]) for r in rows)
    vwidth = max(len(r[1]) for r in rows)
    lines = [f"{'measure':<{width}}  {'value':<{vwidth}}  target", "-" * (width + vwidth + 12)]
    lines += [f"{a:<{width}}  {b:<{vwidth}}  {c}" for a, b, c in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api-calls", type=int, default=200)
    parser.add_argument("--containers", type=int, default=20)
    parser.add_argument("--keep-mib", type=int, default=256)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="toil-arvados-bench-") as tmp:
        state = Path(tmp) / "cluster"
        os.environ["TOIL_ARVADOS_LAYER_CACHE"] = str(Path(tmp) / "layers")  # the cluster inherits it
        cfg = control.up(state, cores=2, ram=4 << 30)
        try:
            env = control.client_env(cfg)
            os.environ.update(env)
            api = _api(env)
            _store_image(api)
            # Other work on the machine skews every figure: record the load next to them.
            figures = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                                   "loadavg_1m_at_start": round(os.getloadavg()[0], 2)},
                       "api": bench_api(api, args.api_calls),
                       "dispatch": bench_dispatch(api, args.containers),
                       "keep": bench_keep(env, args.keep_mib, int((state / "server.pid").read_text())),
                       "targets": {"dispatch_overhead_s": DISPATCH_TARGET_S, "keep_MBps": KEEP_TARGET_MBPS}}
        finally:
            control.down(state)
    figures["machine"]["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    print(_table(figures))
    m = figures["machine"]
    print(f"machine: {m['cpus']} cpus, load average {m['loadavg_1m_at_start']} at start, "
          f"{m['loadavg_1m_at_end']} at end (figures are unreliable when it exceeds the cpu count)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"figures written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
