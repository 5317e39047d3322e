"""The real sidecar path of bench/gpu_bench.py: three pods (rpcjob-sidecar + worker calling
``rpcjob.init_rpc()``) against a real etcd, optionally each in its own network namespace (as on
a node) and with a /dev holding only its own GPU (as the device plugin arranges).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gpu_bench_launch import BENCH, isolation_prefix, run_scenario
from gpu_bench_measure import wait_file
from gpu_netns import NetnsPods

from rpcjob import contract as c

ROOT = Path(__file__).resolve().parent.parent

TIME_SLICED = {
    "nvidia.com/gpu.count": "1",
    "nvidia.com/gpu.replicas": "2",
    "nvidia.com/gpu.sharing-strategy": "time-slicing",
}


def run_sidecar_scenario(
    a: argparse.Namespace,
    limit: float,
    *,
    gpus: tuple[str, str, str] = ("0", "1", "0"),
    labels: dict[str, str] | None = None,
    net: NetnsPods | None = None,
    dev_isolation: bool = False,
) -> dict[str, Any]:
    """Three pods (sidecar + worker) against a real etcd, each worker seeing the GPU in ``gpus``.

    With ``net`` every pod (its sidecar and its worker) runs in its own network namespace and etcd
    listens on the bridge, as on a node; with ``dev_isolation`` the worker's /dev also holds only
    its own GPU, as the device plugin arranges.
    """
    sys.path.insert(0, str(ROOT / "operator"))
    sys.path.insert(0, str(ROOT / "tests"))
    from podkit import Job  # type: ignore[import-not-found]

    from rpcjob_operator.localexec.etcd_server import EmbeddedEtcd

    res: dict[str, Any] = {}
    g = 0 if a.cpu else 1
    node_labels = labels or {"nvidia.com/gpu.count": str(a.node_gpus)}
    host = net.host_ip if net else "127.0.0.1"
    with EmbeddedEtcd(host=host) as etcd, tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        job = Job(
            etcd.endpoint, d / "pods", slots={"worker": 3}, lease_ttl=10,
            env={
                "RPCJOB_GPUS": str(g), "RPCJOB_ROLE_GPUS": json.dumps({"worker": g}),
                "RPCJOB_NODE_LABELS": json.dumps(node_labels),
                "RPCJOB_RPC_TIMEOUT": "300",
            },
        )  # fmt: skip
        try:
            _run_pods(a, job, d, time.monotonic() + limit, gpus, net, dev_isolation)
        except Exception as e:
            res["error"] = f"{type(e).__name__}: {e}"
        finally:
            _collect(job, d, res)
            job.close()
    return res


def _run_pods(
    a: argparse.Namespace,
    job: Any,
    d: Path,
    deadline: float,
    gpus: tuple[str, str, str],
    net: NetnsPods | None,
    dev_isolation: bool,
) -> None:
    """Start the pods one by one (early, late, then the one that leaves) and wait for all."""
    argv = [sys.executable, BENCH, "--worker", "sidecar", "--size-mib", str(a.size_mib),
            "--iters", str(a.iters)]  # fmt: skip

    def left() -> float:
        return max(1.0, deadline - time.monotonic())

    for i, gpu_index in enumerate(gpus):
        visible = "" if a.cpu else gpu_index
        if net is None:
            pod = job.pod("worker", i, CUDA_VISIBLE_DEVICES=visible)
            prefix: list[str] = []
        else:
            pod = job.pod("worker", i, start=False, CUDA_VISIBLE_DEVICES=visible)
            start_in_netns(pod, net, i)
            prefix = net.prefix(i)
        if dev_isolation and not a.cpu:
            prefix = [*prefix, *isolation_prefix(gpu_index)]
            pod.env["CUDA_VISIBLE_DEVICES"] = "0"  # the only GPU its /dev holds
        pod.start_worker([*prefix, *argv], env={"BENCH_DIR": str(d)})
        wait_file(d / f"joined_worker_{i}", left())
        if i == 1:
            wait_file(d / "phase1_done", left())
    wait_file(d / "L_done", left())
    for pod in job.pods:
        for w in pod.workers:
            w.wait(timeout=left())


def _collect(job: Any, d: Path, res: dict[str, Any]) -> None:
    """Each pod's exit codes and results; its logs printed where something failed."""
    for i, pod in enumerate(job.pods):
        f = d / f"result_worker_{i}.json"
        res[f"worker_{i}"] = {
            "rc": [w.poll() for w in pod.workers],
            **(json.loads(f.read_text()) if f.exists() else {}),
        }
        logs = sorted(pod.dir.glob("*.log"))
        tail = "".join(p.read_text()[-1500:] for p in logs)
        if any(w.poll() not in (0, None) for w in pod.workers) or "error" in res:
            print(f"--- pod worker_{i} logs ---\n{tail}", flush=True)


