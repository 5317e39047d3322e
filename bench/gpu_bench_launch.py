"""Parent side of bench/gpu_bench.py: start one worker process per member of a scenario, each
running bench/gpu_bench.py ``--worker <scenario>`` (optionally behind a command prefix that puts
it in its own namespaces), and collect each one's results from the parent's TCPStore.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch.distributed as dist
from bench_host import free_port
from gpu_bench_measure import WAIT

BENCH = str(Path(__file__).resolve().with_name("gpu_bench.py"))

# (worker name, extra environment, command prefix) for each process of a scenario
Workers = list[tuple[str, dict[str, str], list[str]]]


def isolation_prefix(gpu: str) -> list[str]:
    """Run a command with its own mount namespace and a /dev holding only GPU ``gpu``."""
    return ["unshare", "--mount", "sh", "-c", ISOLATE, "isolate", gpu]


# Like a Kubernetes pod on a multi-GPU node: own PID and mount namespace, and a /dev holding
# only its own GPU's device node, so that CUDA *and NVML* see one GPU (the device plugin's
# isolation), unlike CUDA_VISIBLE_DEVICES, which NVML ignores.
ISOLATE = r"""
g=$1; shift
d=$(mktemp -d /tmp/isodev.XXXXXX)
mount -t tmpfs -o mode=755 tmpfs "$d" || exit 97
for f in /dev/nvidia$g /dev/nvidiactl /dev/nvidia-uvm /dev/nvidia-uvm-tools /dev/nvidia-modeset \
         /dev/null /dev/zero /dev/random /dev/urandom /dev/full /dev/tty; do
  [ -e "$f" ] && cp -a "$f" "$d/"
done
[ -d /dev/nvidia-caps ] && cp -a /dev/nvidia-caps "$d/"
mkdir -p "$d/shm" "$d/pts"
mount --bind "$d" /dev && mount -t tmpfs tmpfs /dev/shm || exit 98
echo "[isolated gpu $g] /dev: $(ls /dev | tr '\n' ' ')"; nvidia-smi -L 2>&1 | sed 's/^/[isolated] /'
exec "$@"
"""


def worker_argv(kind: str, name: str, port: int, a: argparse.Namespace) -> list[str]:
    """The command line of one worker process (without its prefix)."""
    cmd = [sys.executable, BENCH, "--worker", kind, "--name", name, "--port", str(port),
           "--size-mib", str(a.size_mib), "--iters", str(a.iters),
           "--node-gpus", str(a.node_gpus)]  # fmt: skip
    if a.cpu:
        cmd.append("--cpu")
    return cmd


def run_scenario(
    kind: str, workers: Workers, a: argparse.Namespace, limit: float, host: str = "127.0.0.1"
) -> dict[str, Any]:
    """Start one process per worker, collect each one's JSON result from the store."""
    port = free_port()
    server = dist.TCPStore(host, port, is_master=True, timeout=WAIT, wait_for_workers=False)
    procs = []
    for name, extra_env, prefix in workers:
        env = dict(
            os.environ,
            TORCHELASTIC_USE_AGENT_STORE="True",
            TORCHELASTIC_RESTART_COUNT="0",
            **extra_env,
        )
        procs.append(subprocess.Popen([*prefix, *worker_argv(kind, name, port, a)], env=env))
    results: dict[str, Any] = {}
    deadline = time.monotonic() + limit
    for (name, _, _), p in zip(workers, procs, strict=True):
        try:
            rc = p.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            rc = "timeout"
        raw = (
            server.get(f"bench/result/{name}") if server.check([f"bench/result/{name}"]) else b"{}"
        )
        results[name] = {"rc": rc, **json.loads(raw)}
    del server
    return results
