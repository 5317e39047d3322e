"""1 GiB CUDA tensor RPC bandwidth: rpcjob's device maps vs hand-written torch maps.

One run, one machine with 2+ GPUs, every worker a separate process that sees only its own GPU
(CUDA_VISIBLE_DEVICES, as a Kubernetes pod does):

* handset     static ``init_rpc(world_size=2)`` + ``set_device_map`` written by hand (the anchor)
* handset_all the same with both GPUs visible in both processes (cuda:0 -> cuda:1), for reference
* rpcjob      dynamic ``init_rpc(world_size=None)``; devices and maps for every slot name from
              ``rpcjob.devices.plan_devices``; CUDA initialised before joining; reverse maps
              re-applied with ``agent._update_group_membership`` after every join and leave.
              Early joiner worker_0 (GPU0), late joiner worker_1 (GPU1), third worker_2 (GPU0)
              joins and leaves; CUDA tensors are checked in both directions after each step,
              plus negative controls (what torch does without the re-application).
* cpu staging the same rpcjob pair moving the tensor through host memory (.cpu() -> .cuda())
* pidns       (--pidns) the late joiner in its own PID namespace, like a separate pod

The store is torch's TCPStore hosted by this parent process (the etcd Store is another
component; the device machine has no etcd). Bandwidth is GB/s (1e9 bytes/s), one direction,
the median over --iters; the remote function synchronises its device so the copy is complete.
Ends with one JSON line.
Usage: python3 bench/gpu_bench.py [--size-mib 1024] [--iters 20] [--pidns] [--cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "sidecar"))

import torch  # noqa: E402
from gpu_bench_launch import ISOLATE, Workers, run_scenario  # noqa: E402
from gpu_bench_measure import client  # noqa: E402
from gpu_bench_pods import run_netns, run_sidecar_scenario  # noqa: E402
from gpu_bench_report import summarize  # noqa: E402
from gpu_bench_workers import worker_handset, worker_pidns, worker_rpcjob, worker_sidecar  # noqa: E402


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", default="")
    ap.add_argument("--name", default="")
    ap.add_argument("--rank", type=int, default=0)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--visible", default="own")
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--node-gpus", type=int, default=0)
    ap.add_argument("--pidns", action="store_true")
    ap.add_argument("--isolated", action="store_true", help="pods with their own /dev (1 GPU)")
    ap.add_argument(
        "--crossnode", action="store_true", help="TensorPipe limited to TCP + cuda_basic"
    )
    ap.add_argument(
        "--netns",
        action="store_true",
        help="pods in their own network namespaces: time-sliced GPU 0, and with 2+ GPUs each pod"
        " on its own GPU with /dev isolated or shared (needs root and ip)",
    )
    ap.add_argument("--cpu", action="store_true", help="choreography smoke test without CUDA")
    ap.add_argument("--out", default="")
    ap.add_argument(
        "--scenarios", default="handset,rpcjob,sidecar", help="comma list; pidns via --pidns"
    )
    return ap.parse_args()


# --- worker processes -----------------------------------------------------------------------
def run_worker(a: argparse.Namespace) -> None:
    """One worker process's body; exits without torch's atexit (a failed agent can hang there)."""
    if a.worker == "sidecar":
        try:
            worker_sidecar(a)
        except Exception:
            traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    if a.worker == "handset":
        a.rank = int(os.environ["BENCH_RANK"])
        a.visible = os.environ["BENCH_VISIBLE"]
        a.name = f"w{a.rank}"
    store = client(a.port)
    try:
        if a.worker == "handset":
            out = worker_handset(a)
        elif a.worker == "rpcjob":
            out = worker_rpcjob(a)
        else:
            out = worker_pidns(a)
    except Exception as e:
        traceback.print_exc()
        raw = (
            store.get(f"bench/result/{a.name}")
            if store.check([f"bench/result/{a.name}"])
            else b"{}"
        )
        out = {**json.loads(raw), "error": f"{type(e).__name__}: {e}"[:500]}
    store.set(f"bench/result/{a.name}", json.dumps(out))
    sys.stdout.flush()
    os._exit(0)


# --- the parent: which scenarios run, in this order -----------------------------------------
def handset_workers(vis: str) -> Workers:
    """The anchor's two processes: each sees its own GPU ("own") or both ("all")."""
    return [
        (f"w{r}", {**({"CUDA_VISIBLE_DEVICES": str(r)} if vis == "own" else {}),
                   "BENCH_RANK": str(r), "BENCH_VISIBLE": vis}, [])
        for r in range(2)
    ]  # fmt: skip


