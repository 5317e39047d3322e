"""Operator benchmark: apply -> pods for 32 workers, 100 jobs reconciled, RSS.

Runs the real ``rpcjob-operator`` process (kopf) against the real control plane of e2e/cluster
(the pinned kube-apiserver, controllers and scheduler; root and the built binaries needed),
with a real etcd. No nodes by default: pods stay Pending, so the figures measure the operator,
not 64 local processes starting (``--nodes N`` adds process kubelets that run them).

* ``apply_to_pods_s_32``: POST of an RpcJob with 32 workers -> all 32 pods exist. Anchor, same
  run: the same 32 rendered pods POSTed straight to the API server through the same client
  (8 in flight, as the operator does) — the floor no operator can beat here.
* ``jobs_100_reconcile_s``: 100 one-worker RpcJobs POSTed back to back -> every job has its
  pod and a status written for its generation (no backlog left). Anchor: the API writes the
  operator cannot avoid for them — pod, Service and NetworkPolicy POSTs and a status PATCH
  per job, via the client, 8 in flight.
* ``operator_rss_mb``: the operator's resident memory after the 100 jobs (/proc, or psutil).

Operator and anchor rounds alternate (5 rounds of 32 pods, 2 of 100 jobs, each in fresh
namespaces); the JSON line carries the medians. The machine is shared: compare the ratios.

    python3 bench/operator_bench.py [--workers 32] [--jobs 100] [--rounds 5] [--job-rounds 2]
                                    [--nodes N]

Ends with one JSON line: {"apply_to_pods_s_32": s, "jobs_100_reconcile_s": s,
"operator_rss_mb": mb}.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_host import cpu_s, free_port, rss_mb  # noqa: E402

from e2e.backends.api import Api  # noqa: E402
from e2e.cluster import audit, build  # noqa: E402
from e2e.cluster.cluster import E2ECluster  # noqa: E402
from rpcjob import contract  # noqa: E402
from rpcjob_operator.kube import Kube, merge_patch  # noqa: E402
from rpcjob_operator.localexec.etcd_server import EmbeddedEtcd  # noqa: E402
from rpcjob_operator.model import Slot  # noqa: E402
from rpcjob_operator.render import (  # noqa: E402
    OperatorDefaults,
    render_network_policy,
    render_pod,
    render_service,
)
from rpcjob_operator.spec import parse_job  # noqa: E402

SLEEPER = [sys.executable, "-c", "import signal; signal.sigwait([signal.SIGTERM])"]
JOBS_PATH = f"/apis/{contract.GROUP}/{contract.VERSION}/namespaces/{{ns}}/{contract.PLURAL}"


def manifest(name: str, ns: str, replicas: int) -> dict[str, Any]:
    container = {"name": "worker", "image": "ghcr.io/rpcjob/examples:0.1.0", "command": SLEEPER}
    return {
        "apiVersion": contract.API_VERSION,
        "kind": contract.KIND,
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "roles": {
                "worker": {
                    "replicas": replicas,
                    "maxReplicas": max(replicas, 1) * 2,
                    "template": {"spec": {"containers": [container]}},
                }
            }
        },
    }


def fmt(xs: list[float]) -> str:
    return "/".join(f"{x:.2f}" for x in xs)


class Bench:
    def __init__(self, cluster: E2ECluster, kube: Kube) -> None:
        self.cluster = cluster
        self.kube = kube
        self.api = Api(cluster.kubeconfig)

    def pods_in(self, ns: str) -> int:
        return len(self.api.items(f"/api/v1/namespaces/{ns}/pods"))

    def done_jobs(self, ns: str) -> int:
        items = self.api.items(JOBS_PATH.format(ns=ns))
        return sum(
            1
            for j in items
            if (j.get("status") or {}).get("replicas") == j["spec"]["roles"]["worker"]["replicas"]
            and (j.get("status") or {}).get("observedGeneration") == j["metadata"]["generation"]
        )

    @staticmethod
    async def until(pred: Any, timeout: float, what: str, every: float = 0.01) -> float:
        """Poll ``pred`` (a list through the API server: poll no faster than needed)."""
        t0 = time.monotonic()
        while not pred():
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
            await asyncio.sleep(every)
        return time.monotonic()

    async def post_job(self, m: dict[str, Any]) -> dict[str, Any]:
        ns = m["metadata"]["namespace"]
        _, obj = await self.kube.request("POST", JOBS_PATH.format(ns=ns), body=m)
        return obj

    async def anchor_pods(self, ns: str, n: int) -> float:
        """The same n pods the operator would render, POSTed directly, 8 in flight."""
        obj = await self.post_job(manifest("anchor", ns, n))
        obj = copy.deepcopy(obj)
        job = parse_job(obj)
        pods = [render_pod(job, Slot("worker", i), defaults=OperatorDefaults()) for i in range(n)]
        sem = asyncio.Semaphore(8)

        async def one(p: dict[str, Any]) -> None:
            async with sem:
                await self.kube.create(p)

        t0 = time.monotonic()
        await asyncio.gather(*(one(p) for p in pods))
        return time.monotonic() - t0

    async def anchor_jobs(self, ns: str, n: int) -> float:
        """The API writes 100 one-worker jobs need at least: their pod, Service and
        NetworkPolicy POSTs and a status PATCH each."""
        objs = [await self.post_job(manifest(f"a{i}", ns, 1)) for i in range(n)]
        sem = asyncio.Semaphore(8)

        async def one(obj: dict[str, Any]) -> None:
            job = parse_job(obj)
            async with sem:
                await self.kube.create(
                    render_pod(job, Slot("worker", 0), defaults=OperatorDefaults())
                )
                await self.kube.create(render_service(job))
                await self.kube.create(render_network_policy(job))
                md = obj["metadata"]
                status = {"replicas": 1, "observedGeneration": 1, "state": "Pending"}
                await self.kube.patch_job_status(
                    ns, md["name"], md["resourceVersion"], merge_patch({}, status)
                )

        t0 = time.monotonic()
        await asyncio.gather(*(one(o) for o in objs))
        return time.monotonic() - t0

    async def apply_rounds(self, rounds: range, workers: int) -> tuple[list[float], list[float]]:
        """apply -> all pods of a 32-worker job, per round (alternating with the anchor)."""
        apply_s, anchor_pods_s = [], []
        for i in rounds:
            anchor_pods_s.append(await self.anchor_pods(f"anchor-pods-{i}", workers))
            ns = f"bench-pods-{i}"
            t0 = time.monotonic()
            await self.post_job(manifest("big", ns, workers))
            t1 = await self.until(lambda ns=ns: self.pods_in(ns) >= workers, 120, "32 pods")
            apply_s.append(t1 - t0)
        return apply_s, anchor_pods_s

    async def job_rounds(self, rounds: range, jobs: int) -> dict[str, Any]:
        """100 jobs back to back -> every one reconciled (pod + status for its generation), per
        round (alternating with the anchor)."""
        jobs_s, posted_s, anchor_jobs_s = [], [], []
        pods_ok = True
        for i in rounds:
            anchor_jobs_s.append(await self.anchor_jobs(f"anchor-jobs-{i}", jobs))
            ns = f"bench-jobs-{i}"
            t0 = time.monotonic()
            for k in range(jobs):
                await self.post_job(manifest(f"j{k}", ns, 1))
            posted_s.append(time.monotonic() - t0)
            t1 = await self.until(
                lambda ns=ns: self.done_jobs(ns) >= jobs, 600, "100 jobs reconciled", every=0.1
            )
            jobs_s.append(t1 - t0)
            pods_ok = pods_ok and self.pods_in(ns) == jobs  # no duplicates, none missing
        return {
            "jobs_s": jobs_s,
            "jobs_posted_s": posted_s,
            "anchor_jobs_s": anchor_jobs_s,
            "pods_ok": pods_ok,
        }


def kubectl(cluster: E2ECluster, *args: str) -> None:
    subprocess.run([str(build.binary("kubectl")), "--kubeconfig", str(cluster.kubeconfig), *args],
                   check=True, capture_output=True, timeout=120)  # fmt: skip


def connect(cluster: E2ECluster) -> Kube:
    """The operator's own client, under a user agent of its own (not counted as the operator's
    calls)."""
    from kubernetes import client, config

    cfg = client.Configuration()
    config.load_kube_config(config_file=str(cluster.kubeconfig), client_configuration=cfg)
    kube = Kube(cfg, threads=16)
    kube._api.user_agent = "rpcjob-bench"
    return kube


def start_operator(
    cluster: E2ECluster, etcd: EmbeddedEtcd, workdir: str, served: list[str], health: int,
    metrics_port: int,
) -> subprocess.Popen[bytes]:  # fmt: skip
    """The real ``rpcjob-operator`` process, serving only the ``served`` namespaces."""
    op_args = [
        *(f"--namespace={ns}" for ns in served),
        "--standalone",
        f"--liveness=http://127.0.0.1:{health}/healthz",
        f"--metrics=127.0.0.1:{metrics_port}",
    ]
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig),
           contract.ENV_DEFAULT_ETCD_ENDPOINTS: etcd.endpoint}  # fmt: skip
    with open(Path(workdir) / "operator.log", "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "rpcjob_operator.main", *op_args], env=env,
                                stdout=log, stderr=subprocess.STDOUT)  # fmt: skip


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def operator_calls(cluster: E2ECluster, since: float) -> int:
    """API requests by the operator and kopf since ``since`` (wall clock), from the audit log."""
    return sum(
        1
        for rec in audit.read(cluster.control.audit_log)  # type: ignore[union-attr]
        if rec.time >= since and rec.user_agent.startswith(("rpcjob-operator", "kopf"))
    )


def reconciles_total(metrics_port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read().decode()
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("rpcjob_operator_reconciles_total{")
    )


async def run(args: argparse.Namespace, cluster: E2ECluster, etcd: EmbeddedEtcd,
              workdir: str) -> dict[str, Any]:  # fmt: skip
    kube = connect(cluster)
    b = Bench(cluster, kube)
    # The operator serves only the bench-* namespaces: the anchors' objects stay unseen, so
    # anchor and operator rounds can alternate (this machine's load changes minute to minute).
    pod_rounds, job_rounds = range(args.rounds), range(args.job_rounds)
    served = [f"bench-pods-{i}" for i in pod_rounds] + [f"bench-jobs-{i}" for i in job_rounds]
    anchors = [f"anchor-pods-{i}" for i in pod_rounds] + [f"anchor-jobs-{i}" for i in job_rounds]
    for ns in served + anchors:
        kubectl(cluster, "create", "namespace", ns)
    health, metrics_port = free_port(), free_port()
    proc = start_operator(cluster, etcd, workdir, served, health, metrics_port)
    await b.until(lambda: healthy(health), 60, "the operator's liveness endpoint")
    rss_idle = rss_mb(proc.pid)
    apply_s, anchor_pods_s = await b.apply_rounds(pod_rounds, args.workers)
    cpu0, wall0 = cpu_s(proc.pid), time.time()
    jobs = await b.job_rounds(job_rounds, args.jobs)
    jobs_cpu = cpu_s(proc.pid) - cpu0
    calls = operator_calls(cluster, wall0)
    rss = rss_mb(proc.pid)
    reconciles = reconciles_total(metrics_port)
    proc.terminate()
    proc.wait(30)
    kube.close()
    return {
        "apply_s": apply_s,
        "anchor_pods_s": anchor_pods_s,
        **jobs,
        "rss": rss,
        "rss_idle": rss_idle,
        "reconciles": reconciles,
        "jobs_cpu": jobs_cpu,
        "calls": calls,
    }


def report(args: argparse.Namespace, r: dict[str, Any]) -> None:
    w, j = args.workers, args.jobs
    med = statistics.median
    ratios = [x / y for x, y in zip(r["apply_s"], r["anchor_pods_s"], strict=True)]
    print(
        f"apply -> {w} pods, per round: operator {fmt(r['apply_s'])}s; anchor (the same "
        f"pods POSTed directly) {fmt(r['anchor_pods_s'])}s; ratio {fmt(ratios)}; median "
        f"ratio {med(ratios):.1f}x"
    )
    jratios = [x / y for x, y in zip(r["jobs_s"], r["anchor_jobs_s"], strict=True)]
    lags = [x - y for x, y in zip(r["jobs_s"], r["jobs_posted_s"], strict=True)]
    print(
        f"{j} jobs reconciled, per round: {fmt(r['jobs_s'])}s (POSTing them "
        f"{fmt(r['jobs_posted_s'])}s; lag after the last POST {fmt(lags)}s); anchor (pod, "
        f"Service, NetworkPolicy POSTs + a status PATCH per job) {fmt(r['anchor_jobs_s'])}s;"
        f" ratio {fmt(jratios)}; median ratio {med(jratios):.1f}x"
    )
    n = j * len(r["jobs_s"])
    print(
        f"  {r['reconciles']:.0f} reconcile cycles in all; {r['calls']} API calls by the "
        f"operator and kopf for {n} jobs (the anchor makes {4 * n}); operator CPU "
        f"{r['jobs_cpu']:.1f}s; exactly one pod per job: {r['pods_ok']}"
    )
    print(f"operator RSS: {r['rss']:.1f} MB after the jobs ({r['rss_idle']:.1f} MB idle)")
    print(json.dumps({
        "apply_to_pods_s_32": round(med(r["apply_s"]), 3),
        "jobs_100_reconcile_s": round(med(r["jobs_s"]), 3),
        "operator_rss_mb": round(r["rss"], 1),
    }))  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workers", type=int, default=32)
    p.add_argument("--jobs", type=int, default=100)
    p.add_argument("--rounds", type=int, default=5, help="32-pod rounds (median reported)")
    p.add_argument("--job-rounds", type=int, default=2, help="100-job rounds (median)")
    p.add_argument("--nodes", type=int, default=0, help="process kubelets that run the pods")
    args = p.parse_args()
    workdir = tempfile.mkdtemp(prefix="rpjbench-", dir="/tmp")
    etcd = EmbeddedEtcd()
    etcd.start()
    cluster = E2ECluster(nodes=args.nodes).start()
    try:
        kubectl(cluster, "apply", "--server-side", "-f", str(ROOT / "crds"))
        kubectl(cluster, "wait", "--for=condition=Established", "crd", "--all")
        r = asyncio.run(run(args, cluster, etcd, workdir))
    finally:
        cluster.stop()
        etcd.close()
    report(args, r)
    return 0 if r["pods_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
