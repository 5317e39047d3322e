"""1 GiB CUDA tensor RPC bandwidth: rpcjob's device maps vs hand-written torch maps (issue 3).

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
import socket
import statistics
import subprocess
import sys
import time
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "sidecar"))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.distributed.rpc as rpc  # noqa: E402

from rpcjob.devices import Peer, RoleShape, parse_node_labels, plan_devices, visible_gpus  # noqa: E402
from rpcjob.devices import agent as devagent  # noqa: E402

WARMUP = 5  # calls before timing: channel setup, allocator caching, clocks
WAIT = timedelta(seconds=float(os.environ.get("BENCH_WAIT_S", "120")))


# --- functions run remotely -----------------------------------------------------------------
def _consume(t: torch.Tensor) -> int:
    if t.is_cuda:
        torch.cuda.synchronize(t.device)  # the copy into this process is complete
    return int(t.numel())


def _stage_in(t: torch.Tensor) -> int:
    dev = torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")
    g = t.to(dev)
    if g.is_cuda:
        torch.cuda.synchronize(g.device)
    return int(g.numel())


def _double(t: torch.Tensor) -> torch.Tensor:
    return t * 2


def _make(n: int, on_cuda: bool) -> torch.Tensor:
    return torch.arange(n, dtype=torch.float32, device="cuda:0" if on_cuda else "cpu")


# --- helpers --------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def client(port: int) -> dist.TCPStore:
    return dist.TCPStore("127.0.0.1", port, is_master=False, timeout=WAIT)


def bandwidth(
    dst: str, t: torch.Tensor, iters: int, fn: Any = _consume, prep: Any = None
) -> dict[str, float]:
    nbytes = t.numel() * t.element_size()
    times = []
    for i in range(iters + WARMUP):
        if t.is_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        arg = prep(t) if prep is not None else t
        rpc.rpc_sync(dst, fn, args=(arg,), timeout=300)
        dt = time.perf_counter() - t0
        if i >= WARMUP:
            times.append(dt)
    med = statistics.median(times)
    return {"gbps": nbytes / med / 1e9, "median_s": med, "best_gbps": nbytes / min(times) / 1e9}


def roundtrip(dst: str, cuda: bool, timeout: float = 60) -> str:
    """A CUDA tensor there and a CUDA tensor back; "ok" or the error."""
    try:
        x = _make(1 << 20, cuda)
        y = rpc.rpc_sync(dst, _double, args=(x,), timeout=timeout)
        if cuda and not y.is_cuda:
            return f"reply on {y.device}, expected cuda"
        if not torch.equal(y.cpu(), (x * 2).cpu()):
            return "wrong values"
        return "ok"
    except Exception as e:  # recorded, not fatal: negative controls expect failures
        return f"error: {type(e).__name__}: {str(e).splitlines()[0][:200]}"


class Results(dict[str, Any]):
    """A worker's results, saved to the store on every write: a crash keeps what was measured."""

    def __init__(self, store: dist.TCPStore, name: str) -> None:
        super().__init__()
        self.store, self.key = store, f"bench/result/{name}"

    def __setitem__(self, k: str, v: Any) -> None:
        super().__setitem__(k, v)
        self.store.set(self.key, json.dumps(dict(self)))


def log(name: str, msg: str) -> None:
    print(f"[{name}] {msg}", flush=True)


# --- worker: hand-written static maps -------------------------------------------------------
def worker_handset(a: argparse.Namespace) -> dict[str, Any]:
    me, peer = f"w{a.rank}", f"w{1 - a.rank}"
    mine = 0 if a.visible == "own" else a.rank
    theirs = 0 if a.visible == "own" else 1 - a.rank
    torch.cuda.set_device(mine)
    torch.cuda.init()
    opts = rpc.TensorPipeRpcBackendOptions(
        init_method=f"tcp://127.0.0.1:{a.port}",
        num_worker_threads=16,
        rpc_timeout=300,
        devices=[f"cuda:{mine}"],
    )
    opts.set_device_map(peer, {mine: theirs})
    rpc.init_rpc(me, rank=a.rank, world_size=2, rpc_backend_options=opts)
    out = Results(client(a.port), me)
    if a.rank == 0:
        x = torch.rand(a.size_mib << 18, device=f"cuda:{mine}")
        out["roundtrip"] = roundtrip(peer, True)
        out["bw"] = bandwidth(peer, x, a.iters)
        log(me, f"handset({a.visible}) {out}")
    rpc.shutdown()
    return out


