"""e2e backends: ``local`` (emulated API server + process kubelet), ``cluster`` (the real control
plane of e2e/cluster + process kubelets) and ``kind``.

``Cluster`` (base.py) is what scenarios use; ``select_backend`` picks the backend from
``--e2e-backend`` / ``RPCJOB_E2E_BACKEND`` (default ``local``).
"""

from __future__ import annotations

from .base import Backend, Cluster, KubectlError, WaitTimeout, wait_for

BACKENDS = ("local", "kind", "cluster")
ENV_BACKEND = "RPCJOB_E2E_BACKEND"

__all__ = [
    "BACKENDS",
    "ENV_BACKEND",
    "Backend",
    "Cluster",
    "KubectlError",
    "WaitTimeout",
    "wait_for",
]
