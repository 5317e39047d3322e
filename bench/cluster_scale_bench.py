"""Scale-up on the real e2e control plane, end to end: an RpcJob scaled 2 -> N with
``kubectl scale``, split into phases (the cluster half of bench/scale_bench.py).

A fresh cluster and the chart, as bench/cluster_bench.py starts them (pinned kube-apiserver,
controller manager and scheduler, ``--nodes`` process kubelets, the operator as a pod). An
RpcJob with 2 workers whose worker is scale_bench's member (it stamps its phases, then pings
every member it lists) forms; then ``kubectl scale rpj/bench --replicas=N`` (README) changes
the worker role's replicas, and the bench waits until every member's agent lists N and every
member has pinged every other. The phases of each new pod, from "replicas changed" (the API
server's answer to the scale request, from its audit log):

    created    -> the operator's create of the pod (audit log)
    scheduled  -> the scheduler's binding of the pod (audit log)
    sandbox    -> the pod's first process exists (its sidecar's; /proc start time): the
                  kubelet's pod watch, network namespace and volumes
    started    -> the worker process exists (/proc start time)
    imports, sidecar, rank, setup, join, reach: as in bench/scale_bench.py

and the operator's calls between the request and its last pod create (audit log: read the job,
list its pods, status write, Service and NetworkPolicy, pod creates).

Anchor, measured in the same run (scale_bench's): N plain torch processes started at once on
this host joining a TCPStore dynamic group, from spawn until all reached each other; run while
the 2-worker job idles, just before the scale.

Each worker pod is a torch worker plus its sidecar (~540 MB): a size that would not fit in
``MemAvailable`` (540 MB per pod + 2 GB) is refused. Needs root and the pinned binaries
(``python3 -m e2e.cluster.build``).

    python3 bench/cluster_scale_bench.py [--size 8] [--nodes 2]

Ends with one JSON line: {"cluster_scale_s": s, "anchor_s": s, "scale_vs_anchor": x,
"phases_s": {...}, "largest_phase": name, "pod_creates_s": [first, last], ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # e2e/

import cluster_bench
import scale_bench

from e2e.backends import cluster as real
from e2e.backends.api import Api
from e2e.cluster import audit
from rpcjob import contract

MB_PER_POD = 540  # torch worker ~490 MB RSS + sidecar ~52 MB (docs/benchmarks.md)
HEADROOM_MB = 2048
NAMESPACE, JOB = "scale-bench", "bench"
PHASES = ["created", "scheduled", "sandbox", *scale_bench.PHASES[1:]]


def job_manifest(size: int, workdir: Path, out: Path) -> dict[str, Any]:
    member = workdir / "member.py"
    member.write_text(scale_bench.MEMBER)
    env = {"SCALE_MODE": "rpcjob", "SCALE_OUT": str(out)}
    return cluster_bench.job(JOB, 2, max_replicas=size, command=["python3", str(member)], env=env)


def audit_stamps(
    backend: real.ClusterBackend, since: float
) -> tuple[float | None, dict[str, float], dict[str, float], list[str]]:
    """From the API server's audit log, after ``since``: when the scale request was answered,
    each pod's create and binding (times of the answers), and the operator's calls after the
    request up to its last pod create ("+seconds verb resource code")."""
    ours = [r for r in audit.read(Path(backend.audit_log))
            if r.namespace == NAMESPACE and r.time >= since and 200 <= r.code < 300]  # fmt: skip
    # (resource, verb, subresource) -> object name -> when the API server answered
    answered: dict[tuple[str, str, str], dict[str, float]] = {}
    for r in ours:
        answered.setdefault((r.resource, r.verb, r.subresource), {})[r.name] = r.time
    scale = answered.get((contract.PLURAL, "patch", "scale"), {})
    t0 = min(scale.values()) if scale else None
    created = answered.get(("pods", "create", ""), {})
    bound = answered.get(("pods", "create", "binding"), {})
    calls = []
    if t0 is not None and created:
        last = max(created.values())
        for r in sorted(backend.audit_records(), key=lambda r: r.time):  # the operator's own
            if r.namespace == NAMESPACE and t0 <= r.time <= last and r.verb != "watch":
                what = r.resource + (f"/{r.subresource}" if r.subresource else "")
                calls.append(f"+{r.time - t0:.3f} {r.verb} {what} {r.code}")
    return t0, created, bound, calls


def first_processes() -> dict[str, float]:
    """Worker name -> when the first process of its pod started. The process kubelet runs
    containers as host processes whose environment names the slot; the sidecar starts first."""
    boot = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
    out: dict[str, float] = {}
    for proc in Path("/proc").iterdir():
        try:
            env = dict(kv.split("=", 1) for kv in (proc / "environ").read_text(errors="replace")
                       .split("\0") if "=" in kv)  # fmt: skip
            stat = (proc / "stat").read_text()
        except OSError:  # not a process, or it ended
            continue
        worker = env.get(contract.ENV_WORKER_NAME)
        if env.get(contract.ENV_NAMESPACE) != NAMESPACE or not worker:
            continue
        start = boot + int(stat[stat.rindex(")") + 2 :].split()[19]) / os.sysconf("SC_CLK_TCK")
        out[worker] = min(start, out.get(worker, start))
    return out


def new_pod_stamps(
    api: Api, created: dict[str, float], bound: dict[str, float], first: dict[str, float]
) -> dict[str, dict[str, float]]:
    """Worker name -> the stamps a member cannot take itself, for the pods created by the scale."""
    out = {}
    for pod in api.items(f"/api/v1/namespaces/{NAMESPACE}/pods"):
        name = pod["metadata"]["name"]
        worker = pod["metadata"]["labels"].get(contract.LABEL_WORKER_NAME)
        if name in created and worker:
            scheduled = bound.get(name, created[name])
            out[worker] = {"created": created[name], "scheduled": scheduled,
                           "sandbox": first.get(worker, scheduled)}  # fmt: skip
    return out


def explain_failure(backend: real.ClusterBackend, out: Path) -> None:
    """Where the scale stood when it failed: members' records, pods, the operator's log."""
    print(f"{len(scale_bench._records(out))} members had recorded; pods:", flush=True)
    try:
        print(backend._kubectl("-n", NAMESPACE, "get", "pods", "-o", "wide"))
        print("operator log (tail):", *backend.operator_logs().splitlines()[-30:], sep="\n")
    except Exception as e:  # the cluster itself may be what failed
        print(f"(could not read the cluster: {e})")


def scale_up(backend: real.ClusterBackend, size: int, workdir: Path) -> dict[str, Any]:
    """Form 2 workers, measure the anchor, scale to ``size``: the figures of one run."""
    out = workdir / "out"
    out.mkdir()
    (out / "target").write_text("2")
    backend._kubectl("create", "namespace", NAMESPACE)
    backend.prepare_namespace(NAMESPACE)
    manifest = workdir / "job.json"
    manifest.write_text(json.dumps(job_manifest(size, workdir, out)))
    t_apply = time.monotonic()
    backend._kubectl("-n", NAMESPACE, "apply", "-f", str(manifest))
    scale_bench._wait(lambda: scale_bench._reached(out, 2), 900, "the first 2 members")
    print(f"2 workers formed in {time.monotonic() - t_apply:.1f} s", flush=True)
    anchor = scale_bench.anchor(size, workdir)
    print(f"anchor: {size} plain torch processes, start -> all reached: {anchor:.2f} s", flush=True)
    time.sleep(2.0)  # let the first members settle after the anchor's load (as scale_bench)
    (out / "target").write_text(str(size))
    t_req = time.time()
    backend._kubectl("-n", NAMESPACE, "scale", f"rpj/{JOB}", f"--replicas={size}")
    done = scale_bench._wait(lambda: scale_bench._reached(out, size), 900,
                             f"all {size} members to reach each other")  # fmt: skip
    first = first_processes()  # while the pods run
    t0, created, bound, calls = audit_stamps(backend, t_req - 1.0)
    if t0 is None or not created:
        raise RuntimeError(f"the audit log {backend.audit_log} has no scale request or pod "
                           "create after it: cannot split the phases")  # fmt: skip
    stamps = new_pod_stamps(Api(backend.kubeconfig), created, bound, first)
    phases, slowest = scale_bench.split_phases(t0, done, size, stamps, PHASES)
    total = max(r["reach"][str(size)] for r in done.values()) - t0
    creates = [round(min(created.values()) - t0, 3), round(max(created.values()) - t0, 3)]
    return {"total": total, "anchor": anchor, "phases": phases, "slowest": slowest,
            "calls": calls, "creates_s": creates, "kubectl_s": round(t0 - t_req, 3),
            "new_pods": len(stamps)}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=8, help="workers after the scale (from 2)")
    ap.add_argument("--nodes", type=int, default=2)
    args = ap.parse_args()
    reason = real.unavailable()
    if reason:
        sys.exit(f"cluster_scale_bench: {reason}")
    need, have = args.size * MB_PER_POD + HEADROOM_MB, cluster_bench.mem_available_mb()
    if have < need:
        sys.exit(f"cluster_scale_bench: {args.size} workers need {need} MB, {have} MB available "
                 "(MemAvailable): pass a smaller --size")  # fmt: skip
    # `timeout` sends SIGTERM: leave through the finally block that stops the cluster
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(f"start: {scale_bench._load()}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="rpjscale-", dir="/var/tmp"))
    t_start = time.monotonic()
    backend = real.ClusterBackend(workdir, nodes=args.nodes).start()
    try:
        assert backend.k8s is not None
        print(f"cluster and chart ready in {time.monotonic() - t_start:.1f} s", flush=True)
        try:
            r = scale_up(backend, args.size, workdir)
        except BaseException:
            explain_failure(backend, workdir / "out")
            raise
    finally:
        backend.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    total, anchor = r["total"], r["anchor"]
    print(f"kubectl scale, start to the API server's answer: {r['kubectl_s']:.2f} s; the "
          "operator's calls after it (seconds after the answer, verb, resource, code):",
          *r["calls"], sep="\n  ")  # fmt: skip
    print(f"slowest new pod: {r['slowest']}")
    med = scale_bench.phase_summary(r["phases"])
    largest = max(med, key=lambda p: med[p])
    print(f"cluster: scale 2 -> {args.size} ({r['new_pods']} new pods), replicas changed -> all "
          f"reached: {total:.2f} s, anchor {anchor:.2f} s, ratio {total / anchor:.2f}x; "
          f"largest phase: {largest} ({med[largest]:.2f} s median)")  # fmt: skip
    print(f"end: {scale_bench._load()}", flush=True)
    print(json.dumps({
        "cluster_scale_s": round(total, 3),
        "size": args.size,
        "anchor_s": round(anchor, 3),
        "scale_vs_anchor": round(total / anchor, 3),
        "phases_s": med,
        "largest_phase": largest,
        "pod_creates_s": r["creates_s"],
        "kubectl_s": r["kubectl_s"],
        "nodes": args.nodes,
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