# --- worker: rpcjob dynamic path ---------------------------------------------------------------
SLOTS = {"worker": RoleShape(max_replicas=3, gpus=1)}


def record(store: dist.TCPStore, name: str, rank: int, devices: tuple[str, ...]) -> None:
    rec = {"name": name, "rank": rank, "node": socket.gethostname(), "devices": list(devices)}
    store.set(f"bench/member/{name}", json.dumps(rec))


def read_peer(store: dist.TCPStore, name: str) -> tuple[Peer, int]:
    store.wait([f"bench/member/{name}"], WAIT)
    rec = json.loads(store.get(f"bench/member/{name}"))
    return Peer(rec["name"], rec["node"], "", tuple(rec["devices"])), int(rec["rank"])


class Member:
    """What the rpcjob worker library does, driven here by store keys instead of the sidecar."""

    def __init__(self, a: argparse.Namespace, store: dist.TCPStore, cuda: bool) -> None:
        self.a, self.store, self.name, self.cuda = a, store, a.name, cuda
        env = dict(os.environ)
        self.visible = visible_gpus(env, torch.cuda.device_count() if cuda else 0)
        labels = {"nvidia.com/gpu.count": str(a.node_gpus), "nvidia.com/gpu.present": "true"}
        self.node = parse_node_labels(labels, socket.gethostname())
        self.peers: dict[str, tuple[Peer, int]] = {}

    def plan(self) -> Any:
        return plan_devices(
            worker=self.name,
            node=self.node,
            requested_gpus=1 if self.cuda else 0,
            slots=SLOTS,
            visible=self.visible,
            peers=[p for p, _ in self.peers.values()],
        )

    def join(self, rank: int, after: list[str]) -> None:
        for peer in after:
            self.peers[peer] = read_peer(self.store, peer)
        self.p = self.plan()
        if self.cuda:  # DESIGN §5.1: a worker without CUDA state aborts on its first CUDA tensor
            torch.cuda.set_device(0)
            torch.cuda.init()
            torch.empty(1, device="cuda:0")
        devagent.install_membership_guards(self.p.devices)
        opts = rpc.TensorPipeRpcBackendOptions(
            init_method=f"tcp://127.0.0.1:{self.a.port}",
            num_worker_threads=16,
            rpc_timeout=300,
            devices=list(self.p.devices),
            device_maps={k: dict(v) for k, v in self.p.device_maps.items() if v},
        )
        rpc.init_rpc(self.name, rank=rank, world_size=None, rpc_backend_options=opts)
        self.rank = rank
        record(self.store, self.name, rank, self.p.devices)
        log(
            self.name,
            f"joined rank={rank} devices={self.p.devices} maps={dict(self.p.device_maps)}",
        )

    def apply(self, peer: str) -> None:
        """JOINED(peer), as the sidecar's event drives it: re-apply my devices + its reverse map."""
        p, rank = self.peers.get(peer) or read_peer(self.store, peer)
        self.peers[peer] = (p, rank)
        devagent.reapply(peer, rank, self.p.reverse_map(p))

    def left(self, peer: str) -> None:
        """LEFT(peer): re-apply for every live peer (a no-op change with the guards installed)."""
        self.peers.pop(peer, None)
        for other in list(self.peers):
            self.apply(other)


