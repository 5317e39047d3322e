"""Worker-process side of bench/gpu_bench.py: each scenario's worker body (hand-set static
maps, store-driven rpcjob path, namespaced pairs, real sidecar path).

Run only through bench/gpu_bench.py (``--worker <scenario>``); the measurements themselves are
in gpu_bench_measure.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.rpc as rpc
from gpu_bench_measure import (
    STORE_HOST,
    WAIT,
    FileResults,
    Results,
    bandwidth,
    client,
    log,
    roundtrip,
    staging_bandwidth,
    until_ok,
    wait_file,
)

from rpcjob.devices import Peer, RoleShape, parse_node_labels, plan_devices, visible_gpus
from rpcjob.devices import agent as devagent


# --- worker: hand-written static maps -------------------------------------------------------
def worker_handset(a: argparse.Namespace) -> dict[str, Any]:
    me, peer = f"w{a.rank}", f"w{1 - a.rank}"
    mine = 0 if a.visible == "own" else a.rank
    theirs = 0 if a.visible == "own" else 1 - a.rank
    torch.cuda.set_device(mine)
    torch.cuda.init()
    opts = rpc.TensorPipeRpcBackendOptions(
        init_method=f"tcp://{STORE_HOST}:{a.port}",
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
def channel_overrides() -> dict[str, list[str]]:
    """BENCH_TRANSPORTS / BENCH_CHANNELS: restrict TensorPipe as between two machines (TCP,
    no CUDA IPC: CUDA tensors go through cuda_basic, i.e. staged through host memory)."""
    out = {}
    for key, opt in (("BENCH_TRANSPORTS", "_transports"), ("BENCH_CHANNELS", "_channels")):
        if os.environ.get(key):
            out[opt] = os.environ[key].split(",")
    return out


def slots(cuda: bool) -> dict[str, RoleShape]:
    return {"worker": RoleShape(max_replicas=3, gpus=1 if cuda else 0)}


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
            slots=slots(self.cuda),
            visible=self.visible,
            peers=[p for p, _ in self.peers.values()],
        )

    def join(self, rank: int, after: list[str]) -> None:
        for peer in after:
            self.peers[peer] = read_peer(self.store, peer)
        self.p = self.plan()
        # no CUDA state: abort on the first CUDA tensor (docs/devices.md)
        if self.cuda:
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
            **channel_overrides(),
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

    def apply_and_announce(self, peer: str) -> None:
        """apply(peer), then tell the other workers (store key bench/applied/<me>/<peer>)."""
        self.apply(peer)
        self.store.set(f"bench/applied/{self.name}/{peer}", "1")

    def left(self, peer: str) -> None:
        """LEFT(peer): re-apply for every live peer (a no-op change with the guards installed)."""
        self.peers.pop(peer, None)
        for other in list(self.peers):
            self.apply(other)

    def goodbye(self) -> None:
        """Leave once both long-lived workers are done (the one that stops first waits)."""
        self.store.set(f"bench/bye/{self.name}", "1")
        self.store.wait(["bench/bye/worker_0", "bench/bye/worker_1"], WAIT)
        rpc.shutdown()


def _early_joiner(m: Member, out: Results) -> None:
    """worker_0: first in; checks and times E -> L around worker_2's join and leave."""
    store, cuda = m.store, m.cuda
    m.join(1, [])
    # The late joiner checks L->E before we apply anything: torch's own join must suffice.
    store.wait(["bench/L_checked_before_apply"], WAIT)
    out["E_to_L_before_apply"] = roundtrip("worker_1", cuda)
    m.apply_and_announce("worker_1")
    out["E_to_L_after_join"] = roundtrip("worker_1", cuda)
    store.wait(["bench/L_to_E_checked"], WAIT)
    x = torch.rand(m.a.size_mib << 18, device="cuda:0" if cuda else "cpu")
    out["bw_maps"] = bandwidth("worker_1", x, m.a.iters)
    log(m.name, f"maps E->L {out['bw_maps']}")
    out["bw_cpu_staging"] = staging_bandwidth("worker_1", x)
    log(m.name, f"staging E->L {out['bw_cpu_staging']}")
    store.set("bench/phase1_done", "1")
    store.wait(["bench/T_checked"], WAIT)
    out["E_to_T_before_apply"] = roundtrip("worker_2", cuda)
    m.apply("worker_2")
    out["E_to_T"] = roundtrip("worker_2", cuda)
    store.set("bench/E_to_T_checked", "1")
    store.wait(["bench/left/worker_2"], WAIT)
    # Right after the graceful leave, before any re-application (the leave race of
    # docs/devices.md).
    out["E_to_L_right_after_leave"] = roundtrip("worker_1", cuda)
    out["reverse_maps_after_leave"] = json.dumps(devagent.reverse_maps())
    m.left("worker_2")
    out["E_to_L_after_leave"] = roundtrip("worker_1", cuda)
    store.set("bench/reapplied/worker_0", "1")
    store.wait(["bench/reapplied/worker_1"], WAIT)
    out["bw_maps_after_leave"] = bandwidth("worker_1", x, m.a.iters)
    log(m.name, f"maps E->L after leave {out['bw_maps_after_leave']}")
    store.set("bench/E_done", "1")


