"""rpcjob: elastic PyTorch RPC.

The worker API (``init_rpc``, ``shutdown``, ``on_drain``) and the ``etcd3://`` init_method live
here. This package never imports torch eagerly: the sidecar daemon imports ``rpcjob`` too and
must stay torch-free. The ``etcd3://`` handler is registered with torch as soon as torch's
rendezvous module is imported (now, or later in the process).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rpcjob._torch_hook import install_rendezvous_hook

__version__ = "0.1.0"
__all__ = ["init_rpc", "on_drain", "shutdown"]

if TYPE_CHECKING:
    from rpcjob.worker.api import init_rpc, on_drain, shutdown


def __getattr__(name: str) -> Any:
    # The worker API imports torch: load it only when a worker asks for it.
    if name in __all__:
        from rpcjob.worker import api

        return getattr(api, name)
    raise AttributeError(f"module 'rpcjob' has no attribute {name!r}")


install_rendezvous_hook()