def worker_rpcjob(a: argparse.Namespace) -> dict[str, Any]:
    cuda = not a.cpu
    store = client(a.port)
    m = Member(a, store, cuda)
    out = Results(store, a.name)
    n = a.size_mib << 18
    dev = "cuda:0" if cuda else "cpu"
    if a.name == "worker_0":  # early joiner
        m.join(1, [])
        # The late joiner checks L->E before we apply anything: torch's own join must suffice.
        store.wait(["bench/L_checked_before_apply"], WAIT)
        out["E_to_L_before_apply"] = roundtrip("worker_1", cuda)
        m.apply("worker_1")
        store.set("bench/applied/worker_0/worker_1", "1")
        out["E_to_L_after_join"] = roundtrip("worker_1", cuda)
        store.wait(["bench/L_to_E_checked"], WAIT)
        x = torch.rand(n, device=dev)
        out["bw_maps"] = bandwidth("worker_1", x, a.iters)
        log(a.name, f"maps E->L {out['bw_maps']}")
        out["bw_cpu_staging"] = bandwidth("worker_1", x, 3, fn=_stage_in, prep=lambda t: t.cpu())
        log(a.name, f"staging E->L {out['bw_cpu_staging']}")
        store.set("bench/phase1_done", "1")
        store.wait(["bench/T_checked"], WAIT)
        out["E_to_T_before_apply"] = roundtrip("worker_2", cuda)
        m.apply("worker_2")
        out["E_to_T"] = roundtrip("worker_2", cuda)
        store.set("bench/E_to_T_checked", "1")
        store.wait(["bench/left/worker_2"], WAIT)
        # Right after the graceful leave, before any re-application (the race of DESIGN 5.3).
        out["E_to_L_right_after_leave"] = roundtrip("worker_1", cuda)
        out["reverse_maps_after_leave"] = json.dumps(devagent.reverse_maps())
        m.left("worker_2")
        out["E_to_L_after_leave"] = roundtrip("worker_1", cuda)
        store.set("bench/reapplied/worker_0", "1")
        store.wait(["bench/reapplied/worker_1"], WAIT)
        out["bw_maps_after_leave"] = bandwidth("worker_1", x, a.iters)
        log(a.name, f"maps E->L after leave {out['bw_maps_after_leave']}")
        store.set("bench/E_done", "1")
    elif a.name == "worker_1":  # late joiner
        m.join(2, ["worker_0"])
        out["L_to_E_before_apply"] = roundtrip("worker_0", cuda, timeout=30)
        store.set("bench/L_checked_before_apply", "1")
        store.wait(["bench/applied/worker_0/worker_1"], WAIT)
        out["L_to_E_after_join"] = roundtrip("worker_0", cuda)
        store.set("bench/L_to_E_checked", "1")
        store.wait(["bench/T_checked"], WAIT)
        m.apply("worker_2")
        store.set("bench/applied/worker_1/worker_2", "1")
        store.wait(["bench/left/worker_2"], WAIT)
        out["L_to_E_right_after_leave"] = roundtrip("worker_0", cuda)
        m.left("worker_2")
        store.set("bench/reapplied/worker_1", "1")
        out["L_to_E_after_leave"] = roundtrip("worker_0", cuda)
        store.wait(["bench/E_done"], WAIT)
        if cuda:
            y = torch.rand(n, device=dev)
            out["bw_maps_L_to_E"] = bandwidth("worker_0", y, a.iters)
            log(a.name, f"maps L->E {out['bw_maps_L_to_E']}")
    else:  # worker_2: joins third, then leaves gracefully
        store.wait(["bench/phase1_done"], WAIT)
        m.join(3, ["worker_0", "worker_1"])
        out["T_to_E"] = roundtrip("worker_0", cuda)
        out["T_to_L"] = roundtrip("worker_1", cuda)
        store.set("bench/T_checked", "1")
        store.wait(["bench/E_to_T_checked", "bench/applied/worker_1/worker_2"], WAIT)
        rpc.shutdown()
        store.set("bench/left/worker_2", "1")
        return out
    store.set(f"bench/bye/{a.name}", "1")
    store.wait(["bench/bye/worker_0", "bench/bye/worker_1"], WAIT)
    rpc.shutdown()
    return out


