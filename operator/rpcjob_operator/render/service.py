"""render_service / render_network_policy: per-job networking."""

from __future__ import annotations

from typing import Any

from rpcjob import contract
from rpcjob_operator.render.common import job_selector, object_meta, service_name
from rpcjob_operator.render.defaults import OperatorDefaults
from rpcjob_operator.spec import RpcJob


def render_service(job: RpcJob) -> dict[str, Any]:
    """Headless Service: stable DNS ``<pod>.<job>.<ns>.svc`` for every slot.

    ``publishNotReadyAddresses``: a pod is Ready only once it joined the group, but joiners
    must be resolvable before that.
    """
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(job, service_name(job)),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": job_selector(job),
            "ports": [
                {
                    "name": "metrics",
                    "port": contract.SIDECAR_HTTP_PORT,
                    "targetPort": contract.SIDECAR_HTTP_PORT,
                    "protocol": "TCP",
                }
            ],
        },
    }


def render_network_policy(
    job: RpcJob, *, defaults: OperatorDefaults | None = None
) -> dict[str, Any]:
    """Ingress to the job's pods only from the job's own pods.

    RPC unpickles whatever a peer sends, so any pod that can reach a worker can run code in it.
    TensorPipe listens on ephemeral ports, hence all ports from our own pods. Optionally one
    more peer (the operator's metrics settings: e.g. Prometheus's namespace) may reach the
    sidecar's metrics port only. Egress is left alone (etcd, the API server, your storage).
    """
    selector = {"matchLabels": job_selector(job)}
    ingress: list[dict[str, Any]] = [{"from": [{"podSelector": selector}]}]
    d = defaults or OperatorDefaults()
    if d.metrics_namespace_selector is not None or d.metrics_pod_selector is not None:
        peer: dict[str, Any] = {}
        if d.metrics_namespace_selector is not None:
            peer["namespaceSelector"] = {"matchLabels": dict(d.metrics_namespace_selector)}
        if d.metrics_pod_selector is not None:
            peer["podSelector"] = {"matchLabels": dict(d.metrics_pod_selector)}
        ingress.append(
            {
                "from": [peer],
                "ports": [{"protocol": "TCP", "port": contract.SIDECAR_HTTP_PORT}],
            }
        )
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": object_meta(job, f"{job.meta.name}-rpc"),
        "spec": {"podSelector": selector, "policyTypes": ["Ingress"], "ingress": ingress},
    }