def start_in_netns(pod: Any, net: NetnsPods, i: int) -> None:
    """Give a podkit pod its namespace's address and start its sidecar inside the namespace."""
    pod.ip, pod.http_port = net.ip(i), c.SIDECAR_HTTP_PORT  # same port in every pod: own netns
    pod.env[c.ENV_POD_IP] = pod.ip
    pod.env[c.ENV_HTTP_ADDR] = f"{pod.ip}:{pod.http_port}"
    pod.env["TP_SOCKET_IFNAME"] = "eth0"
    with open(pod.sidecar_log, "ab") as log:
        pod.sidecar = subprocess.Popen(
            [*net.prefix(i), sys.executable, "-m", "rpcjob.sidecar.main"],
            env=dict(os.environ, **pod.env), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + 60
    while not pod._sidecar_up():
        if time.monotonic() > deadline:
            raise TimeoutError(f"sidecar {pod.name} in {net.names[i]} did not come up")
        time.sleep(0.05)


# --- pods in their own network namespaces (as on a real node) ------------------------------
def netns_settings(a: argparse.Namespace) -> list[tuple[str, tuple[str, ...], bool]]:
    """(name, GPU per pod, /dev isolated) for the settings this machine can run."""
    if a.cpu:
        return [("netns_cpu", ("", "", ""), False)]
    out: list[tuple[str, tuple[str, ...], bool]] = [("netns_timesliced", ("0", "0", "0"), False)]
    if a.node_gpus >= 2:
        out.append(("netns_own_gpu_dev", ("0", "1", "0"), True))  # device-plugin isolation
        out.append(("netns_both_gpus_dev", ("0", "1", "0"), False))  # /dev holds both GPUs
    return out


def run_netns(a: argparse.Namespace) -> dict[str, Any]:
    """Per setting: derived maps (real sidecars, etcd) and hand-set maps, same isolation."""
    why = NetnsPods.available()
    if why:
        return {"netns": {"skipped": why}}
    res: dict[str, Any] = {}
    for name, gpus, dev in netns_settings(a):
        labels = TIME_SLICED if name == "netns_timesliced" else None
        with NetnsPods(3) as net:
            g3 = (gpus[0], gpus[1], gpus[2])
            res[name] = run_sidecar_scenario(
                a, 300, gpus=g3, labels=labels, net=net, dev_isolation=dev
            )
            if a.cpu:
                continue
            hs = []
            for r in range(2):
                env = {"BENCH_RANK": str(r), "BENCH_VISIBLE": "own", "TP_SOCKET_IFNAME": "eth0",
                       "BENCH_STORE_HOST": net.host_ip, "GLOO_SOCKET_IFNAME": "eth0",
                       "CUDA_VISIBLE_DEVICES": gpus[r]}  # fmt: skip
                prefix = net.prefix(r)
                if dev:
                    prefix = [*prefix, *isolation_prefix(gpus[r])]
                    env["CUDA_VISIBLE_DEVICES"] = "0"
                hs.append((f"w{r}", env, prefix))
            res[f"{name}_handset"] = run_scenario("handset", hs, a, 150, host=net.host_ip)
    return res