def worker_pidns(a: argparse.Namespace) -> dict[str, Any]:
    """Two dynamic members, the second one in its own PID namespace (like another pod)."""
    store = client(a.port)
    m = Member(a, store, True)
    out = Results(store, a.name)
    if a.name == "worker_0":
        m.join(1, [])
        m.apply("worker_1")
        store.set("bench/applied", "1")
        out["E_to_L"] = roundtrip("worker_1", True, timeout=60)
        if out["E_to_L"] == "ok":
            out["bw_maps"] = bandwidth("worker_1", torch.rand(a.size_mib << 18, device="cuda:0"), 5)
        log(a.name, f"pidns {out}")
        store.set("bench/E_done", "1")
    else:
        m.join(2, ["worker_0"])
        store.wait(["bench/applied"], WAIT)
        out["L_to_E"] = roundtrip("worker_0", True, timeout=60)
        store.wait(["bench/E_done"], WAIT)
    store.set(f"bench/bye/{a.name}", "1")
    store.wait(["bench/bye/worker_0", "bench/bye/worker_1"], WAIT)
    rpc.shutdown()
    return out


# --- the real sidecar path: rpcjob-sidecar + rpcjob.init_rpc() per "pod", a real etcd ---------
class FileResults(dict[str, Any]):
    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def __setitem__(self, k: str, v: Any) -> None:
        super().__setitem__(k, v)
        self.path.write_text(json.dumps(dict(self)))


