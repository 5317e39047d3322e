"""TensorPipe device maps for one slot: a pure function of labels, visible GPUs and the job shape.

Why the maps look the way they do (measured torch behaviour; docs/devices.md and
docs/architecture.md#device-maps):

* Torch freezes a worker's forward maps at ``init_rpc``, so maps are declared for **every slot
  name the job can ever have** (roles x maxReplicas), present or not.
* Torch validates every member's maps whenever a worker joins: a map that targets a device the
  joiner does not have (or any CUDA device on a CPU-only joiner) makes the *joiner's*
  ``init_rpc`` raise. A forward map to slot ``s`` therefore only targets devices that every
  incarnation of ``s`` is guaranteed to have: ``min(my GPUs, s's role request)``.
* Torch demands 1-to-1 maps (no two source devices on one target), so the modular
  rule ``cuda:i -> cuda:(i mod n_peer)`` is applied to ``i < min(n_me, n_peer)``, where it is the
  identity. A tensor on a higher device must be moved before it is sent to a smaller peer.
* Reverse maps (what a member needs to send CUDA *replies* to a peer) are the inverse of the
  peer's forward map to us; torch never gives them to earlier members, and a graceful leave
  wipes them, so the worker re-applies them after every join and leave.

Torch-free: device names are plain strings ("cuda:0").
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from rpcjob import contract
from rpcjob.devices.labels import LABEL_OVERRIDE, LABEL_REPLICAS, NodeGPUs

DEVICE_MAPS_AUTO = "auto"
DEVICE_MAPS_OFF = "off"

# Plan modes: what this slot does with CUDA tensors over RPC.
MODE_CUDA = "cuda"  # devices + maps
MODE_CPU = "cpu"  # the role requests no GPUs
MODE_MIG = "mig"  # MIG instances: no maps (CUDA IPC does not work between MIG instances)
MODE_OFF = "off"  # rpc.deviceMaps: off

# How a present peer is reached (informational: TensorPipe picks the channel itself).
LINK_SAME_NODE = "same-node"  # cuda_ipc (NVLink/PCIe P2P) when both processes share a PID ns
LINK_SAME_CLIQUE = "nvlink-domain"  # other node, same NVLink domain: TensorPipe still stages
LINK_NETWORK = "network"  # other node: cuda_basic (CPU staging) or cuda_gdr (InfiniBand)
LINK_NONE = "none"  # one side has no CUDA devices: CPU tensors only

_CUDA_RE = re.compile(r"^cuda:(0|[1-9][0-9]*)$")


class DeviceMapError(ValueError):
    """The slot cannot get the GPUs its role asks for; failing beats a silent CPU fallback."""


@dataclass(frozen=True)
class RoleShape:
    """One role of the job: how many slots it can ever have, and each slot's GPU request."""

    max_replicas: int
    gpus: int | None = 0  # nvidia.com/gpu per replica; None = unknown (no maps to it)


@dataclass(frozen=True)
class Peer:
    """What a member record says about a live peer (members/<worker> in etcd)."""

    name: str
    node: str = ""
    clique: str = ""
    devices: tuple[str, ...] = ()