def _late_joiner(m: Member, out: Results) -> None:
    """worker_1: joins second; checks L -> E before and after the early joiner applies."""
    store, cuda = m.store, m.cuda
    m.join(2, ["worker_0"])
    out["L_to_E_before_apply"] = roundtrip("worker_0", cuda, timeout=30)
    store.set("bench/L_checked_before_apply", "1")
    store.wait(["bench/applied/worker_0/worker_1"], WAIT)
    out["L_to_E_after_join"] = roundtrip("worker_0", cuda)
    store.set("bench/L_to_E_checked", "1")
    store.wait(["bench/T_checked"], WAIT)
    m.apply_and_announce("worker_2")
    store.wait(["bench/left/worker_2"], WAIT)
    out["L_to_E_right_after_leave"] = roundtrip("worker_0", cuda)
    m.left("worker_2")
    store.set("bench/reapplied/worker_1", "1")
    out["L_to_E_after_leave"] = roundtrip("worker_0", cuda)
    store.wait(["bench/E_done"], WAIT)
    if cuda:
        y = torch.rand(m.a.size_mib << 18, device="cuda:0")
        out["bw_maps_L_to_E"] = bandwidth("worker_0", y, m.a.iters)
        log(m.name, f"maps L->E {out['bw_maps_L_to_E']}")


def _tourist(m: Member, out: Results) -> None:
    """worker_2: joins third, checks both others, then leaves gracefully."""
    store, cuda = m.store, m.cuda
    store.wait(["bench/phase1_done"], WAIT)
    m.join(3, ["worker_0", "worker_1"])
    out["T_to_E"] = roundtrip("worker_0", cuda)
    out["T_to_L"] = roundtrip("worker_1", cuda)
    store.set("bench/T_checked", "1")
    store.wait(["bench/E_to_T_checked", "bench/applied/worker_1/worker_2"], WAIT)
    rpc.shutdown()
    store.set("bench/left/worker_2", "1")


def worker_rpcjob(a: argparse.Namespace) -> dict[str, Any]:
    store = client(a.port)
    m = Member(a, store, not a.cpu)
    out = Results(store, a.name)
    if a.name == "worker_0":
        _early_joiner(m, out)
    elif a.name == "worker_1":
        _late_joiner(m, out)
    else:
        _tourist(m, out)
        return out
    m.goodbye()
    return out


def worker_pidns(a: argparse.Namespace) -> dict[str, Any]:
    """Two dynamic members; the parent puts them in namespaces or restricts TensorPipe."""
    store = client(a.port)
    m = Member(a, store, True)
    out = Results(store, a.name)
    if a.name == "worker_0":
        m.join(1, [])
        m.apply("worker_1")
        store.set("bench/applied", "1")
        out["E_to_L"] = roundtrip("worker_1", True, timeout=60)
        if out["E_to_L"] == "ok":
            x = torch.rand(a.size_mib << 18, device="cuda:0")
            out["bw_maps"] = bandwidth("worker_1", x, 5)
            if channel_overrides():  # the cross-machine comparison: staging by hand
                out["bw_cpu_staging"] = staging_bandwidth("worker_1", x)
        log(a.name, f"pidns {out}")
        store.set("bench/E_done", "1")
    else:
        m.join(2, ["worker_0"])
        store.wait(["bench/applied"], WAIT)
        out["L_to_E"] = roundtrip("worker_0", True, timeout=60)
        store.wait(["bench/E_done"], WAIT)
    m.goodbye()
    return out


# --- the real sidecar path: rpcjob-sidecar + rpcjob.init_rpc() per "pod", a real etcd ---------
def _around_tourist(d: Path, out: FileResults, me: str, other: str, peer: str) -> None:
    """Reach the tourist (worker_2) once it joined; once it left gracefully, time round trips
    to ``peer`` straight away: does anything arrive before the LEFT event?"""
    wait_file(d / "joined_worker_2")
    out[f"{me}_to_T"] = until_ok("worker_2")
    (d / f"{me}_T_done").write_text("1")
    wait_file(d / "left_worker_2")
    cuda = torch.cuda.is_available()
    out[f"{me}_to_{other}_right_after_leave"] = [
        roundtrip(peer, cuda, timeout=30) for _ in range(5)
    ]


def _sidecar_early(a: argparse.Namespace, d: Path, out: FileResults, name: str) -> None:
    wait_file(d / "joined_worker_1")
    out["E_to_L_after_join"] = until_ok("worker_1")
    wait_file(d / "L_to_E_done")
    x = torch.rand(a.size_mib << 18, device="cuda:0" if torch.cuda.is_available() else "cpu")
    out["bw_maps"] = bandwidth("worker_1", x, a.iters)
    log(name, f"sidecar path maps E->L {out['bw_maps']}")
    out["bw_cpu_staging"] = staging_bandwidth("worker_1", x)
    (d / "phase1_done").write_text("1")
    _around_tourist(d, out, "E", "L", "worker_1")
    out["bw_maps_after_leave"] = bandwidth("worker_1", x, a.iters)
    log(name, f"sidecar path maps E->L after leave {out['bw_maps_after_leave']}")
    (d / "E_done").write_text("1")
    wait_file(d / "L_done")


def _sidecar_late(d: Path, out: FileResults) -> None:
    out["L_to_E_after_join"] = until_ok("worker_0")
    (d / "L_to_E_done").write_text("1")
    _around_tourist(d, out, "L", "E", "worker_0")
    wait_file(d / "E_done")
    out["L_to_E_after_leave"] = until_ok("worker_0")
    (d / "L_done").write_text("1")


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
    if name == "worker_0":
        _sidecar_early(a, d, out, name)
    elif name == "worker_1":
        _sidecar_late(d, out)
    else:  # worker_2: reaches both, then leaves gracefully
        out["T_to_E"] = until_ok("worker_0")
        out["T_to_L"] = until_ok("worker_1")
        wait_file(d / "E_T_done")
        wait_file(d / "L_T_done")
        rpcjob.shutdown()
        (d / "left_worker_2").write_text("1")
        return out
    rpcjob.shutdown()
    return out