def wait_file(path: Path, timeout: float = 120) -> None:
    """Wait for a flag file written by another worker (a condition with a deadline)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {path.name}")
        time.sleep(0.005)


def until_ok(dst: str, deadline_s: float = 20) -> dict[str, Any]:
    """Round trips until one succeeds (the sidecar's JOINED event may still be on its way)."""
    first, n, t0 = "", 0, time.monotonic()
    while True:
        n += 1
        r = roundtrip(dst, torch.cuda.is_available(), timeout=30)
        first = first or r
        if r == "ok" or time.monotonic() - t0 > deadline_s:
            return {"result": r, "attempts": n, "first": first, "s": time.monotonic() - t0}


def worker_sidecar(a: argparse.Namespace) -> dict[str, Any]:
    import rpcjob

    d = Path(os.environ["BENCH_DIR"])
    ident = rpcjob.init_rpc()
    name = ident.worker_name
    out = FileResults(d / f"result_{name}.json")
    out["devices"] = list(ident.devices)
    out["maps"] = {k: dict(v.map) for k, v in ident.device_maps.items()}
    out["rank"] = ident.rank
    (d / f"joined_{name}").write_text("1")
    n = a.size_mib << 18
    cuda = torch.cuda.is_available()
    dev = "cuda:0" if cuda else "cpu"
    if name == "worker_0":
        wait_file(d / "joined_worker_1")
        out["E_to_L_after_join"] = until_ok("worker_1")
        wait_file(d / "L_to_E_done")
        x = torch.rand(n, device=dev)
        out["bw_maps"] = bandwidth("worker_1", x, a.iters)
        log(name, f"sidecar path maps E->L {out['bw_maps']}")
        out["bw_cpu_staging"] = bandwidth("worker_1", x, 3, fn=_stage_in, prep=lambda t: t.cpu())
        (d / "phase1_done").write_text("1")
        wait_file(d / "joined_worker_2")
        out["E_to_T"] = until_ok("worker_2")
        (d / "E_T_done").write_text("1")
        wait_file(d / "left_worker_2")
        # straight after the graceful leave: does anything arrive before the LEFT event?
        out["E_to_L_right_after_leave"] = [
            roundtrip("worker_1", cuda, timeout=30) for _ in range(5)
        ]
        out["bw_maps_after_leave"] = bandwidth("worker_1", x, a.iters)
        log(name, f"sidecar path maps E->L after leave {out['bw_maps_after_leave']}")
        (d / "E_done").write_text("1")
        wait_file(d / "L_done")
    elif name == "worker_1":
        out["L_to_E_after_join"] = until_ok("worker_0")
        (d / "L_to_E_done").write_text("1")
        wait_file(d / "joined_worker_2")
        out["L_to_T"] = until_ok("worker_2")
        (d / "L_T_done").write_text("1")
        wait_file(d / "left_worker_2")
        out["L_to_E_right_after_leave"] = [
            roundtrip("worker_0", cuda, timeout=30) for _ in range(5)
        ]
        wait_file(d / "E_done")
        out["L_to_E_after_leave"] = until_ok("worker_0")
        (d / "L_done").write_text("1")
    else:
        out["T_to_E"] = until_ok("worker_0")
        out["T_to_L"] = until_ok("worker_1")
        wait_file(d / "E_T_done")
        wait_file(d / "L_T_done")
        rpcjob.shutdown()
        (d / "left_worker_2").write_text("1")
        return out
    rpcjob.shutdown()
    return out


def run_sidecar_scenario(a: argparse.Namespace, limit: float) -> dict[str, Any]:
    """Three pods (sidecar + worker) against a real etcd, each worker seeing one GPU."""
    import tempfile

    sys.path.insert(0, str(ROOT / "operator"))
    sys.path.insert(0, str(ROOT / "tests"))
    from podkit import Job  # type: ignore[import-not-found]

    from rpcjob_operator.localexec.etcd_server import EmbeddedEtcd

    res: dict[str, Any] = {}
    g = 0 if a.cpu else 1
    with EmbeddedEtcd() as etcd, tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        job = Job(
            etcd.endpoint, d / "pods", slots={"worker": 3}, lease_ttl=10,
            env={
                "RPCJOB_GPUS": str(g), "RPCJOB_ROLE_GPUS": json.dumps({"worker": g}),
                "RPCJOB_NODE_LABELS": json.dumps({"nvidia.com/gpu.count": str(a.node_gpus)}),
                "RPCJOB_RPC_TIMEOUT": "300",
            },
        )  # fmt: skip
        argv = [sys.executable, __file__, "--worker", "sidecar", "--size-mib", str(a.size_mib),
                "--iters", str(a.iters)]  # fmt: skip
        deadline = time.monotonic() + limit
        try:
            for i, gpu_index in enumerate((0, 1, 0)):
                pod = job.pod("worker", i, CUDA_VISIBLE_DEVICES="" if a.cpu else str(gpu_index))
                pod.start_worker(argv, env={"BENCH_DIR": str(d)})
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


# --- parent ---------------------------------------------------------------------------------
def run_scenario(
    kind: str,
    workers: list[tuple[str, dict[str, str], list[str]]],
    a: argparse.Namespace,
    limit: float,
) -> dict[str, Any]:
    """Start one process per worker, collect each one's JSON result from the store."""
    port = free_port()
    server = dist.TCPStore("127.0.0.1", port, is_master=True, timeout=WAIT, wait_for_workers=False)
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
    if not a.cpu and ngpu < 2:
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
    if a.isolated and not a.cpu:
        unshare = shutil.which("unshare")
        if unshare:
            iso = [unshare, "--mount", "--pid", "--fork", "--kill-child", "--mount-proc",
                   "sh", "-c", ISOLATE, "isolate"]  # fmt: skip
            wenv = {"BENCH_WAIT_S": "40"}
            ij = [("worker_0", wenv, [*iso, "0"]), ("worker_1", wenv, [*iso, "1"])]
            res["isolated"] = run_scenario("pidns", ij, a, 60)
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

    for scen in ("rpcjob", "sidecar"):
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
    print(
        json.dumps(
            {
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
