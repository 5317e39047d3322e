"""Device-map planning: every fixture node, MIG, time slicing, cliques, override, CPU-only,
deviceMaps off, absent and present peers, and every DeviceMapError message."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import yaml

from rpcjob import contract
from rpcjob.devices import (
    DeviceMapError,
    DevicePlan,
    Peer,
    RoleShape,
    forward_map,
    parse_node_labels,
    plan_devices,
    reverse_map,
    slot_names,
)

NODES: dict[str, dict[str, str]] = yaml.safe_load(
    (Path(__file__).resolve().parent / "fixtures" / "node-labels.yaml").read_text()
)["nodes"]


def slots(
    worker_gpus: int | None = 1, driver_gpus: int | None = 0, replicas: int = 4
) -> dict[str, RoleShape]:
    return {"worker": RoleShape(replicas, worker_gpus), "driver": RoleShape(1, driver_gpus)}


def ident(n: int) -> dict[str, str]:
    return {f"cuda:{i}": f"cuda:{i}" for i in range(n)}


def plan_on(node: str = "", worker: str = "worker_0", gpus: int = 1, **kw: Any) -> DevicePlan:
    """plan_devices for ``worker`` requesting ``gpus`` on fixture node ``node`` (none: node "n"
    without labels); the job's slots are slots() and the container sees ``gpus`` GPUs unless
    ``kw`` says otherwise."""
    labels = parse_node_labels(NODES[node], node) if node else parse_node_labels({}, "n")
    kw.setdefault("slots", slots())
    kw.setdefault("visible", gpus)
    return plan_devices(worker=worker, node=labels, requested_gpus=gpus, **kw)


# node, requested, visible -> mode, devices, map to worker_1 (None: no assertion), warning parts
CASES: list[tuple[str, int, Any, str, int, dict[str, str] | None, list[str]]] = [
    ("dgx-h100", 1, 1, "cuda", 1, ident(1), []),
    ("dgx-h100", 8, 8, "cuda", 8, ident(8), []),
    ("hgx-h200-a", 1, 8, "cuda", 1, ident(1), ["sees 8 GPUs but role 'worker' requests 1"]),
    ("gb200-nvl-rack1-node3", 1, None, "cuda", 1, ident(1), []),
    ("gb200-nvl-rack1-node4", 1, ("GPU-1",), "cuda", 1, ident(1), []),
    ("a100-mig-single", 1, 1, "mig", 0, {}, ["CUDA IPC does not work between MIG instances"]),
    ("a100-mig-mixed", 1, ("GPU-5d1c",), "cuda", 1, ident(1), []),
    ("a100-mig-mixed", 1, ("MIG-8f2a",), "mig", 0, {}, ["runs on MIG devices"]),
    ("t4-time-sliced", 1, 1, "cuda", 1, ident(1), ["shared between pods (time-slicing"]),
    ("cpu-only", 0, 0, "cpu", 0, {}, []),
    ("cpu-only", 1, None, "cuda", 1, ident(1), []),  # labels silent, container unknown: trust
    ("override", 2, 8, "cuda", 2, ident(2), ["sees 8 GPUs but role 'worker' requests 2"]),
    ("bad-count-word", 1, 1, "cuda", 1, ident(1), ["gpu.count='eight'"]),
    ("bad-count-negative", 1, 1, "cuda", 1, ident(1), ["gpu.count='-1'"]),
    ("bad-override", 1, None, "cuda", 1, ident(1), ["rpcjob.dev/gpus='2.5'"]),
]


def test_every_fixture_node_is_planned() -> None:
    assert {c[0] for c in CASES} == set(NODES)


@pytest.mark.parametrize(("node", "req", "visible", "mode", "ndev", "to_w1", "warns"), CASES)
def test_fixture_node_plan(
    node: str,
    req: int,
    visible: Any,
    mode: str,
    ndev: int,
    to_w1: dict[str, str] | None,
    warns: list[str],
) -> None:
    plan = plan_on(node, gpus=req, slots=slots(worker_gpus=req), visible=visible)
    assert plan.mode == mode
    assert plan.devices == tuple(f"cuda:{i}" for i in range(ndev))
    # maps are pre-declared for every other slot name the job can ever have
    assert sorted(plan.device_maps) == ["driver_0", "worker_1", "worker_2", "worker_3"]
    assert plan.device_maps["driver_0"] == {}  # never to a CPU-only slot
    if to_w1 is not None:
        assert plan.device_maps["worker_1"] == to_w1
    for part in warns:
        assert any(part in w for w in plan.warnings), (part, plan.warnings)
    if not warns:
        assert plan.warnings == ()


@pytest.mark.parametrize(
    ("node", "req", "visible", "message"),
    [
        (
            "t4-time-sliced",
            2,
            1,
            "role 'worker' requests 2 GPUs per replica but the container of worker_0 on node "
            "t4-time-sliced sees 1; rpcjob will not fall back to CPU silently: the node's GPUs "
            "are shared (nvidia.com/gpu.replicas=4): replicas of one GPU show up as a single "
            "device, so request nvidia.com/gpu: 1 for this role",
        ),
        (
            "cpu-only",
            1,
            0,
            "role 'worker' requests 1 GPUs per replica but the container of worker_0 on node "
            "cpu-only sees 0; rpcjob will not fall back to CPU silently: check the pod's "
            "nvidia.com/gpu limit and the NVIDIA device plugin",
        ),
        (
            "override",
            4,
            8,
            "role 'worker' requests 4 GPUs per replica but node label rpcjob.dev/gpus=2 on node "
            "override allows rpcjob only 2: lower the role's nvidia.com/gpu request or "
            "raise/remove the node label",
        ),
        (
            "dgx-h100",
            2,
            ("GPU-a",),
            "role 'worker' requests 2 GPUs per replica but the container of worker_0 on node "
            "dgx-h100 sees 1; rpcjob will not fall back to CPU silently: check the pod's "
            "nvidia.com/gpu limit and the NVIDIA device plugin",
        ),
    ],
)
def test_gpu_mismatch_is_a_clear_error(node: str, req: int, visible: Any, message: str) -> None:
    with pytest.raises(DeviceMapError) as err:
        plan_on(node, gpus=req, slots=slots(worker_gpus=req), visible=visible)
    assert str(err.value) == message


def test_labels_say_fewer_gpus_than_the_container_sees_is_a_warning() -> None:
    node = parse_node_labels({"nvidia.com/gpu.count": "1"}, "stale")
    plan = plan_devices(worker="worker_0", node=node, requested_gpus=2, slots=slots(2), visible=2)
    assert plan.devices == ("cuda:0", "cuda:1")
    assert plan.warnings == (
        "node labels on node stale say 1 GPUs but role 'worker' requests 2 and the container "
        "sees 2; rpcjob trusts the request; fix nvidia.com/gpu.count or set rpcjob.dev/gpus",
    )


def test_cpu_role_on_a_gpu_node_runs_cpu_only_with_a_warning() -> None:
    plan = plan_on("dgx-h100", worker="driver_0", gpus=0, visible=8)
    assert (plan.mode, plan.devices) == ("cpu", ())
    assert all(m == {} for m in plan.device_maps.values())
    assert sorted(plan.device_maps) == ["worker_0", "worker_1", "worker_2", "worker_3"]
    assert plan.warnings == (
        "role 'driver' requests no GPUs but the container of driver_0 sees 8: it runs "
        "CPU-only for RPC (no device maps); request nvidia.com/gpu in the role's resources to "
        "use them",
    )


def test_device_maps_off() -> None:
    plan = plan_on(
        "dgx-h100", device_maps="off", peers=[Peer("worker_1", "dgx-h100", "", ("cuda:0",))]
    )
    assert (plan.mode, plan.devices) == ("off", ())
    assert all(m == {} for m in plan.device_maps.values())
    assert plan.reverse_maps == {"worker_1": {}}


def test_maps_between_unequal_roles_are_one_to_one() -> None:
    # 4-GPU trainers, 2-GPU servers, 1 CPU driver; maps target only GPUs the peer role has.
    job = {"trainer": RoleShape(2, 4), "server": RoleShape(3, 2), "driver": RoleShape(1, 0)}
    t = plan_on("dgx-h100", "trainer_0", 4, slots=job)
    assert t.device_maps["trainer_1"] == ident(4)
    assert t.device_maps["server_2"] == ident(2)
    assert t.device_maps["driver_0"] == {}
    s = plan_on("dgx-h100", "server_0", 2, slots=job)
    assert s.device_maps["trainer_0"] == ident(2)


@pytest.mark.parametrize(("n_me", "n_peer"), list(itertools.product(range(0, 9), range(0, 9))))
def test_forward_map_is_what_torch_accepts(n_me: int, n_peer: int) -> None:
    fwd = forward_map(n_me, n_peer)
    assert len(set(fwd.values())) == len(fwd)  # torch: 1-to-1 only
    assert all(int(k[5:]) < n_me for k in fwd)  # only my devices
    assert all(int(v[5:]) < n_peer for v in fwd.values())  # only devices the peer has
    assert len(fwd) == min(n_me, n_peer)
    # my reverse map for the peer is the inverse of the peer's forward map to me
    mine = [f"cuda:{i}" for i in range(n_me)]
    theirs = [f"cuda:{i}" for i in range(n_peer)]
    back = forward_map(n_peer, n_me)
    assert reverse_map(mine, theirs) == {v: k for k, v in back.items()}


def test_present_peers_get_maps_from_their_records_and_reverse_maps() -> None:
    node = parse_node_labels(NODES["gb200-nvl-rack1-node3"], "gb200-nvl-rack1-node3")
    peers = [
        Peer("worker_0", "gb200-nvl-rack1-node3", "", ("cuda:0", "cuda:1")),  # me: skipped
        Peer("worker_1", "gb200-nvl-rack1-node3", "", ("cuda:0", "cuda:1")),
        Peer("worker_2", "gb200-nvl-rack1-node4", node.clique, ("cuda:0", "cuda:1")),
        Peer("worker_3", "other", "", ()),  # a MIG or CPU incarnation: no map to it
        Peer("driver_0", "other", "", ()),
    ]
    plan = plan_devices(
        worker="worker_0", node=node, requested_gpus=2, slots=slots(2), visible=2, peers=peers
    )
    assert plan.device_maps == {
        "driver_0": {},
        "worker_1": ident(2),
        "worker_2": ident(2),
        "worker_3": {},
    }
    assert plan.reverse_maps == {
        "worker_1": ident(2),
        "worker_2": ident(2),
        "worker_3": {},
        "driver_0": {},
    }
    assert plan.links == {
        "worker_1": "same-node",
        "worker_2": "nvlink-domain",
        "worker_3": "none",
        "driver_0": "none",
    }
    assert plan.warnings == (
        "worker_2 is on node gb200-nvl-rack1-node4, in the same NVLink domain as worker_0, but "
        "TensorPipe has no multi-node NVLink channel: CUDA tensors between them are staged "
        "through host memory",
    )
    # a later joiner (JOINED event): its reverse map from its record
    assert plan.reverse_map(Peer("worker_9", "x", "", ("cuda:0",))) == ident(1)


def test_cross_node_peer_still_gets_maps() -> None:
    plan = plan_on("dgx-h100", peers=[Peer("worker_1", "hgx-h200-a", "", ("cuda:0",))])
    assert plan.device_maps["worker_1"] == ident(1)
    assert plan.links == {"worker_1": "network"}
    assert plan.warnings == ()


def test_peer_record_with_bad_devices_gets_no_map() -> None:
    plan = plan_on(peers=[Peer("worker_1", "n", "", ("gpu0",))])
    assert plan.device_maps["worker_1"] == {}
    assert plan.warnings == (
        "member record of worker_1 lists devices ['gpu0'] that are not 'cuda:<n>'; rpcjob "
        "declares no device map to it",
    )


def test_unknown_role_gpus_maps_only_live_members() -> None:
    plan = plan_on(
        slots=slots(worker_gpus=None, driver_gpus=None),
        peers=[Peer("worker_2", "n", "", ("cuda:0",))],
    )
    assert plan.device_maps == {
        "driver_0": {},
        "worker_1": {},
        "worker_2": ident(1),
        "worker_3": {},
    }
    assert plan.warnings == (
        "the GPU request of role(s) driver, worker is unknown (RPCJOB_ROLE_GPUS unset): rpcjob "
        "declares device maps only to their members that are live now; later joiners of those "
        "roles cannot receive CUDA tensors from worker_0",
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            dict(worker="trainer_0"),
            "worker 'trainer_0' belongs to role 'trainer', which the job's slots (RPCJOB_SLOTS) "
            "do not list: ['driver', 'worker']",
        ),
        (dict(device_maps="on"), "rpc.deviceMaps='on' is not valid: use 'auto' or 'off'"),
        (dict(gpus=-1, visible=1), "role 'worker' requests -1 GPUs: must be >= 0"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(DeviceMapError) as err:
        plan_on(**kwargs)
    assert str(err.value) == message


def test_bad_worker_name() -> None:
    with pytest.raises(contract.InvalidName):
        plan_devices(worker="worker-0", node=parse_node_labels({}), requested_gpus=0, slots=slots())


def test_slot_names_cover_roles_times_max_replicas() -> None:
    assert slot_names(slots(replicas=3)) == ["driver_0", "worker_0", "worker_1", "worker_2"]
    assert slot_names({"worker": RoleShape(0, 1)}) == []


def test_devices_package_is_torch_free() -> None:
    import subprocess
    import sys

    code = "import sys, rpcjob.devices; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_inconsistent_role_gpus_env() -> None:
    with pytest.raises(DeviceMapError) as err:
        plan_on(slots=slots(2), visible=2)
    assert str(err.value) == (
        "RPCJOB_GPUS=1 but RPCJOB_ROLE_GPUS says role 'worker' requests 2 GPUs: the pod's "
        "environment is inconsistent (peers would map to GPUs this worker does not have); "
        "re-render the pod from the job spec"
    )
    plan = plan_on(gpus=2, slots=slots(1))
    assert plan.devices == ("cuda:0", "cuda:1")
    assert plan.warnings == (
        "RPCJOB_GPUS=2 but RPCJOB_ROLE_GPUS says role 'worker' requests 1: peers send CUDA "
        "tensors only to cuda:0..cuda:0 of worker_0",
    )
