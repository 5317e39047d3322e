"""e2e backends: ``cluster`` (the default: the real control plane of e2e/cluster + process
kubelets) and ``kind``.

``Cluster`` (base.py) is what scenarios use; e2e/tests/conftest.py picks the backend from
``--e2e-backend`` / ``RPCJOB_E2E_BACKEND`` (default ``cluster``).
"""

from __future__ import annotations

from .base import Backend, Cluster, KubectlError, OwnOperator, WaitTimeout, wait_for

BACKENDS = ("cluster", "kind")
ENV_BACKEND = "RPCJOB_E2E_BACKEND"

__all__ = [
    "BACKENDS",
    "ENV_BACKEND",
    "Backend",
    "Cluster",
    "KubectlError",
    "OwnOperator",
    "WaitTimeout",
    "wait_for",
]
