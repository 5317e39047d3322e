"""What bench/gpu_bench.py's workers measure and how they keep it: the functions run remotely,
bandwidth and round-trip measurements, results saved on every write, flag files.

Imported by every worker process (caller and callee alike), which is how torch finds the remote
functions: they travel pickled by module and name.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.rpc as rpc

WARMUP = 5  # calls before timing: channel setup, allocator caching, clocks
WAIT = timedelta(seconds=float(os.environ.get("BENCH_WAIT_S", "120")))

# Where the parent's TCPStore is reached: 127.0.0.1, or the bridge address when each worker runs
# in its own network namespace (bench/gpu_netns.py).
STORE_HOST = os.environ.get("BENCH_STORE_HOST", "127.0.0.1")


# --- functions run remotely -----------------------------------------------------------------
def _consume(t: torch.Tensor) -> int:
    if t.is_cuda:
        torch.cuda.synchronize(t.device)  # the copy into this process is complete
    return int(t.numel())


def _stage_in(t: torch.Tensor) -> int:
    dev = torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")
    g = t.to(dev)
    if g.is_cuda:
        torch.cuda.synchronize(g.device)
    return int(g.numel())


def _double(t: torch.Tensor) -> torch.Tensor:
    return t * 2


def _make(n: int, on_cuda: bool) -> torch.Tensor:
    return torch.arange(n, dtype=torch.float32, device="cuda:0" if on_cuda else "cpu")


# --- measurements ---------------------------------------------------------------------------
def client(port: int) -> dist.TCPStore:
    return dist.TCPStore(STORE_HOST, port, is_master=False, timeout=WAIT)


def bandwidth(
    dst: str, t: torch.Tensor, iters: int, fn: Any = _consume, prep: Any = None
) -> dict[str, float]:
    nbytes = t.numel() * t.element_size()
    times = []
    for i in range(iters + WARMUP):
        if t.is_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        arg = prep(t) if prep is not None else t
        rpc.rpc_sync(dst, fn, args=(arg,), timeout=300)
        dt = time.perf_counter() - t0
        if i >= WARMUP:
            times.append(dt)
    med = statistics.median(times)
    return {"gbps": nbytes / med / 1e9, "median_s": med, "best_gbps": nbytes / min(times) / 1e9}


def staging_bandwidth(dst: str, t: torch.Tensor, iters: int = 3) -> dict[str, float]:
    """The tensor moved by hand through host memory (.cpu() here, .cuda() there)."""
    return bandwidth(dst, t, iters, fn=_stage_in, prep=lambda x: x.cpu())


def roundtrip(dst: str, cuda: bool, timeout: float = 60) -> str:
    """A CUDA tensor there and a CUDA tensor back; "ok" or the error."""
    try:
        x = _make(1 << 20, cuda)
        y = rpc.rpc_sync(dst, _double, args=(x,), timeout=timeout)
        if cuda and not y.is_cuda:
            return f"reply on {y.device}, expected cuda"
        if not torch.equal(y.cpu(), (x * 2).cpu()):
            return "wrong values"
        return "ok"
    except Exception as e:  # recorded, not fatal: negative controls expect failures
        return f"error: {type(e).__name__}: {str(e).splitlines()[0][:200]}"


def until_ok(dst: str, deadline_s: float = 20) -> dict[str, Any]:
    """Round trips until one succeeds (the sidecar's JOINED event may still be on its way)."""
    first, n, t0 = "", 0, time.monotonic()
    while True:
        n += 1
        r = roundtrip(dst, torch.cuda.is_available(), timeout=30)
        first = first or r
        if r == "ok" or time.monotonic() - t0 > deadline_s:
            return {"result": r, "attempts": n, "first": first, "s": time.monotonic() - t0}


# --- keeping results ------------------------------------------------------------------------
class Results(dict[str, Any]):
    """A worker's results, saved to the store on every write: a crash keeps what was measured."""

    def __init__(self, store: dist.TCPStore, name: str) -> None:
        super().__init__()
        self.store, self.key = store, f"bench/result/{name}"

    def __setitem__(self, k: str, v: Any) -> None:
        super().__setitem__(k, v)
        self.store.set(self.key, json.dumps(dict(self)))


class FileResults(dict[str, Any]):
    """The same for a pod's worker, which has no TCPStore: a JSON file in the shared folder."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def __setitem__(self, k: str, v: Any) -> None:
        super().__setitem__(k, v)
        self.path.write_text(json.dumps(dict(self)))


def wait_file(path: Path, timeout: float = 120) -> None:
    """Wait for a flag file written by another worker (a condition with a deadline)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {path.name}")
        time.sleep(0.005)


def log(name: str, msg: str) -> None:
    print(f"[{name}] {msg}", flush=True)
