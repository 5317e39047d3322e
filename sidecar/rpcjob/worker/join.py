"""One attempt at joining torch's dynamic RPC group with a store object we built.

Torch's dynamic mode creates its store from ``rpc_backend_options.init_method`` (via
``dist._create_store_from_options``); there is no argument to pass a store object. We register
a private rendezvous scheme whose handler hands torch the store staged for this attempt (the
public ``etcd3://`` scheme builds its own EtcdStore; here the worker needs the store wrapped
by :class:`~rpcjob.worker.guard_store.GuardStore`). A Python reference to the store is kept
for the process lifetime: torch only holds the C++ side.

Retrying in the same process needs two resets torch does not do: its store prefix counter
(``rpc_prefix_<n>`` grows per ``init_rpc``, which would put a retry in a different group) and
the dist-autograd container, which refuses a second worker id (we keep the first one: the
sidecar keeps a process's first rank reserved while the process lives, docs/contract.md).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

SCHEME = "rpcjob-worker"
_staged: dict[str, Any] = {}
_keep_alive: list[Any] = []  # every store handed to torch, for the process lifetime
_lock = threading.Lock()
_autograd_rank: int | None = None


@dataclass(frozen=True)
class JoinSpec:
    name: str
    rank: int
    rpc_timeout: float
    num_worker_threads: int
    devices: Sequence[str] = ()
    # worker name -> {"cuda:0": "cuda:1"}; maps to my own name are dropped
    device_maps: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    transport: str = "tcp"  # spec.rpc.transport: tcp | shm
    overrides: Mapping[str, Any] = field(default_factory=dict)  # win over everything above


# TensorPipe's channels per transport setting. "tcp" leaves out the shm transport (its reactor
# thread busy-polls a core per idle worker and cannot connect two pods: its domain descriptor
# holds the network namespace) and ibv; cma (one host, same PID namespace: `rpcjob run`) and the
# CUDA channels sleep when idle. "shm" keeps TensorPipe's defaults (no _transports/_channels).
_CPU_CHANNELS = ["cma", "basic"]
_CUDA_CHANNELS = ["cuda_ipc", "cuda_basic"]


def transport_options(transport: str, devices: Sequence[str]) -> dict[str, Any]:
    """``TensorPipeRpcBackendOptions`` keyword arguments for ``spec.rpc.transport``."""
    from rpcjob import contract

    if transport not in contract.RPC_TRANSPORTS:
        raise ValueError(
            f"{contract.ENV_RPC_TRANSPORT}={transport!r}: use tcp or shm "
            "(set spec.rpc.transport in the RpcJob)"
        )
    if transport == "shm":
        return {}
    channels = (_CUDA_CHANNELS if devices else []) + _CPU_CHANNELS
    return {"_transports": ["uv"], "_channels": channels}


def build_options(spec: JoinSpec) -> Any:
    """TensorPipe options with maps pre-declared for every slot the job can have, and the
    transports of ``spec.rpc.transport`` (docs/benchmarks.md#idle-workers).

    Why every slot: docs/architecture.md#device-maps.
    """
    from torch.distributed.rpc import TensorPipeRpcBackendOptions

    kwargs: dict[str, Any] = {
        "num_worker_threads": spec.num_worker_threads,
        "rpc_timeout": spec.rpc_timeout,
        "init_method": f"{SCHEME}://{spec.name}",
        **transport_options(spec.transport, spec.devices),
    }
    if spec.devices:
        kwargs["devices"] = list(spec.devices)
        kwargs["device_maps"] = {
            peer: dict(m) for peer, m in spec.device_maps.items() if peer != spec.name and m
        }
    kwargs.update(spec.overrides)
    return TensorPipeRpcBackendOptions(**kwargs)


def _handler(url: str, **_kwargs: Any) -> Iterator[tuple[Any, int, int]]:
    from urllib.parse import urlparse

    key = urlparse(url).netloc
    with _lock:
        store = _staged.pop(key, None)
    if store is None:
        raise RuntimeError(
            f"{SCHEME}:// is rpcjob's private init_method and only works inside "
            "rpcjob.init_rpc(); plain torch users want init_method='etcd3://HOST:PORT/PREFIX'"
        )
    yield (store, -1, -1)


@functools.cache  # once per process: torch refuses a second handler for the scheme
def _register() -> None:
    import torch.distributed

    dist: Any = torch.distributed
    dist.register_rendezvous_handler(SCHEME, _handler)


def _reset_torch_process_state(rank: int) -> None:
    global _autograd_rank
    import torch.distributed.autograd
    import torch.distributed.rpc

    dist_autograd: Any = torch.distributed.autograd
    rpc: Any = torch.distributed.rpc
    with rpc._init_counter_lock:
        rpc._init_counter = 0  # a retry must land in the same rpc_prefix_0/ as the group
    if _autograd_rank is None:
        _autograd_rank = rank
        return
    original = getattr(dist_autograd._init, "__wrapped__", dist_autograd._init)
    first = _autograd_rank

    def _init_keep_first(_rank: int) -> Any:
        return original(first)

    _init_keep_first.__wrapped__ = original  # type: ignore[attr-defined]
    dist_autograd._init = _init_keep_first


def join(spec: JoinSpec, store: Any) -> None:
    """``torch.distributed.rpc.init_rpc(name, rank, world_size=None)`` over ``store``."""
    import torch.distributed.rpc

    rpc: Any = torch.distributed.rpc
    _register()
    _reset_torch_process_state(spec.rank)
    options = build_options(spec)
    _keep_alive.append(store)
    with _lock:
        _staged[spec.name] = store
    try:
        rpc.init_rpc(spec.name, rank=spec.rank, world_size=None, rpc_backend_options=options)
    finally:
        with _lock:
            _staged.pop(spec.name, None)


def init_cuda(devices: Sequence[str]) -> None:
    """Initialise CUDA on every device before joining (torch aborts on the first CUDA tensor
    a worker receives when its allocator was never initialised)."""
    if not devices:
        return
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError(
            f"the sidecar assigned CUDA devices {list(devices)} but torch sees no CUDA "
            f"(torch {torch.__version__}): install a CUDA build of torch in the worker image, "
            "or run this role without a nvidia.com/gpu request"
        )
    torch.cuda.init()  # type: ignore[no-untyped-call]
    for dev in devices:
        torch.empty(1, device=dev)


def leave(timeout: float = 0.0) -> None:
    """torch's graceful ``rpc.shutdown()`` of a dynamic member, telling the members at once.

    Same steps as torch (take the membership token, ``_update_group_membership(me, [], {},
    False)`` on every other member, ``agent.join(shutdown=True)``, local shutdown in any case),
    but the members are told concurrently instead of one round trip after another.
    ``timeout`` is torch's ``agent.join`` timeout (0, torch's default: no limit).
    """
    import torch.distributed.rpc
    import torch.distributed.rpc._utils
    import torch.distributed.rpc.api

    from rpcjob.devices.agent import call_all

    rpc: Any = torch.distributed.rpc
    api: Any = torch.distributed.rpc.api
    _utils: Any = torch.distributed.rpc._utils
    agent = api._get_current_rpc_agent()
    if not isinstance(agent, rpc.TensorPipeAgent) or agent.is_static_group:
        rpc.shutdown(graceful=True)
        return
    try:
        me = agent.get_worker_info()
        with _utils._group_membership_management(agent.store, me.name, False):
            peers = [w.name for w in agent.get_worker_infos() if w.name != me.name]
            # by reference, as torch does: each member runs its own (guarded) copy
            update = _utils._update_group_membership
            call_all([(peer, update, (me, [], {}, False)) for peer in peers])
            agent.join(shutdown=True, timeout=timeout)
    finally:
        api._finalize_shutdown()
