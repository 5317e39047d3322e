"""CUDA tensors between elastic workers, with device maps derived by rpcjob.

Roles: ``driver`` (one replica, one GPU) and ``worker`` replicas (one GPU each). The driver
sends CUDA tensors to every live worker, which transforms them on its own GPU and returns CUDA
tensors. rpcjob declares the device maps for every slot the job can have and re-applies them
as workers join and leave, so tensors move GPU-to-GPU (NVLink/IPC on one node) with no
hand-written ``set_device_map``. Without GPUs (``rpcjob run`` on a laptop, or
``deviceMaps: off``) the same code runs on CPU tensors: that is the documented fallback.
"""

from __future__ import annotations

import os
import time

import torch
import torch.distributed.rpc as rpc

import rpcjob

ROUNDS = int(os.environ.get("EXAMPLE_ROUNDS", "20"))
MIB = int(os.environ.get("EXAMPLE_MIB", "64"))
DRIVER = "driver_0"


def device() -> torch.device:
    return torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")


def transform(x: torch.Tensor) -> torch.Tensor:
    # Runs on the worker: the tensor arrives on its GPU when device maps are in place.
    return x * 2 + 1


def live_workers() -> list[str]:
    agent = rpc.api._get_current_rpc_agent()
    return sorted(w.name for w in agent.get_worker_infos() if w.name.startswith("worker_"))


def run_driver() -> int:
    rpcjob.init_rpc()
    dev = device()
    n = MIB * 2**20 // 4
    deadline = time.monotonic() + 120
    while not live_workers():
        if time.monotonic() > deadline:
            raise TimeoutError("no worker joined within 120s")
        time.sleep(0.1)
    moved = 0
    start = time.perf_counter()
    for r in range(ROUNDS):
        x = torch.full((n,), float(r), device=dev)
        futs = {w: rpc.rpc_async(w, transform, args=(x,)) for w in live_workers()}
        for w, fut in futs.items():
            y = fut.wait()
            if y.device != dev or not torch.equal(y, x * 2 + 1):
                raise RuntimeError(f"round {r}: wrong reply from {w} on {y.device}")
            moved += 2 * x.numel() * 4
    secs = time.perf_counter() - start
    print(f"driver: {ROUNDS} rounds on {dev}, {moved / secs / 1e9:.2f} GB/s", flush=True)
    rpcjob.shutdown()
    return 0


def run_worker(name: str) -> int:
    rpcjob.init_rpc()
    # Serve until the driver has come, finished and left.
    seen, deadline = False, time.monotonic() + 120
    while seen or time.monotonic() < deadline:
        try:
            rpc.get_worker_info(DRIVER)
            seen = True
        except RuntimeError:
            if seen:
                break
        time.sleep(0.2)
    rpcjob.shutdown()
    return 0


def main() -> int:
    name = os.environ.get("RPCJOB_WORKER_NAME", "")
    return run_driver() if name == DRIVER else run_worker(name)


if __name__ == "__main__":
    raise SystemExit(main())
