"""Benchmark: does the local cluster's API latency stay flat as records pile up?

A workflow runner makes thousands of container requests (and several collections each) in one
run, so every lookup it makes must cost the same at 10,000 records as at 100. This starts a fresh
cluster, seeds a few records, times the lookups, loads many more records through the real SDK
(concurrently, as the dispatcher's worker threads and a runner's threads write), then times the
same lookups again. Not a test: it prints a table and writes ``bench/out/cluster_load.json``.

    .venv/bin/python bench/cluster_load.py [--collections 5000] [--requests 2000] [--calls 40]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from toil_arvados.localcluster import control

OUT = Path(__file__).resolve().parent / "out" / "cluster_load.json"
SEED = 100  # records there are before the first measurement (uuid-in lists need 100 uuids)


def _api(env: dict[str, str]):
    import arvados

    return arvados.api("v1", host=env["ARVADOS_API_HOST"], token=env["ARVADOS_API_TOKEN"], insecure=True,
                       num_retries=2)


def _manifest(i: int) -> str:
    """A one-file manifest with its own (fake) block, so every collection has its own PDH.

    The bench runs as the admin, whose manifests need no Keep signatures (as on Arvados)."""
    md5 = hashlib.md5(f"block {i}".encode()).hexdigest()
    return f". {md5}+10 0:10:file{i}.txt\n"


def _collection(api, i: int, owner: str) -> dict:
    return api.collections().create(body={"collection": {
        "name": f"load collection {i}", "owner_uuid": owner, "manifest_text": _manifest(i),
        # As a Keep job store's files: found again by the job they belong to.
        "properties": {"toil_kind": "file", "cleanup_job": f"job {i // 3}"}}},
        ensure_unique_name=True).execute()


def _request(api, i: int, owner: str) -> dict:
    return api.container_requests().create(body={"container_request": {
        "name": f"load request {i}", "owner_uuid": owner, "state": "Uncommitted", "priority": 1,
        "command": ["echo", str(i)], "container_image": "debian:stable-slim", "output_path": "/out",
        "cwd": "/tmp", "runtime_constraints": {"vcpus": 1, "ram": 64 << 20},
        "mounts": {"/out": {"kind": "tmp", "capacity": 1 << 20}}}}).execute()


def _server_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) the cluster process has used, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _timed(n: int, call: Callable[[int], Any], server_pid: int) -> dict[str, float]:
    """Wall time per call (median, p95, min) and the cluster's CPU time per call: on a busy
    machine wall times swing with other work, while CPU time shows what a call costs the server."""
    times = []
    cpu0 = _server_cpu_seconds(server_pid)
    for i in range(n):
        t0 = time.perf_counter()
        call(i)
        times.append(time.perf_counter() - t0)
    cpu = _server_cpu_seconds(server_pid) - cpu0
    ordered = sorted(times)
    return {"median_ms": statistics.median(times) * 1e3,
            "p95_ms": ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))] * 1e3,
            "min_ms": ordered[0] * 1e3, "server_cpu_ms": cpu / n * 1e3}


class Lookups:
    """The calls a runner makes per job, timed against whatever the cluster holds now."""

    def __init__(self, api, reader, owner: str, collections: list[dict], requests: list[dict],
                 server_pid: int) -> None:
        self.api, self.reader, self.owner, self.server_pid = api, reader, owner, server_pid
        self.collections, self.requests = collections, requests
        self.round = 0

    def measure(self, n: int) -> dict[str, dict[str, float]]:
        self.round += 1
        api, owner, cols, crs = self.api, self.owner, self.collections, self.requests
        uuids = [c["uuid"] for c in cols[:100]]
        cr_uuids = [c["uuid"] for c in crs[:100]]
        tag = f"r{self.round}"
        calls: dict[str, Callable[[int], Any]] = {
            "collections.create ensure_unique_name (name taken)": lambda i: api.collections().create(
                body={"collection": {"name": cols[0]["name"], "owner_uuid": owner,
                                     "manifest_text": _manifest(10**7 + self.round * 1000 + i)}},
                ensure_unique_name=True).execute(),
            "collections.create ensure_unique_name (new name)": lambda i: api.collections().create(
                body={"collection": {"name": f"fresh {tag} {i}", "owner_uuid": owner, "manifest_text": ""}},
                ensure_unique_name=True).execute(),
            "collections.list uuid in [100]": lambda i: _check(len(api.collections().list(
                filters=[["uuid", "in", uuids]], limit=100).execute()["items"]) == 100),
            "collections.list portable_data_hash =": lambda i: _check(len(api.collections().list(
                filters=[["portable_data_hash", "=", cols[i % len(cols)]["portable_data_hash"]]]
            ).execute()["items"]) >= 1),
            "collections.list owner_uuid= name= (job store)": lambda i: _check(len(api.collections().list(
                filters=[["owner_uuid", "=", owner], ["name", "=", cols[i % len(cols)]["name"]]]
            ).execute()["items"]) == 1),
            "collections.list owner_uuid= properties.job= (job store)": lambda i: _check(len(
                api.collections().list(filters=[["owner_uuid", "=", owner],
                                                ["properties.cleanup_job", "=", f"job {i % (len(cols) // 3)}"]]
                                       ).execute()["items"]) >= 3),
            "collections.get": lambda i: api.collections().get(uuid=cols[i % len(cols)]["uuid"]).execute(),
            "non-admin: collections.list portable_data_hash =": lambda i: _check(len(self.reader.collections().list(
                filters=[["portable_data_hash", "=", cols[i % len(cols)]["portable_data_hash"]]]
            ).execute()["items"]) >= 1),
            "non-admin: collections.get": lambda i: self.reader.collections().get(
                uuid=cols[i % len(cols)]["uuid"]).execute(),
            "container_requests.create (Uncommitted)": lambda i: _request(api, 10**7 + self.round * 1000 + i,
                                                                         owner),
            "container_requests.list uuid in [100]": lambda i: _check(len(api.container_requests().list(
                filters=[["uuid", "in", cr_uuids]], limit=100).execute()["items"]) == len(cr_uuids)),
            "container_requests.list state=Committed": lambda i: api.container_requests().list(
                filters=[["state", "=", "Committed"]], limit=10).execute(),
            "container_requests.get": lambda i: api.container_requests().get(
                uuid=crs[i % len(crs)]["uuid"]).execute(),
        }
        for call in calls.values():  # warm up connections and code paths
            call(0)
        return {name: _timed(n, call, self.server_pid) for name, call in calls.items()}


def _reader(api, env: dict[str, str], project: str):
    """A client for a non-admin user who may read ``project`` (a permission link): their calls
    go through the permission checks an admin's skip."""
    user = api.users().create(body={"user": {
        "first_name": "Load", "last_name": "Reader", "email": "reader@localhost", "username": "reader",
        "is_active": True}}).execute()
    token = api.api_client_authorizations().create(body={"api_client_authorization": {
        "owner_uuid": user["uuid"]}}).execute()["api_token"]
    api.links().create(body={"link": {"link_class": "permission", "name": "can_read",
                                      "tail_uuid": user["uuid"], "head_uuid": project}}).execute()
    return _api({**env, "ARVADOS_API_TOKEN": token})


