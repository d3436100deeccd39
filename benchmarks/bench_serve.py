"""A load test of a served program on Ray Serve: throughput and latency percentiles at 1 and 2 replicas,
without and with dynamic batching, and one replica killed under load: writes benchmarks/results/<cpu>-serve.md.

    python benchmarks/bench_serve.py            # MiniLM-sized encoder (int8), requests of 1 and 4 x 128 tokens

A local single-node Ray (this machine's CPUs), each replica on 1 thread (EDGECOMPRESS_NUM_THREADS=1,
1 CPU reserved), clients in threads of this process posting binary v2 requests over loopback through
Serve's HTTP proxy for a fixed time. Every request is accounted for: a 200, or an error status or
exception that is counted, never dropped. In the last phase one replica's actor is killed halfway;
Serve restarts it.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import threading
import time
import urllib.request
from typing import Any

import numpy as np

import edgecompress as ec
from edgecompress.bench import cpu_slug, write_report
from edgecompress.remote import RemoteError, RemoteProgram

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_split import minilm  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
PHASES = ((1, 1), (2, 1), (1, 4), (2, 4))  # (replicas, largest batch); then 2 replicas (batching) with one killed


def load(url: str, examples: list[np.ndarray], clients: int, seconds: float, kill: callable = None) -> dict:
    remote = RemoteProgram(url, "minilm", timeout=30)
    lat, batches, errors, lock = [], [], {}, threading.Lock()
    stop = time.perf_counter() + seconds
    sent = [0]

    def client() -> None:
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            with lock:
                sent[0] += 1
            try:
                _, meta = remote.infer({"input_ids": examples[0], "attention_mask": examples[1]})
                with lock:
                    lat.append(time.perf_counter() - t0)
                    batches.append((meta.get("parameters") or {}).get("batch_size", 1))
            except (RemoteError, OSError) as e:
                key = f"HTTP {e.status}" if isinstance(e, RemoteError) else type(e).__name__
                with lock:
                    errors[key] = errors.get(key, 0) + 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    if kill is not None:
        time.sleep(seconds / 2)
        kill()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    q = np.percentile(lat, [50, 95, 99]) * 1e3 if lat else [float("nan")] * 3
    return {"sent": sent[0], "ok": len(lat), "errors": errors, "rps": len(lat) / wall, "p50": q[0], "p95": q[1], "p99": q[2],
            "batch": float(np.mean(batches)) if batches else float("nan")}


def section(url: str, path: str, program: Any, ids: np.ndarray, mask: np.ndarray, args: argparse.Namespace) -> list[str]:
    """The phases for requests of ``ids.shape[0]`` sequences: rows of the table and the ratios."""
    import ray
    from ray import serve

    from edgecompress.serve import ray_application

    examples = [ids, mask]
    ec.set_num_threads(1)
    program(*examples)
    t = time.perf_counter()
    for _ in range(10):
        program(*examples)
    per_call = (time.perf_counter() - t) / 10
    rows = []
    for replicas, batch in PHASES:
        serve.run(ray_application(path, "minilm", replicas=replicas, threads=1, max_batch_size=batch,
                                  batch_wait_timeout_s=0.002), name="edgecompress", route_prefix="/")
        for _ in range(300):
            try:
                urllib.request.urlopen(url + "/v2/health/ready", timeout=2).close()
                break
            except OSError:
                time.sleep(0.2)
        load(url, examples, args.clients, 2)  # warm
        label = f"{replicas} replica{'s' if replicas > 1 else ''}" + (f", batches of up to {batch}" if batch > 1 else "")
        rows.append((label, load(url, examples, args.clients, args.seconds)))

    def kill_one() -> None:
        victims = [a for a in ray.util.list_named_actors(all_namespaces=True) if "REPLICA" in a["name"]]
        ray.kill(ray.get_actor(victims[0]["name"], namespace=victims[0]["namespace"]), no_restart=False)
        print(f"killed {victims[0]['name']}", file=sys.stderr)

    rows.append(("2 replicas, batching, one killed", load(url, examples, args.clients, args.seconds, kill_one)))
    lines = [f"## Requests of {ids.shape[0]} x {ids.shape[1]} tokens: {per_call * 1e3:.1f} ms natively at 1 thread", "",
             "| phase | sent | answered 200 | errors | requests/s | p50 ms | p95 ms | p99 ms | mean batch |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, r in rows:
        errs = ", ".join(f"{k}: {v}" for k, v in r["errors"].items()) or "none"
        lines.append(f"| {label} | {r['sent']} | {r['ok']} | {errs} | {r['rps']:.1f} | {r['p50']:.1f} | {r['p95']:.1f} | "
                     f"{r['p99']:.1f} | {r['batch']:.2f} |")
        assert r["sent"] == r["ok"] + sum(r["errors"].values()), "a request went unaccounted"
    rps = {label: r["rps"] for label, r in rows}
    lines += ["", f"2 replicas / 1 replica: {rps['2 replicas'] / rps['1 replica']:.2f}x the requests per second; "
                  f"with batching (Ray Serve's serve.batch, up to 4 requests, 2 ms wait): "
                  f"{rps['2 replicas, batches of up to 4'] / rps['1 replica, batches of up to 4']:.2f}x, and "
                  f"{rps['2 replicas, batches of up to 4'] / rps['1 replica']:.2f}x one replica without it. "
                  f"The compute alone would allow {1 / per_call:.1f} requests/s per replica.", ""]
    return lines


def main() -> int:
    import ray
    from ray import serve

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--sizes", default="1,4", help="sequences per request, comma-separated (default 1,4)")
    ap.add_argument("--output", default=None)
    args = ap.parse_args()
    sizes = [int(v) for v in args.sizes.split(",") if v]
    program, (ids, mask) = minilm()
    path = os.path.join(tempfile.mkdtemp(), "minilm.safetensors")
    program.save(path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    lines = [f"# Serving a MiniLM-sized encoder on Ray Serve: {ec.cpu_info()['model']}", "",
             f"int8, sequences of {ids.shape[1]} tokens; {args.clients} clients, {args.seconds:g} s a phase, binary v2 "
             f"requests over loopback through Serve's proxy; each replica on 1 thread. The clients, Serve's proxy "
             f"and the replicas share this machine's {os.cpu_count()} CPUs.", ""]
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        for n in sizes:
            lines += section(url, path, program, np.repeat(ids, n, axis=0), np.repeat(mask, n, axis=0), args)
    finally:
        serve.shutdown()
        ray.shutdown()
    write_report(lines, args.output or os.path.join(HERE, "results", f"{cpu_slug()}-serve.md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
