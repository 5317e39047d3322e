"""CUDA tensors between elastic workers, with device maps derived by rpcjob.

Roles: ``driver`` (one replica, one GPU) and ``worker`` replicas (one GPU each). The driver
sends CUDA tensors to every live worker, which transforms them on its own GPU and returns CUDA
tensors. rpcjob declares the device maps for every slot the job can have and re-applies them
as workers join and leave, so tensors move GPU-to-GPU (NVLink/IPC on one node) with no
hand-written ``set_device_map``. Without GPUs (``rpcjob run`` on a laptop, or
``deviceMaps: off``) the same code runs on CPU tensors: that is the documented fallback.
"""

from __future__ import annotations

import contextlib
import os
import time

import torch
import torch.distributed.rpc as rpc

import rpcjob

ROUNDS = int(os.environ.get("EXAMPLE_ROUNDS", "20"))
MIB = int(os.environ.get("EXAMPLE_MIB", "64"))


def device() -> torch.device:
    return torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")


def transform(x: torch.Tensor) -> torch.Tensor:
    # Runs on the worker: the tensor arrives on its GPU when device maps are in place.
    return x * 2 + 1


def drive(_name: str) -> int:
    dev = device()
    n = MIB * 2**20 // 4
    rpcjob.wait_for_member("worker")
    moved = 0
    start = time.perf_counter()
    for r in range(ROUNDS):
        x = torch.full((n,), float(r), device=dev)
        futs = {w: rpc.rpc_async(w, transform, args=(x,)) for w in rpcjob.members("worker")}
        for w, fut in futs.items():
            y = fut.wait()
            if y.device != dev or not torch.equal(y, x * 2 + 1):
                raise RuntimeError(f"round {r}: wrong reply from {w} on {y.device}")
            moved += 2 * x.numel() * 4
    secs = time.perf_counter() - start
    print(f"driver: {ROUNDS} rounds on {dev}, {moved / secs / 1e9:.2f} GB/s", flush=True)
    return 0


def serve(_name: str) -> int:
    # Until the driver has come, finished and left. It may have finished before this worker
    # joined (it needs only one worker): then stop waiting for it after two minutes.
    with contextlib.suppress(TimeoutError):
        rpcjob.wait_for_member("driver")
        while rpcjob.members("driver"):
            time.sleep(0.2)
    return 0


if __name__ == "__main__":
    raise SystemExit(rpcjob.run_role({"driver": drive, "worker": serve}))
