"""rpcjob: elastic PyTorch RPC.

The worker API (``init_rpc``, ``shutdown``, ``on_drain``, and for application code
``members``, ``wait_for_member``, ``run_role``) and the ``etcd3://`` init_method live here. This
package never imports torch eagerly: the sidecar daemon imports ``rpcjob`` too and must stay
torch-free. The ``etcd3://`` handler is registered with torch as soon as torch's rendezvous
module is imported (now, or later in the process).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from rpcjob._torch_hook import install_rendezvous_hook

__version__ = "0.1.0"
__all__ = ["init_rpc", "members", "on_drain", "run_role", "shutdown", "wait_for_member"]
# The module of rpcjob.worker that defines each name of the worker API.
_HOMES = {"members": "roles", "run_role": "roles", "wait_for_member": "roles"}

if TYPE_CHECKING:
    from rpcjob.worker.api import init_rpc, on_drain, shutdown
    from rpcjob.worker.roles import members, run_role, wait_for_member


def __getattr__(name: str) -> Any:
    # The worker API imports torch: load it only when a worker asks for it.
    if name in __all__:
        module = importlib.import_module(f"rpcjob.worker.{_HOMES.get(name, 'api')}")
        return getattr(module, name)
    raise AttributeError(f"module 'rpcjob' has no attribute {name!r}")


install_rendezvous_hook()