def run_namespaced(a: argparse.Namespace, res: dict[str, Any], gpu: Callable[[int], Any]) -> None:
    """Pairs of store-driven members apart as pods are: PID namespace, cross-machine channels,
    a /dev of their own (GPU only)."""
    if a.pidns:
        unshare = shutil.which("unshare")
        if unshare:
            pj: Workers = [
                ("worker_0", {**gpu(0), "BENCH_WAIT_S": "40"}, []),
                (
                    "worker_1",
                    {**gpu(1), "BENCH_WAIT_S": "40"},
                    [unshare, "--pid", "--fork", "--kill-child", "--mount-proc"],
                ),
            ]
            res["pidns"] = run_scenario("pidns", pj, a, 60)
        else:
            res["pidns"] = {"skipped": "no unshare binary"}
    if a.crossnode:
        xenv = {
            "BENCH_WAIT_S": "40",
            "BENCH_TRANSPORTS": "uv",
            "BENCH_CHANNELS": "cuda_basic,basic",
        }
        xj: Workers = [("worker_0", {**gpu(0), **xenv}, []), ("worker_1", {**gpu(1), **xenv}, [])]
        res["crossnode"] = run_scenario("pidns", xj, a, 90)
    if a.isolated:
        unshare = shutil.which("unshare")
        if unshare:
            iso = [unshare, "--mount", "--pid", "--fork", "--kill-child", "--mount-proc",
                   "sh", "-c", ISOLATE, "isolate"]  # fmt: skip
            wenv = {"BENCH_WAIT_S": "40"}
            ij: Workers = [("worker_0", wenv, [*iso, "0"]), ("worker_1", wenv, [*iso, "1"])]
            res["isolated"] = run_scenario("pidns", ij, a, 60)


def run_scenarios(a: argparse.Namespace, res: dict[str, Any]) -> None:
    def gpu(i: int) -> dict[str, str]:
        return {"CUDA_VISIBLE_DEVICES": "" if a.cpu else str(i)}

    if not a.cpu and "handset" in a.scenarios:
        for vis in ("own", "all"):
            res[f"handset_{vis}"] = run_scenario("handset", handset_workers(vis), a, 150)
        # the anchor twice: its run-to-run spread
        res["handset_own_again"] = run_scenario("handset", handset_workers("own"), a, 150)
    if "rpcjob" in a.scenarios:
        rj: Workers = [("worker_0", gpu(0), []), ("worker_1", gpu(1), []), ("worker_2", gpu(0), [])]
        res["rpcjob"] = run_scenario("rpcjob", rj, a, 240)
    if "sidecar" in a.scenarios:
        res["sidecar"] = run_sidecar_scenario(a, 240)
    if not a.cpu:
        run_namespaced(a, res, gpu)
    if a.netns or a.scenarios == "netns":
        res.update(run_netns(a))


def main() -> None:
    a = parse_args()
    if a.worker:
        run_worker(a)
        return
    ngpu = 0 if a.cpu else torch.cuda.device_count()
    if not a.cpu and ngpu < (1 if a.scenarios == "netns" else 2):
        print(json.dumps({"skipped": f"needs 2 CUDA GPUs, found {ngpu}"}))
        sys.exit(2)
    a.node_gpus = ngpu
    card = "cpu" if a.cpu else torch.cuda.get_device_name(0)
    print(
        f"card: {card} x{ngpu}; torch {torch.__version__}; size {a.size_mib} MiB; iters {a.iters}",
        flush=True,
    )
    res: dict[str, Any] = {"card": card, "gpus": ngpu, "torch": torch.__version__}
    run_scenarios(a, res)
    summarize(res, a)


if __name__ == "__main__":
    main()
