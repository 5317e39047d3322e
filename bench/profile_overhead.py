"""Profiler overhead: ``rpc_sync`` latency to a member while ``rpcjob profile`` runs on it.

Two plain torch RPC processes (a dynamic group over a TCPStore, TensorPipe over TCP). The
callee runs rpcjob's worker-side profile (``rpcjob.worker.introspect``: torch's server-process
profiler plus the frame sampler, exactly what ``/debug/rpc/profile`` turns on). The caller
times ``rpc_sync`` of a small tensor add in alternating rounds, profiler off and on
(anchor = off, same run, same processes), and reports the median and p99 per state; the
caller's outgoing-call counter (always on) is installed in both states.

    python3 bench/profile_overhead.py [--calls 2000] [--rounds 4] [--interval-ms 2]

Ends with one JSON line: {"off_median_us", "on_median_us", "off_p99_us", "on_p99_us",
"median_overhead_pct", "p99_overhead_pct", ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_host import free_port

CHILD = r"""
import json, os, sys, time
import torch
import torch.distributed.rpc as rpc
from rpcjob.worker import introspect

role, port = sys.argv[1], sys.argv[2]
calls, rounds, interval = int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])

import threading
finished = threading.Event()

def add(x):
    return x + 1

def done():
    finished.set()

def toggle(on):
    if on:
        return introspect._profile.start(interval, 600.0)
    res = introspect._profile.stop()
    return {"spans": len(res.get("spans", [])), "requests": len(res.get("requests", []))}

os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", port
opts = rpc.TensorPipeRpcBackendOptions(_transports=["uv"], num_worker_threads=16)
rank = 0 if role == "callee" else 1
rpc.init_rpc(role, rank=rank, world_size=None, rpc_backend_options=opts)
print("JOINED", flush=True)
if role == "caller":
    introspect.calls.install()
    x = torch.ones(16)
    for _ in range(200):
        rpc.rpc_sync("callee", add, (x,))
    lat = {"off": [], "on": []}
    for r in range(rounds):
        for state in ("off", "on"):
            if state == "on":
                rpc.rpc_sync("callee", toggle, (True,))
            for _ in range(calls):
                t = time.perf_counter()
                rpc.rpc_sync("callee", add, (x,))
                lat[state].append((time.perf_counter() - t) * 1e6)
            if state == "on":
                info = rpc.rpc_sync("callee", toggle, (False,))
    rpc.rpc_sync("callee", done)
    print("RESULT " + json.dumps({"lat": lat, "last_profile": info}), flush=True)
else:
    finished.wait()  # serve until the caller is done
rpc.shutdown()
"""


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--calls", type=int, default=2000, help="calls per round and state")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--interval-ms", type=float, default=2.0, help="sampler period")
    ns = ap.parse_args()
    port = str(free_port())
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "sidecar"))
    args = [port, str(ns.calls), str(ns.rounds), str(ns.interval_ms)]
    # The callee joins first: a joiner learns the members that were there before it.
    callee = subprocess.Popen(
        [sys.executable, "-c", CHILD, "callee", *args], env=env, stdout=subprocess.PIPE, text=True
    )
    assert callee.stdout is not None
    for line in callee.stdout:
        if line.startswith("JOINED"):
            break
    caller = subprocess.Popen(
        [sys.executable, "-c", CHILD, "caller", *args], env=env, stdout=subprocess.PIPE, text=True
    )
    procs = [callee, caller]
    out, _ = procs[1].communicate(timeout=1800)
    procs[0].wait(60)
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    res = json.loads(line[len("RESULT ") :])
    lat = res["lat"]
    off_med, on_med = statistics.median(lat["off"]), statistics.median(lat["on"])
    off_p99, on_p99 = pct(lat["off"], 0.99), pct(lat["on"], 0.99)
    summary = {
        "calls_per_state": len(lat["off"]),
        "sample_interval_ms": ns.interval_ms,
        "off_median_us": round(off_med, 1),
        "on_median_us": round(on_med, 1),
        "off_p99_us": round(off_p99, 1),
        "on_p99_us": round(on_p99, 1),
        "median_overhead_pct": round(100 * (on_med - off_med) / off_med, 1),
        "p99_overhead_pct": round(100 * (on_p99 - off_p99) / off_p99, 1),
        "last_profile": res["last_profile"],
        "cpus": os.cpu_count(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(f"rpc_sync latency, profiler off: median {off_med:.0f} us, p99 {off_p99:.0f} us")
    print(f"rpc_sync latency, profiler on:  median {on_med:.0f} us, p99 {on_p99:.0f} us")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
