"""rpcjob's side of bench/membership_bench.py: pods of tests/podkit.py (a real
``rpcjob-sidecar`` each) whose workers join through ``rpcjob.init_rpc()``, on a real etcd.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench_host import cpu_rate, load, rss_anon_mib
from membership_child import BATCH, CHILD_ARGV, PIPES, Child

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

# the anchor's TensorPipe options: 4 RPC threads, 120 s rpc timeout
SAME_AS_ANCHOR = {"RPCJOB_RPC_THREADS": "4", "RPCJOB_RPC_TIMEOUT": "120"}


def start_pods(job: Any, indexes: range) -> list[tuple[Any, Child]]:
    pods = [job.pod("worker", i, start=False) for i in indexes]
    for p in pods:
        p.start_sidecar(wait=False)
    from podkit import wait_for

    for p in pods:
        wait_for(p._sidecar_up, 300, f"sidecar {p.name}")
    out = []
    for p in pods:
        out.append((p, Child(p.start_worker([*CHILD_ARGV, "rpcjob", "-", "0", "0"], **PIPES))))
    return out


def rpcjob_join(endpoint: str, workdir: Path, n: int, repeats: int) -> float:
    """Median seconds of the N-th join into an rpcjob group of N-1 (pods: sidecar + worker)."""
    from podkit import Job

    job = Job(endpoint, workdir / f"join{n}", slots={"worker": n + repeats + 1}, env=SAME_AS_ANCHOR)
    times: list[float] = []
    t0 = time.monotonic()
    try:
        for lo in range(0, n - 1, BATCH):  # a few at a time: 2 shared cores
            for _, child in start_pods(job, range(lo, min(n - 1, lo + BATCH))):
                child.expect("JOINED")
            if n > 16:
                print(f"  rpcjob N={n}: {min(n - 1, lo + BATCH)} of {n - 1} joined, "
                      f"{time.monotonic() - t0:6.1f} s; {load()}", flush=True)  # fmt: skip
        for r in range(repeats):
            ((pod, joiner),) = start_pods(job, range(n - 1 + r, n + r))
            times.append(float(joiner.expect("JOINED").split()[3]))
            joiner.ask("leave", "LEFT")
            joiner.p.wait(timeout=120)
            pod.stop_sidecar()
    finally:
        job.close()
    return statistics.median(times)


def heal(endpoint: str, workdir: Path, kill: str, size: int = 4, ttl: int = 3) -> float:
    """Seconds from SIGKILL (of a worker, or of a sidecar) until every survivor's agent view
    excludes the dead member, etcd's membership agrees and torch's token is free."""
    from podkit import Job, wait_for

    from rpcjob.etcd import Client

    job = Job(
        endpoint, workdir / f"heal-{kill}", lease_ttl=ttl, slots={"worker": size},
        env=SAME_AS_ANCHOR,
    )  # fmt: skip
    client = Client(endpoint)
    try:
        pods = start_pods(job, range(size))
        for _, child in pods:
            child.expect("JOINED")
        (vpod, victim), survivors = pods[-1], [c for _, c in pods[:-1]]
        token_key = job.keys.store + "rpc_prefix_0/RpcGroupManagementToken"
        victim_name = vpod.name

        def healthy() -> bool:
            members = [kv.key.decode().rsplit("/", 1)[1] for kv in client.get_prefix(
                job.keys.members)]  # fmt: skip
            token = client.get(token_key)
            if victim_name in members or (token is not None and token.value != b""):
                return False
            for c in survivors:
                view = json.loads(c.ask("members", "MEMBERS").split(" ", 1)[1])
                if any(n == victim_name for n, _ in view):
                    return False
            return True

        t0 = time.monotonic()
        if kill == "worker":
            victim.kill()
        else:
            vpod.kill_sidecar()
        wait_for(healthy, 120, "the group to heal", interval=0.01)
        return time.monotonic() - t0
    finally:
        job.close()
        client.close()


def idle_cpu_rpcjob(endpoint: str, workdir: Path, n: int, window: float) -> dict[str, float]:
    """CPU-s/s per member of an idle rpcjob group (worker + sidecar), rpcjob's defaults."""
    from podkit import Job

    job = Job(endpoint, workdir / "idle", slots={"worker": n}, env={"RPCJOB_RPC_THREADS": "16"})
    try:
        pods = []
        for lo in range(0, n, BATCH):
            batch = start_pods(job, range(lo, min(n, lo + BATCH)))
            for _, child in batch:
                child.expect("JOINED")
            pods += batch
        time.sleep(2.0)  # settle: the last join's events, device re-application
        workers = [c.p.pid for _, c in pods]
        sidecars = [p.sidecar.pid for p, _ in pods]
        w = cpu_rate(workers, window) / n
        s = cpu_rate(sidecars, window) / n
        mem = {"worker_mib": rss_anon_mib(workers) / n, "sidecar_mib": rss_anon_mib(sidecars) / n}
        return {"worker": w, "sidecar": s, "total": w + s, **mem}
    finally:
        job.close()
