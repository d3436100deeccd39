"""A load test of a served program on Ray Serve: throughput and latency percentiles at 1 and 2 replicas,
and one replica killed under load: writes benchmarks/results/<cpu>-serve.md.

    python benchmarks/bench_serve.py            # MiniLM-sized encoder (int8, 1 x 128 tokens), 4 clients, 15 s

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

import numpy as np

import edgecompress as ec
from edgecompress.bench import cpu_slug, write_report
from edgecompress.remote import RemoteError, RemoteProgram

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_split import minilm  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def load(url: str, examples: list[np.ndarray], clients: int, seconds: float, kill: callable = None) -> dict:
    remote = RemoteProgram(url, "minilm", timeout=30)
    lat, errors, lock = [], {}, threading.Lock()
    stop = time.perf_counter() + seconds
    sent = [0]

    def client() -> None:
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            with lock:
                sent[0] += 1
            try:
                remote(input_ids=examples[0], attention_mask=examples[1])
                with lock:
                    lat.append(time.perf_counter() - t0)
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
    return {"sent": sent[0], "ok": len(lat), "errors": errors, "rps": len(lat) / wall, "p50": q[0], "p95": q[1], "p99": q[2]}


def main() -> int:
    import ray
    from ray import serve

    from edgecompress.serve import ray_application

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--output", default=None)
    args = ap.parse_args()
    program, examples = minilm()
    path = os.path.join(tempfile.mkdtemp(), "minilm.safetensors")
    program.save(path)
    ec.set_num_threads(1)
    t = time.perf_counter()
    for _ in range(20):
        program(*examples)
    per_call = (time.perf_counter() - t) / 20
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    rows = []
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        for replicas in (1, 2):
            serve.run(ray_application(path, "minilm", replicas=replicas, threads=1), name="edgecompress", route_prefix="/")
            for _ in range(300):
                try:
                    urllib.request.urlopen(url + "/v2/health/ready", timeout=2).close()
                    break
                except OSError:
                    time.sleep(0.2)
            load(url, examples, args.clients, 2)  # warm
            rows.append((f"{replicas} replica{'s' if replicas > 1 else ''}", load(url, examples, args.clients, args.seconds)))

        def kill_one() -> None:
            victims = [a for a in ray.util.list_named_actors(all_namespaces=True) if "REPLICA" in a["name"]]
            ray.kill(ray.get_actor(victims[0]["name"], namespace=victims[0]["namespace"]), no_restart=False)
            print(f"killed {victims[0]['name']}", file=sys.stderr)

        rows.append(("2 replicas, one killed", load(url, examples, args.clients, args.seconds, kill_one)))
    finally:
        serve.shutdown()
        ray.shutdown()
    lines = [f"# Serving a MiniLM-sized encoder on Ray Serve: {ec.cpu_info()['model']}", "",
             f"One request: 1 x 128 tokens, int8, {per_call * 1e3:.1f} ms natively at 1 thread; {args.clients} clients, "
             f"{args.seconds:g} s a phase, binary v2 requests over loopback through Serve's proxy.", "",
             "| phase | sent | answered 200 | errors | requests/s | p50 ms | p95 ms | p99 ms |", "|---|---|---|---|---|---|---|---|"]
    for label, r in rows:
        errs = ", ".join(f"{k}: {v}" for k, v in r["errors"].items()) or "none"
        lines.append(f"| {label} | {r['sent']} | {r['ok']} | {errs} | {r['rps']:.1f} | {r['p50']:.1f} | {r['p95']:.1f} | "
                     f"{r['p99']:.1f} |")
        assert r["sent"] == r["ok"] + sum(r["errors"].values()), "a request went unaccounted"
    lines += ["", f"2 replicas / 1 replica: {rows[1][1]['rps'] / rows[0][1]['rps']:.2f}x the requests per second."]
    write_report(lines, args.output or os.path.join(HERE, "results", f"{cpu_slug()}-serve.md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
