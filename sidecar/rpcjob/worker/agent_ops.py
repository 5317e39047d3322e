"""Membership edits on the live TensorPipe agent.

See docs/architecture.md#membership and docs/architecture.md#device-maps.

Torch exposes ``TensorPipeAgent._update_group_membership(worker_info, my_devices,
reverse_device_map, is_join)``; it is how torch itself applies joins and graceful leaves. We
call it for what torch does not do: drop a crashed member (``is_join=False``). Inside
``rpcjob.init_rpc()`` evictions and device re-application go through ``rpcjob.devices.agent``
(which also keeps the live peers' reverse maps); :func:`evict` here is the bare operation for
plain-torch users and tests, :func:`current_members` and :func:`metrics` read the agent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def _agent() -> Any:
    from torch.distributed.rpc import api

    return api._get_current_rpc_agent()  # type: ignore[attr-defined]


def _devices(devices: Sequence[str]) -> list[Any]:
    import torch

    return [torch.device(d) for d in devices]


def _reverse(reverse_map: Mapping[str, str]) -> dict[Any, Any]:
    import torch

    return {torch.device(k): torch.device(v) for k, v in reverse_map.items()}


def evict(
    name: str,
    rank: int,
    my_devices: Sequence[str] = (),
    keep_reverse_maps: Mapping[str, Mapping[str, str]] | None = None,
) -> None:
    """Drop a crashed incarnation ``(name, rank)`` from this worker's agent.

    Idempotent: evicting an unknown worker is a no-op (measured on torch 2.13). Torch's
    ``is_join=False`` update erases every device not in ``my_devices`` and every reverse map
    not in the map passed, so both carry what this worker keeps (the live peers' maps).
    """
    from torch.distributed.rpc import WorkerInfo  # type: ignore[attr-defined]

    keep = {peer: _reverse(m) for peer, m in (keep_reverse_maps or {}).items()}
    _agent()._update_group_membership(WorkerInfo(name, rank), _devices(my_devices), keep, False)


def reapply_devices(
    name: str, rank: int, my_devices: Sequence[str], reverse_map: Mapping[str, str]
) -> None:
    """After ``name`` joined (or any leave): restore my devices and the peer's reverse map."""
    from torch.distributed.rpc import WorkerInfo  # type: ignore[attr-defined]

    _agent()._update_group_membership(
        WorkerInfo(name, rank), _devices(my_devices), {name: _reverse(reverse_map)}, True
    )


def current_members() -> list[tuple[str, int]]:
    """This agent's view of the group: sorted ``(name, rank)``, this worker included."""
    return sorted((w.name, int(w.id)) for w in _agent().get_worker_infos())


def metrics() -> dict[str, float]:
    """The agent's numeric metrics (``agent.*``), plus debug-info numbers, as floats."""
    agent = _agent()
    out: dict[str, float] = {}
    for source in (agent.get_metrics(), agent.get_debug_info()):
        for key, value in source.items():
            try:
                out[str(key)] = float(value)
            except (TypeError, ValueError):
                continue  # non-numeric debug entries are not metrics
    return out
