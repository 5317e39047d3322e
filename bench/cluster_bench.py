"""The e2e control plane (e2e/cluster) as a user meets it: start time, then apply -> all pods
Running -> RPC group formed, for jobs of 8 and 32 workers.

* ``start_s``: the control plane (pinned kube-apiserver, controller manager, scheduler on the
  Debian etcd) and ``--nodes`` process kubelets, until every Node is Ready.
* ``chart_s``: ``helm install --wait`` of the chart (the operator runs as a pod; the jobs' etcd
  is a real etcd on the cluster's API address, passed as ``etcd.endpoints``).
* per size N: ``kubectl apply`` of an RpcJob with N workers (a light CPU workload: the worker
  imports torch and rpcjob, joins, and waits) -> ``running_s``: all N pods Running ->
  ``formed_s``: status shows N members joined. The job is then deleted and its pods awaited.

Each worker pod is two processes (sidecar + a torch worker, ~300 MB): sizes whose workers would
not fit in the memory available now (``MemAvailable``, 400 MB per pod plus 2 GB of headroom) are
skipped and reported as such. Needs root and the pinned binaries (``python3 -m e2e.cluster.build``).

    python3 bench/cluster_bench.py [--sizes 8,32] [--nodes 2]

Ends with one JSON line: {"start_s": s, "chart_s": s, "apply_8": {...}, "apply_32": {...}}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from e2e.backends import cluster as real  # noqa: E402
from e2e.backends.api import Api  # noqa: E402
from rpcjob import contract  # noqa: E402

MB_PER_POD = 400
HEADROOM_MB = 2048
WORKLOAD = "import signal, rpcjob\nrpcjob.init_rpc()\nsignal.pause()\n"
JOBS = f"/apis/{contract.GROUP}/{contract.VERSION}/namespaces/{{ns}}/{contract.PLURAL}"


def mem_available_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    return 0


def job(
    name: str,
    n: int,
    max_replicas: int | None = None,
    command: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """An RpcJob of ``n`` workers running ``command`` (default: join and wait)."""
    container: dict[str, Any] = {
        "name": contract.WORKER_CONTAINER, "image": "ghcr.io/rpcjob/e2e-worker:bench",
        "command": command or ["python", "-c", WORKLOAD],
        "env": [{"name": k, "value": v} for k, v in (env or {}).items()],
    }  # fmt: skip
    return {
        "apiVersion": contract.API_VERSION,
        "kind": contract.KIND,
        "metadata": {"name": name},
        "spec": {"roles": {"worker": {"replicas": n, "maxReplicas": max_replicas or n,
                                      "template": {"spec": {"containers": [container]}}}}},
    }  # fmt: skip


def until(pred: Any, timeout: float, what: str) -> float:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if pred():
                return time.monotonic()
        except AssertionError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


def apply_to_group(backend: real.ClusterBackend, api: Api, n: int) -> dict[str, Any]:
    ns, name = f"bench-{n}", "bench"
    backend._kubectl("create", "namespace", ns)
    backend.prepare_namespace(ns)
    pods_path = f"/api/v1/namespaces/{ns}/pods"

    def running() -> bool:
        pods = api.items(pods_path)
        return len(pods) == n and all(p.get("status", {}).get("phase") == "Running" for p in pods)

    def formed() -> bool:
        status = (api.get(f"{JOBS.format(ns=ns)}/{name}") or {}).get("status") or {}
        joined = (status.get("roles") or {}).get("worker", {}).get("joined")
        return joined == n and len(status.get("members") or []) == n

    manifest = Path(tempfile.mkdtemp()) / "job.json"
    manifest.write_text(json.dumps(job(name, n)))
    t0 = time.monotonic()
    backend._kubectl("-n", ns, "apply", "-f", str(manifest))
    t_running = until(running, 900, f"{n} pods Running")
    t_formed = until(formed, 900, f"{n} members joined")
    result = {"running_s": round(t_running - t0, 1), "formed_s": round(t_formed - t0, 1)}
    backend._kubectl("-n", ns, "delete", contract.PLURAL, name, "--wait=false")
    until(lambda: not api.items(pods_path), 600, "the job's pods to go")
    backend._kubectl("delete", "namespace", ns, "--wait=false")
    backend.cleanup_namespace(ns)
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="8,32", help="comma-separated worker counts")
    p.add_argument("--nodes", type=int, default=2)
    args = p.parse_args()
    reason = real.unavailable()
    if reason:
        sys.exit(f"cluster_bench: {reason}")
    out: dict[str, Any] = {}
    workdir = Path(tempfile.mkdtemp(prefix="rpjbench-", dir="/var/tmp"))
    t0 = time.monotonic()
    backend = real.ClusterBackend(workdir, nodes=args.nodes).start()
    try:
        assert backend.k8s is not None
        out["start_s"] = round(backend.k8s.started_in, 1)
        out["chart_s"] = round(time.monotonic() - t0 - backend.k8s.started_in, 1)
        print(f"cluster ready in {out['start_s']}s, chart in {out['chart_s']}s", flush=True)
        api = Api(backend.kubeconfig)
        for n in (int(s) for s in args.sizes.split(",")):
            need = n * MB_PER_POD + HEADROOM_MB
            if mem_available_mb() < need:
                out[f"apply_{n}"] = f"skipped: {mem_available_mb()} MB available, {need} needed"
            else:
                out[f"apply_{n}"] = apply_to_group(backend, api, n)
            print(f"{n} workers: {out[f'apply_{n}']}", flush=True)
    finally:
        backend.stop()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
