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
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "sidecar"))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from gpu_bench_workers import (  # noqa: E402
    WAIT,
    client,
    free_port,
    wait_file,
    worker_handset,
    worker_pidns,
    worker_rpcjob,
    worker_sidecar,
)
from gpu_netns import NetnsPods  # noqa: E402


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
    import tempfile

    sys.path.insert(0, str(ROOT / "operator"))
    sys.path.insert(0, str(ROOT / "tests"))
    from podkit import Job  # type: ignore[import-not-found]

    from rpcjob import contract as c
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
        argv = [sys.executable, __file__, "--worker", "sidecar", "--size-mib", str(a.size_mib),
                "--iters", str(a.iters)]  # fmt: skip
        deadline = time.monotonic() + limit
        try:
            for i, gpu_index in enumerate(gpus):
                visible = "" if a.cpu else gpu_index
                if net is None:
                    pod = job.pod("worker", i, CUDA_VISIBLE_DEVICES=visible)
                    prefix: list[str] = []
                else:
                    pod = job.pod("worker", i, start=False, CUDA_VISIBLE_DEVICES=visible)
                    start_in_netns(pod, net, i, c)
                    prefix = net.prefix(i)
                if dev_isolation and not a.cpu:
                    prefix = [*prefix, *isolation_prefix(gpu_index)]
                    pod.env["CUDA_VISIBLE_DEVICES"] = "0"  # the only GPU its /dev holds
                pod.start_worker([*prefix, *argv], env={"BENCH_DIR": str(d)})
                wait_file(d / f"joined_worker_{i}", max(1.0, deadline - time.monotonic()))
                if i == 1:
                    wait_file(d / "phase1_done", max(1.0, deadline - time.monotonic()))
            wait_file(d / "L_done", max(1.0, deadline - time.monotonic()))
            for pod in job.pods:
                for w in pod.workers:
                    w.wait(timeout=max(1.0, deadline - time.monotonic()))
        except Exception as e:
            res["error"] = f"{type(e).__name__}: {e}"
        finally:
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
            job.close()
    return res


def start_in_netns(pod: Any, net: NetnsPods, i: int, c: Any) -> None:
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


# --- pods in their own network namespaces (as on a real node) ------------------------------
TIME_SLICED = {
    "nvidia.com/gpu.count": "1",
    "nvidia.com/gpu.replicas": "2",
    "nvidia.com/gpu.sharing-strategy": "time-slicing",
}


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


