"""The environment ``rpcjob-operator`` reads, for its ``--help`` (names from the contract)."""

from __future__ import annotations

from rpcjob import contract as c
from rpcjob.entrypoints import K8S_IN_CLUSTER, EnvHelp, env_help
from rpcjob_operator.render.defaults import (
    DEFAULT_SIDECAR_IMAGE,
    ENV_METRICS_NAMESPACE_SELECTOR,
    ENV_METRICS_POD_SELECTOR,
)

OPERATOR_ENV: EnvHelp = (
    (c.ENV_DEFAULT_ETCD_ENDPOINTS, "etcd host:port,... for jobs without spec.etcd"),
    (c.ENV_DEFAULT_ETCD_TLS_SECRET, "Secret (in the job's namespace) with etcd TLS files"),
    (c.ENV_DEFAULT_ETCD_AUTH_SECRET, "Secret (in the job's namespace) with etcd user/password"),
    (c.ENV_SIDECAR_IMAGE, f"the injected sidecar's image; default {DEFAULT_SIDECAR_IMAGE}"),
    (c.ENV_SIDECAR_IMAGE_PULL_POLICY, "its imagePullPolicy; default IfNotPresent"),
    (c.ENV_JOB_SERVICE_ACCOUNT, "ServiceAccount of job pods whose template names none"),
    (ENV_METRICS_NAMESPACE_SELECTOR, "JSON labels: namespaces that may scrape sidecar metrics"),
    (ENV_METRICS_POD_SELECTOR, "JSON labels: pods that may scrape sidecar metrics"),
    (K8S_IN_CLUSTER[0], "in a pod: the API server (service account credentials)"),
    (K8S_IN_CLUSTER[1], "(its port)"),
    ("KUBECONFIG", "outside a pod: the kubeconfig to use"),
)


def click_epilog(entries: EnvHelp) -> str:
    """``env_help`` for a click command (``\\b`` keeps click from rewrapping the lines)."""
    return "\b\n" + env_help(entries)