@dataclass(frozen=True)
class DevicePlan:
    """My devices, forward maps to every slot name, reverse maps for the live peers.

    ``devices`` -> ``TensorPipeRpcBackendOptions(devices=...)`` and ``Identity.devices``;
    ``device_maps`` -> ``TensorPipeRpcBackendOptions(device_maps=...)`` / ``Identity.device_maps``;
    ``reverse_maps[peer]`` -> ``agent._update_group_membership(peer, devices,
    {peer: reverse_maps[peer]}, True)`` / ``Member.reverse_map``.
    """

    worker: str
    mode: str
    devices: tuple[str, ...]
    device_maps: Mapping[str, Mapping[str, str]]
    reverse_maps: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    links: Mapping[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    def reverse_map(self, peer: Peer) -> dict[str, str]:
        """Reverse map for a peer that joined after this plan was made (a JOINED event)."""
        return reverse_map(self.devices, peer.devices)


def slot_names(slots: Mapping[str, RoleShape]) -> list[str]:
    """Every RPC worker name the job can ever have: roles x maxReplicas."""
    return [
        contract.worker_name(role, i)
        for role, shape in sorted(slots.items())
        for i in range(shape.max_replicas)
    ]


def forward_map(n_me: int, n_peer: int) -> dict[str, str]:
    """cuda:i -> cuda:(i mod n_peer) for i < min(n_me, n_peer): 1-to-1, as torch requires."""
    return {f"cuda:{i}": f"cuda:{i % n_peer}" for i in range(min(n_me, n_peer))}


def reverse_map(my_devices: Sequence[str], peer_devices: Sequence[str]) -> dict[str, str]:
    """Inverse of the peer's forward map to me: {my device: peer device}."""
    fwd = forward_map(len(peer_devices), len(my_devices))
    return {mine: theirs for theirs, mine in fwd.items()}


def _link(node: NodeGPUs, peer: Peer, peer_devices: Sequence[str]) -> str:
    """How I (with CUDA devices) reach ``peer``."""
    if not peer_devices:
        return LINK_NONE
    if node.node and peer.node == node.node:
        return LINK_SAME_NODE
    if node.clique and peer.clique == node.clique:
        return LINK_SAME_CLIQUE
    return LINK_NETWORK


def visible_gpus(
    env: Mapping[str, str], torch_count: int | None = None
) -> int | tuple[str, ...] | None:
    """What the worker container can see, from values the caller passes in (never probed).

    ``torch_count`` (``torch.cuda.device_count()`` in the worker) is the truth when given.
    Otherwise CUDA_VISIBLE_DEVICES, then NVIDIA_VISIBLE_DEVICES (set by the device plugin);
    device ids are returned as a tuple so that MIG instances ("MIG-...") can be recognised.
    None: unknown ("all", or nothing set).
    """
    ids: tuple[str, ...] | None = None
    for key in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"):
        raw = env.get(key)
        if raw is None:
            continue
        value = raw.strip()
        if key == "NVIDIA_VISIBLE_DEVICES" and value.lower() == "all":
            break
        if value.lower() in ("", "none", "void", "nodevfiles"):
            ids = ()
            break
        parsed: list[str] = []
        for item in value.split(","):
            item = item.strip()
            # CUDA stops enumerating at the first invalid entry ("-1" hides everything after).
            if not item or item.startswith("-"):
                break
            parsed.append(item)
        ids = tuple(parsed)
        break
    if torch_count is not None:
        if ids is not None and len(ids) == torch_count:
            return ids
        return torch_count
    return ids


def _count(visible: int | Sequence[str] | None) -> int | None:
    if visible is None:
        return None
    if isinstance(visible, int):
        return visible
    return len(visible)


def _is_mig(visible: int | Sequence[str] | None) -> bool:
    return (
        not isinstance(visible, int)
        and visible is not None
        and any(str(v).startswith("MIG-") for v in visible)
    )


def _parse_peer_devices(peer: Peer, warnings: list[str]) -> tuple[str, ...]:
    bad = [d for d in peer.devices if not _CUDA_RE.match(d)]
    if bad:
        warnings.append(
            f"member record of {peer.name} lists devices {list(peer.devices)} that are not "
            "'cuda:<n>'; rpcjob declares no device map to it"
        )
        return ()
    return tuple(peer.devices)


def _my_gpus(
    *, worker: str, role: str, node: NodeGPUs, requested: int, visible: int | Sequence[str] | None
) -> tuple[int, list[str]]:
    """How many GPUs this slot uses, or DeviceMapError; plus warnings."""
    warnings: list[str] = []
    seen = _count(visible)
    where = f" on node {node.node}" if node.node else ""
    if requested == 0:
        if seen:
            warnings.append(
                f"role {role!r} requests no GPUs but the container of {worker} sees {seen}: "
                "it runs CPU-only for RPC (no device maps); request nvidia.com/gpu in the "
                "role's resources to use them"
            )
        return 0, warnings
    if node.override is not None and node.override < requested:
        raise DeviceMapError(
            f"role {role!r} requests {requested} GPUs per replica but node label "
            f"{LABEL_OVERRIDE}={node.override}{where} allows rpcjob only {node.override}: "
            f"lower the role's nvidia.com/gpu request or raise/remove the node label"
        )
    if seen is not None and seen < requested:
        hint = "check the pod's nvidia.com/gpu limit and the NVIDIA device plugin"
        if node.is_shared:
            hint = (
                f"the node's GPUs are shared ({LABEL_REPLICAS}={node.replicas}): replicas of "
                "one GPU show up as a single device, so request nvidia.com/gpu: 1 for this role"
            )
        raise DeviceMapError(
            f"role {role!r} requests {requested} GPUs per replica but the container of "
            f"{worker}{where} sees {seen}; rpcjob will not fall back to CPU silently: {hint}"
        )
    if node.count is not None and node.count < requested and node.override is None:
        warnings.append(
            f"node labels{where} say {node.count} GPUs but role {role!r} requests {requested}"
            + (f" and the container sees {seen}" if seen is not None else "")
            + "; rpcjob trusts the request; fix nvidia.com/gpu.count or set "
            f"{LABEL_OVERRIDE}"
        )
    if seen is not None and seen > requested:
        warnings.append(
            f"the container of {worker} sees {seen} GPUs but role {role!r} requests "
            f"{requested}: rpcjob uses cuda:0..cuda:{requested - 1}"
        )
    if node.is_shared:
        warnings.append(
            f"GPUs{where} are shared between pods ({node.sharing_strategy}, "
            f"{LABEL_REPLICAS}={node.replicas}): RPC bandwidth, compute and memory are shared "
            "with the other pods on the same GPU"
        )
    return requested, warnings


def _check_request(
    worker: str, role: str, requested: int, slots: Mapping[str, RoleShape], device_maps: str
) -> list[str]:
    """Raise DeviceMapError for a request the slot cannot honour; the warnings otherwise."""
    if device_maps not in (DEVICE_MAPS_AUTO, DEVICE_MAPS_OFF):
        raise DeviceMapError(f"rpc.deviceMaps={device_maps!r} is not valid: use 'auto' or 'off'")
    if requested < 0:
        raise DeviceMapError(f"role {role!r} requests {requested} GPUs: must be >= 0")
    warnings: list[str] = []
    if role not in slots:
        raise DeviceMapError(
            f"worker {worker!r} belongs to role {role!r}, which the job's slots "
            f"({contract.ENV_SLOTS}) do not list: {sorted(slots)}"
        )
    declared = slots[role].gpus
    if declared is not None and declared > requested:
        # Peers pre-declare maps to GPUs this slot would not have: torch rejects our join.
        raise DeviceMapError(
            f"{contract.ENV_GPUS}={requested} but {contract.ENV_ROLE_GPUS} says role "
            f"{role!r} requests {declared} GPUs: the pod's environment is inconsistent (peers "
            "would map to GPUs this worker does not have); re-render the pod from the job spec"
        )
    if declared is not None and declared < requested:
        warnings.append(
            f"{contract.ENV_GPUS}={requested} but {contract.ENV_ROLE_GPUS} says role "
            f"{role!r} requests {declared}: peers send CUDA tensors only to cuda:0..cuda:"
            f"{declared - 1} of {worker}"
        )
    return warnings


def _forward_maps(
    worker: str,
    n_me: int,
    names: Sequence[str],
    present: Mapping[str, tuple[str, ...]],
    slots: Mapping[str, RoleShape],
    warnings: list[str],
) -> dict[str, dict[str, str]]:
    """My forward map to every other slot: live peers by their devices, the rest by their
    role's request (unknown requests get no map, with a warning)."""
    maps: dict[str, dict[str, str]] = {}
    unknown_roles: set[str] = set()
    for name in names:
        if name in present:
            n_peer = len(present[name])  # the incarnation that is live now
        else:
            peer_role, _ = contract.parse_worker_name(name)
            g = slots[peer_role].gpus
            if g is None:
                unknown_roles.add(peer_role)
                g = 0
            n_peer = g
        maps[name] = forward_map(n_me, n_peer) if n_peer else {}
    if unknown_roles:
        warnings.append(
            f"the GPU request of role(s) {', '.join(sorted(unknown_roles))} is unknown "
            f"({contract.ENV_ROLE_GPUS} unset): rpcjob declares device maps only to their "
            "members that are live now; later joiners of those roles cannot receive CUDA "
            f"tensors from {worker}"
        )
    return maps


def plan_devices(
    *,
    worker: str,
    node: NodeGPUs,
    requested_gpus: int,
    slots: Mapping[str, RoleShape],
    visible: int | Sequence[str] | None = None,
    peers: Iterable[Peer] = (),
    device_maps: str = DEVICE_MAPS_AUTO,
) -> DevicePlan:
    """Devices and maps for ``worker`` (``<role>_<index>``); see the module docstring.

    ``visible``: GPUs the worker container sees (a count or device ids), None when unknown
    (then the role's request is trusted).
    ``peers``: live members' records (I may be listed; I am skipped).
    Raises DeviceMapError when the slot cannot get the GPUs its role requests; every other
    problem is a warning in the plan and the documented fallback.
    """
    role, _ = contract.parse_worker_name(worker)
    warnings = [*node.warnings, *_check_request(worker, role, requested_gpus, slots, device_maps)]
    names = [n for n in slot_names(slots) if n != worker]
    live = [p for p in peers if p.name != worker]

    n_me, mine_warnings = _my_gpus(
        worker=worker, role=role, node=node, requested=requested_gpus, visible=visible
    )
    warnings += mine_warnings
    mode = MODE_CUDA if n_me else MODE_CPU
    if n_me and (node.is_mig or _is_mig(visible)):
        mode = MODE_MIG
        warnings.append(
            f"{worker} runs on MIG devices (node {node.node or '?'}, mig.strategy="
            f"{node.mig_strategy}): CUDA IPC does not work between MIG instances, so rpcjob "
            "declares no device maps for it; move CUDA tensors to CPU before sending them "
            "over RPC"
        )
    if n_me and device_maps == DEVICE_MAPS_OFF:
        mode = MODE_OFF
    if mode != MODE_CUDA:
        return DevicePlan(
            worker=worker,
            mode=mode,
            devices=(),
            device_maps={n: {} for n in names},
            reverse_maps={p.name: {} for p in live},
            links={p.name: LINK_NONE for p in live},
            warnings=tuple(warnings),
        )

    devices = tuple(f"cuda:{i}" for i in range(n_me))
    present = {p.name: _parse_peer_devices(p, warnings) for p in live}
    maps = _forward_maps(worker, n_me, names, present, slots, warnings)
    reverse = {p.name: reverse_map(devices, present[p.name]) for p in live}
    links = {p.name: _link(node, p, present[p.name]) for p in live}
    for p in live:
        if links[p.name] == LINK_SAME_CLIQUE:
            warnings.append(
                f"{p.name} is on node {p.node}, in the same NVLink domain as {worker}, but "
                "TensorPipe has no multi-node NVLink channel: CUDA tensors between them are "
                "staged through host memory"
            )
    return DevicePlan(
        worker=worker,
        mode=MODE_CUDA,
        devices=devices,
        device_maps=maps,
        reverse_maps=reverse,
        links=links,
        warnings=tuple(warnings),
    )
