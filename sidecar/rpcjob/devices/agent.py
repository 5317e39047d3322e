"""Keep torch's TensorPipe device state right across dynamic joins and leaves (worker side).

Only the worker process calls this module; torch is imported lazily so that
``import rpcjob.devices`` stays torch-free for the sidecar.

What torch 2.11/2.13 does in dynamic mode (``init_rpc(world_size=None)``), measured on 2x H100
(docs/devices.md, docs/benchmarks.md):

* A joiner calls ``_update_group_membership(joiner, devices, R, True)`` on every member with
  *its own* reverse maps ``R`` (keyed by the other members), so an earlier member never gets
  the reverse map it needs to send CUDA replies to the joiner: those replies fail.
* A leaver calls ``_update_group_membership(leaver, [], {}, False)`` on every member, which
  wipes each survivor's device list and reverse maps. Until they are re-applied, a CUDA tensor
  arriving at a survivor **aborts the process** ("No stream found for device cuda:0",
  tensorpipe_utils.cpp:118) — re-applying after a LEFT event from the sidecar leaves a window
  in which any peer's CUDA RPC kills the worker.

`install_membership_guards` closes both holes inside torch's own calls: the joiner sends each
member exactly the reverse map that member needs (the inverse of the joiner's forward map to
it), and a member receiving a leave keeps its own devices and the reverse maps of the peers
that remain. `reapply` (JOINED events) and `evict` (crashed peers) use the same bookkeeping;
without the guards installed (plain torch, the store-level tests) that bookkeeping is empty and
`evict` is torch's bare leave update. `current_members` and `metrics` read the agent.

This is the one module that calls torch's agent.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Mapping, Sequence
from typing import Any

# This process's view: my devices and the reverse map per live peer (device names as str).
_devices: list[str] = []
_reverse: dict[str, dict[str, str]] = {}
_installed = False
# One agent update at a time: torch's (a peer's join or leave, on an RPC thread) and ours (the
# sidecar's events, on the events thread), so that reapply's "is the peer still here?" holds
# until its update is made.
_lock = threading.Lock()


def _mod(name: str) -> Any:
    """torch modules, imported on first use and typed Any (torch's private API has no stubs)."""
    return importlib.import_module(name)


def _torch_devices(names: Sequence[str]) -> list[Any]:
    torch = _mod("torch")
    return [torch.device(n) for n in names]


def _torch_map(m: Mapping[str, str]) -> dict[Any, Any]:
    torch = _mod("torch")
    return {torch.device(k): torch.device(v) for k, v in m.items()}


def _str_map(m: Mapping[Any, Any]) -> dict[str, str]:
    return {str(k): str(v) for k, v in m.items()}


def _all_reverse() -> dict[str, dict[Any, Any]]:
    return {peer: _torch_map(m) for peer, m in _reverse.items()}


def _guarded_update(
    worker_info: Any, my_devices: Any, reverse_device_map: Any, is_join: bool
) -> Any:
    """Replacement for torch.distributed.rpc._utils._update_group_membership (runs on a member
    when a peer joins or leaves through torch's own protocol)."""
    agent = _mod("torch.distributed.rpc.api")._get_current_rpc_agent()
    name = worker_info.name
    with _lock:
        if is_join:
            if name in reverse_device_map:  # a guarded joiner: exactly my reverse map for it
                _reverse[name] = _str_map(reverse_device_map[name])
                rev = {name: reverse_device_map[name]}
            else:  # an unguarded joiner: torch's behaviour
                rev = reverse_device_map
            devices = _torch_devices(_devices) if _devices else my_devices
            return agent._update_group_membership(worker_info, devices, rev, True)
        _reverse.pop(name, None)
        # Keep my devices and the remaining peers' reverse maps: torch would wipe them.
        return agent._update_group_membership(
            worker_info, _torch_devices(_devices), _all_reverse(), False
        )


def _guarded_set_devices_and_reverse_device_map(agent: Any) -> None:
    """Replacement for torch's joiner-side step (backend_registry.py): same validation, but each
    member receives the inverse of my forward map to it instead of my own reverse maps."""
    torch = _mod("torch")
    backend_registry = _mod("torch.distributed.rpc.backend_registry")
    me = agent.get_worker_info()
    infos = agent.get_worker_infos()
    counts: dict[str, Any] = {}
    maps: dict[str, Any] = {}
    devs: dict[str, Any] = {}
    names: list[str] = []
    peers = [info.name for info in infos if info.name != me.name]
    # torch asks the members one after another ("TODO: make async?"): ask all at once
    infos_of = call_all([(p, backend_registry._get_device_infos, ()) for p in peers])
    answers = dict(zip(peers, infos_of, strict=True))
    opts = agent._get_backend_options()
    answers[me.name] = (torch.cuda.device_count(), opts.device_maps, opts.devices)
    for info in infos:
        counts[info.name], maps[info.name], devs[info.name] = answers[info.name]
        names.append(info.name)
    backend_registry._validate_device_maps(names, counts, maps, devs, is_static_group=False)
    my_reverse = backend_registry._create_reverse_mapping(me.name, names, maps)
    for peer, m in my_reverse.items():
        if peer != me.name:
            _reverse[peer] = _str_map(m)
    my_maps = maps[me.name]
    updates: list[tuple[str, Any, tuple[Any, ...]]] = []
    for info in infos:
        dlist = backend_registry._create_device_list(devs[info.name], maps[info.name], my_reverse)
        if info.name == me.name:
            rev: dict[str, Any] = my_reverse
        else:
            fwd = my_maps.get(info.name, {})
            rev = {me.name: {v: k for k, v in fwd.items()}} if fwd else {}
        updates.append((info.name, _guarded_update, (me, dlist, rev, True)))
    call_all(updates)  # every member (and I) learns of me at once, not one after another


def call_all(calls: Sequence[tuple[str, Any, tuple[Any, ...]]]) -> list[Any]:
    """``rpc_async`` every ``(worker, fn, args)`` at once, then wait for all of them.

    Same failure semantics as torch's sequential ``rpc_sync`` loop: any failure raises (the
    first one, in call order), but only once no call is still in flight, so that the join's
    error path (torch's ``api.shutdown()``) never races our own outstanding requests.
    """
    api = _mod("torch.distributed.rpc.api")
    futures: list[Any] = []
    error: BaseException | None = None
    for worker, fn, args in calls:
        try:
            futures.append(api.rpc_async(worker, fn, args=args))
        except Exception as err:  # e.g. an unknown worker: stop sending, wait for the rest
            error = err
            break
    results: list[Any] = []
    for fut in futures:
        try:
            results.append(fut.wait())
        except Exception as err:
            error = error if error is not None else err
            results.append(None)
    if error is not None:
        raise error
    return results


def install_membership_guards(devices: Sequence[str]) -> None:
    """Call once per process before ``torch.distributed.rpc.init_rpc(world_size=None)``.

    ``devices``: this worker's planned devices (``DevicePlan.devices``; empty on CPU slots).
    Every member of the job must install the guards (the joiner's side and the member's side
    of torch's protocol both change).
    """
    global _installed
    _devices[:] = list(devices)
    _reverse.clear()
    if _installed:
        return
    _utils = _mod("torch.distributed.rpc._utils")
    api = _mod("torch.distributed.rpc.api")
    backend_registry = _mod("torch.distributed.rpc.backend_registry")
    # torch pickles the function by reference (module + qualname): make the replacement
    # resolvable under the original name so that the receiving member runs its own copy.
    _guarded_update.__module__ = _utils.__name__
    _guarded_update.__qualname__ = _guarded_update.__name__ = "_update_group_membership"
    _utils._update_group_membership = _guarded_update
    api._update_group_membership = _guarded_update
    backend_registry._update_group_membership = _guarded_update
    backend_registry._set_devices_and_reverse_device_map = (
        _guarded_set_devices_and_reverse_device_map
    )
    _installed = True


def reverse_maps() -> dict[str, dict[str, str]]:
    """The reverse maps this process currently holds, per peer (for logs and tests)."""
    return {k: dict(v) for k, v in _reverse.items()}


def reapply(peer: str, rank: int, reverse_map: Mapping[str, str]) -> bool:
    """JOINED(peer) from the sidecar: (re-)apply my devices and the peer's reverse map, if the
    agent still lists the peer under that rank; whether it did.

    Idempotent; needed for peers that joined without the guards (and harmless otherwise). The
    event can arrive after the peer's own leave already removed it (a peer that joins and
    leaves at once): torch's join update would bring it back, a member nobody can reach, which
    ``rpcjob.members()`` lists and this worker's own graceful leave then fails to tell.
    """
    rpc = _mod("torch.distributed.rpc")
    agent = rpc.api._get_current_rpc_agent()
    with _lock:
        if (peer, rank) not in current_members():
            return False
        _reverse[peer] = dict(reverse_map)
        agent._update_group_membership(
            rpc.WorkerInfo(peer, rank),
            _torch_devices(_devices),
            {peer: _torch_map(reverse_map)},
            True,
        )
    return True


def evict(peer: str, rank: int) -> bool:
    """EVICT(peer): drop a crashed peer from the agent, keeping my devices and other maps;
    whether it was dropped.

    Not when the agent lists the name under another rank: that is a later incarnation, which
    torch's leave update (it erases by name) would cut off. An agent that does not list the
    peer at all gets the update anyway (it erases nothing; torch's own bookkeeping by rank).
    """
    rpc = _mod("torch.distributed.rpc")
    agent = rpc.api._get_current_rpc_agent()
    with _lock:
        if any(name == peer and r != rank for name, r in current_members()):
            return False
        _reverse.pop(peer, None)
        agent._update_group_membership(
            rpc.WorkerInfo(peer, rank), _torch_devices(_devices), _all_reverse(), False
        )
    return True


def current_members() -> list[tuple[str, int]]:
    """This agent's view of the group: sorted ``(name, rank)``, this worker included."""
    agent = _mod("torch.distributed.rpc.api")._get_current_rpc_agent()
    return sorted((w.name, int(w.id)) for w in agent.get_worker_infos())


def metrics() -> dict[str, float]:
    """The agent's numeric metrics (``agent.*``), plus debug-info numbers, as floats."""
    agent = _mod("torch.distributed.rpc.api")._get_current_rpc_agent()
    out: dict[str, float] = {}
    for source in (agent.get_metrics(), agent.get_debug_info()):
        for key, value in source.items():
            try:
                out[str(key)] = float(value)
            except (TypeError, ValueError):
                continue  # non-numeric debug entries are not metrics
    return out
