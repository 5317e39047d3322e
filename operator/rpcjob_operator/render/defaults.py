"""Operator-wide settings the renderers need (from the Helm chart, via environment)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rpcjob import contract

DEFAULT_SIDECAR_IMAGE = "ghcr.io/rpcjob/rpcjob-sidecar:0.1.0"
# Env of the operator (not of job pods): who may scrape the sidecars' /metrics through the
# NetworkPolicy. JSON label maps; unset = no extra ingress (Prometheus then cannot scrape).
ENV_METRICS_NAMESPACE_SELECTOR = "RPCJOB_METRICS_NAMESPACE_SELECTOR"
ENV_METRICS_POD_SELECTOR = "RPCJOB_METRICS_POD_SELECTOR"


def _default_sidecar_resources() -> dict[str, Any]:
    return {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}}


@dataclass(frozen=True)
class OperatorDefaults:
    sidecar_image: str = DEFAULT_SIDECAR_IMAGE
    image_pull_policy: str = "IfNotPresent"
    etcd_endpoints: tuple[str, ...] = ()  # used when a job has no spec.etcd.endpoints
    etcd_tls_secret: str | None = None  # used when a job has no spec.etcd
    etcd_auth_secret: str | None = None
    job_service_account: str | None = None  # for templates that name none (sidecar gets nodes)
    lease_ttl: int = contract.DEFAULT_LEASE_TTL
    rank_space: int = contract.DEFAULT_RANK_SPACE
    sidecar_resources: dict[str, Any] = field(default_factory=_default_sidecar_resources)
    sidecar_user: int = 65532  # the sidecar image's non-root user
    # NetworkPolicy: a peer allowed to reach the sidecar metrics port (Prometheus). A peer is
    # the intersection of both selectors when both are set; {} selects everything.
    metrics_namespace_selector: dict[str, str] | None = None
    metrics_pod_selector: dict[str, str] | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorDefaults:
        import json

        e = os.environ if env is None else env

        def opt(key: str) -> str | None:
            return e.get(key) or None

        def labels(key: str) -> dict[str, str] | None:
            raw = e.get(key)
            if not raw:
                return None
            value = json.loads(raw)
            if not isinstance(value, dict):
                raise ValueError(f"{key} must be a JSON object of labels, got {raw!r}")
            return {str(k): str(v) for k, v in value.items()}

        endpoints = tuple(
            x.strip()
            for x in e.get(contract.ENV_DEFAULT_ETCD_ENDPOINTS, "").split(",")
            if x.strip()
        )
        return cls(
            sidecar_image=e.get(contract.ENV_SIDECAR_IMAGE) or DEFAULT_SIDECAR_IMAGE,
            image_pull_policy=e.get(contract.ENV_SIDECAR_IMAGE_PULL_POLICY) or "IfNotPresent",
            etcd_endpoints=endpoints,
            etcd_tls_secret=opt(contract.ENV_DEFAULT_ETCD_TLS_SECRET),
            etcd_auth_secret=opt(contract.ENV_DEFAULT_ETCD_AUTH_SECRET),
            job_service_account=opt(contract.ENV_JOB_SERVICE_ACCOUNT),
            metrics_namespace_selector=labels(ENV_METRICS_NAMESPACE_SELECTOR),
            metrics_pod_selector=labels(ENV_METRICS_POD_SELECTOR),
        )
