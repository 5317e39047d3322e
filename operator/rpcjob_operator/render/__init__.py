"""Pure renderers: RpcJob + slot -> Kubernetes objects as plain dicts (no API access)."""

from rpcjob_operator.render.defaults import OperatorDefaults
from rpcjob_operator.render.pod import render_pod
from rpcjob_operator.render.service import render_network_policy, render_service

__all__ = [
    "OperatorDefaults",
    "render_network_policy",
    "render_pod",
    "render_service",
]