# --- parent ---------------------------------------------------------------------------------
def run_scenario(
    kind: str,
    workers: list[tuple[str, dict[str, str], list[str]]],
    a: argparse.Namespace,
    limit: float,
    host: str = "127.0.0.1",
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
        cmd = [
            *prefix,
            sys.executable,
            __file__,
            "--worker",
            kind,
            "--name",
            name,
            "--port",
            str(port),
            "--size-mib",
            str(a.size_mib),
            "--iters",
            str(a.iters),
            "--node-gpus",
            str(a.node_gpus),
        ]
        if a.cpu:
            cmd.append("--cpu")
        procs.append(subprocess.Popen(cmd, env=env))
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


def worker_main(a: argparse.Namespace) -> None:
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
    os._exit(0)  # skip torch's atexit (a failed agent can hang there)


def main() -> None:
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
    a = ap.parse_args()
    if a.worker == "sidecar":
        try:
            worker_sidecar(a)
        except Exception:
            traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    if a.worker:
        if a.worker == "handset":
            a.rank = int(os.environ["BENCH_RANK"])
            a.visible = os.environ["BENCH_VISIBLE"]
            a.name = f"w{a.rank}"
        worker_main(a)
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
    gpu = (
        (lambda i: {"CUDA_VISIBLE_DEVICES": str(i)})
        if not a.cpu
        else (lambda i: {"CUDA_VISIBLE_DEVICES": ""})
    )
    res: dict[str, Any] = {"card": card, "gpus": ngpu, "torch": torch.__version__}
    if not a.cpu and "handset" in a.scenarios:
        for vis in ("own", "all"):
            env = (lambda i: gpu(i)) if vis == "own" else (lambda i: {})
            ws = [(f"w{r}", env(r), []) for r in range(2)]
            # handset workers take their rank from the name
            for i, (nm, e, pfx) in enumerate(ws):
                ws[i] = (nm, {**e, "BENCH_RANK": str(i), "BENCH_VISIBLE": vis}, pfx)
            res[f"handset_{vis}"] = run_scenario("handset", ws, a, 150)
    rj = [("worker_0", gpu(0), []), ("worker_1", gpu(1), []), ("worker_2", gpu(0), [])]
    if not a.cpu and "handset" in a.scenarios:  # the anchor twice: its run-to-run spread
        ws2 = [
            (f"w{r}", {**gpu(r), "BENCH_RANK": str(r), "BENCH_VISIBLE": "own"}, [])
            for r in range(2)
        ]
        res["handset_own_again"] = run_scenario("handset", ws2, a, 150)
    if "rpcjob" in a.scenarios:
        res["rpcjob"] = run_scenario("rpcjob", rj, a, 240)
    if "sidecar" in a.scenarios:
        res["sidecar"] = run_sidecar_scenario(a, 240)
    if a.pidns and not a.cpu:
        unshare = shutil.which("unshare")
        if unshare:
            pj = [
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
    if a.crossnode and not a.cpu:
        xenv = {
            "BENCH_WAIT_S": "40",
            "BENCH_TRANSPORTS": "uv",
            "BENCH_CHANNELS": "cuda_basic,basic",
        }
        xj = [("worker_0", {**gpu(0), **xenv}, []), ("worker_1", {**gpu(1), **xenv}, [])]
        res["crossnode"] = run_scenario("pidns", xj, a, 90)
    if a.isolated and not a.cpu:
        unshare = shutil.which("unshare")
        if unshare:
            iso = [unshare, "--mount", "--pid", "--fork", "--kill-child", "--mount-proc",
                   "sh", "-c", ISOLATE, "isolate"]  # fmt: skip
            wenv = {"BENCH_WAIT_S": "40"}
            ij = [("worker_0", wenv, [*iso, "0"]), ("worker_1", wenv, [*iso, "1"])]
            res["isolated"] = run_scenario("pidns", ij, a, 60)
    if a.netns or a.scenarios == "netns":
        res.update(run_netns(a))
    summarize(res, a)


def summarize(res: dict[str, Any], a: argparse.Namespace) -> None:
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2), flush=True)

    def g(*path: str) -> float | None:
        cur: Any = res
        for k in path:
            if not isinstance(cur, dict) or k not in cur:
                return None
            cur = cur[k]
        return float(cur) if isinstance(cur, (int, float)) else None

    hs_runs = [v for v in (g("handset_own", "w0", "bw", "gbps"),
                           g("handset_own_again", "w0", "bw", "gbps")) if v]  # fmt: skip
    hs = statistics.mean(hs_runs) if hs_runs else None
    hs_all = g("handset_all", "w0", "bw", "gbps")
    store_path = g("rpcjob", "worker_0", "bw_maps", "gbps")
    store_leave = g("rpcjob", "worker_0", "bw_maps_after_leave", "gbps")
    side = g("sidecar", "worker_0", "bw_maps", "gbps")
    side_leave = g("sidecar", "worker_0", "bw_maps_after_leave", "gbps")
    cpu = g("sidecar", "worker_0", "bw_cpu_staging", "gbps") or g(
        "rpcjob", "worker_0", "bw_cpu_staging", "gbps"
    )
    rj = side or store_path

    def ratio(x: float | None, y: float | None) -> float | None:
        return round(x / y, 4) if x and y else None

    netns = [k for k in res if k.startswith("netns") and not k.endswith("_handset")]
    for scen in ("rpcjob", "sidecar", *netns):
        checks = {
            f"{w}.{k}": v
            for w, r in res.get(scen, {}).items()
            if isinstance(r, dict)
            for k, v in r.items()
            if k[:1].isupper() and k[1:2] == "_"
        }
        if checks:
            print(f"\nchecks ({scen}):", json.dumps(checks, indent=1))
    print(f"\nhandset runs (GB/s): {[round(v, 1) for v in hs_runs]}  all-visible: {hs_all}")
    for label, v in (("store-driven + guards", store_path), ("after leave", store_leave),
                     ("real sidecar path", side), ("sidecar, after leave", side_leave),
                     ("cpu staging", cpu)):  # fmt: skip
        if v:
            print(f"{label:24s} {v:8.2f} GB/s   x{ratio(v, hs)} of handset")
    iso: dict[str, Any] = {}
    for k in netns:
        nrj, nhs = g(k, "worker_0", "bw_maps", "gbps"), g(f"{k}_handset", "w0", "bw", "gbps")
        ncpu = g(k, "worker_0", "bw_cpu_staging", "gbps")
        iso[k] = {
            "gbps_rpcjob": nrj,
            "gbps_rpcjob_after_leave": g(k, "worker_0", "bw_maps_after_leave", "gbps"),
            "gbps_handset": nhs,
            "gbps_cpu_staging": ncpu,
            "ratio_vs_handset": ratio(nrj, nhs),
            "ratio_vs_cpu_staging": ratio(nrj, ncpu),
            "error": res[k].get("error"),
        }
        print(f"{k:24s} rpcjob {nrj} GB/s, hand-set {nhs} GB/s (x{ratio(nrj, nhs)}), "
              f"cpu staging {ncpu} GB/s")  # fmt: skip
    print(
        json.dumps(
            {
                "isolated": iso,
                "gbps_handset": hs,
                "gbps_handset_runs": hs_runs,
                "gbps_handset_all_visible": hs_all,
                "gbps_rpcjob": rj,
                "gbps_rpcjob_path": "sidecar" if side else "store-driven",
                "gbps_rpcjob_store_driven": store_path,
                "gbps_rpcjob_after_leave": side_leave or store_leave,
                "gbps_cpu_staging": cpu,
                "ratio_vs_handset": ratio(rj, hs),
                "ratio_vs_cpu_staging": ratio(rj, cpu),
                "card": res["card"],
            }
        )
    )


if __name__ == "__main__":
    main()