def _check(ok: bool) -> None:
    if not ok:
        raise RuntimeError("a lookup returned the wrong number of records")


def load(env: dict[str, str], make: Callable[[Any, int, str], dict], start: int, count: int, owner: str,
         threads: int) -> tuple[list[dict], float]:
    """``count`` records made by ``threads`` concurrent clients (one SDK client each: they are not
    thread-safe); returns them and the creates per second."""
    local = threading.local()

    def one(i: int) -> dict:
        if not hasattr(local, "api"):
            local.api = _api(env)
        return make(local.api, i, owner)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        made = list(pool.map(one, range(start, start + count)))
    return made, count / (time.perf_counter() - t0)


def _table(fig: dict[str, Any]) -> str:
    before, after = fig["before"], fig["after"]
    width = max(len(k) for k in before)
    cols = "median / p95 / min / server cpu"
    head = f"{'ms per call':<{width}}  {'at ' + str(fig['records_before']) + ': ' + cols:>36}  " \
           f"{'at ' + str(fig['records_after']) + ': ' + cols:>37}"
    lines = [head, "-" * len(head)]
    for name, b in before.items():
        a = after[name]
        lines.append(f"{name:<{width}}  " + "   ".join(
            f"{r['median_ms']:7.2f} /{r['p95_ms']:7.2f} /{r['min_ms']:6.2f} /{r['server_cpu_ms']:6.2f}"
            for r in (b, a)))
    lines.append(f"load: collections {fig['load']['collections_per_s']:.0f}/s, "
                 f"container requests {fig['load']['requests_per_s']:.0f}/s "
                 f"({fig['load']['threads']} client threads)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collections", type=int, default=5000)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--calls", type=int, default=40, help="timed calls per lookup and round")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="toil-arvados-bench-load-") as tmp:
        state = Path(tmp) / "cluster"
        cfg = control.up(state, cores=2, ram=4 << 30)
        try:
            env = control.client_env(cfg)
            api = _api(env)
            owner = api.groups().create(body={"group": {"name": "load", "group_class": "project"}}).execute()["uuid"]
            cols, _ = load(env, _collection, 0, SEED, owner, args.threads)
            crs, _ = load(env, _request, 0, SEED, owner, args.threads)
            lookups = Lookups(api, _reader(api, env, owner), owner, cols, crs,
                              int((state / "server.pid").read_text()))
            figures: dict[str, Any] = {"loadavg_1m_at_start": round(os.getloadavg()[0], 2),
                                       "records_before": 2 * SEED}
            figures["before"] = lookups.measure(args.calls)
            more_cols, cps = load(env, _collection, SEED, args.collections - SEED, owner, args.threads)
            more_crs, rps = load(env, _request, SEED, args.requests - SEED, owner, args.threads)
            lookups.collections, lookups.requests = cols + more_cols, crs + more_crs
            figures["records_after"] = args.collections + args.requests
            figures["load"] = {"collections_per_s": cps, "requests_per_s": rps, "threads": args.threads}
            figures["after"] = lookups.measure(args.calls)
        finally:
            control.down(state)
    figures["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    print(_table(figures))
    print(f"load average {figures['loadavg_1m_at_start']} at start, {figures['loadavg_1m_at_end']} at end "
          f"({os.cpu_count()} cpus; figures are unreliable when it exceeds the cpu count)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"figures written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
