"""``rpcjob top|debug|profile`` against a cluster: pods by label, sidecars through the API
server's pod proxy (no port-forward). Needs RBAC ``pods/proxy`` (get, create) and ``pods``
(list) in the job's namespace: the chart's ``rpcjob-debugger`` ClusterRole.

Untested against a real API server in this repository's unit suite (the e2e control plane
covers it once it runs there); the local path shares every other module.
"""

from __future__ import annotations

from typing import Any

from rpcjob import contract
from rpcjob_operator.observe.targets import Answer, Job, Target, TargetError, _decode


def cluster_job(
    name: str, namespace: str | None, kubeconfig: str | None, context: str | None
) -> Job:
    import kubernetes
    from kubernetes.client.exceptions import ApiException

    k8s: Any = kubernetes  # the client's generated models are loosely typed
    try:
        k8s.config.load_kube_config(config_file=kubeconfig, context=context)
    except Exception as exc:  # ConfigException, missing file
        raise TargetError(
            f"cannot load the kubeconfig ({kubeconfig or '~/.kube/config'}): "
            f"{exc}; pass --kubeconfig"
        ) from None
    ns = namespace or "default"
    core: Any = k8s.client.CoreV1Api()
    try:
        pods: Any = core.list_namespaced_pod(ns, label_selector=f"{contract.LABEL_JOB_NAME}={name}")
    except ApiException as exc:
        raise TargetError(
            f"cannot list the pods of job {name!r} in namespace {ns!r}: {exc.status} {exc.reason}"
        ) from None
    if not pods.items:
        raise TargetError(
            f"no pods of an RpcJob named {name!r} in namespace {ns!r} "
            "(check the name and -n NAMESPACE)"
        )
    targets = [
        Target(
            pod=p.metadata.name,
            name=(p.metadata.labels or {}).get(contract.LABEL_WORKER_NAME, ""),
            node=p.spec.node_name or "",
            ip=p.status.pod_ip or "",
            phase=p.status.phase or "",
        )
        for p in pods.items
    ]

    def fetch(t: Target, method: str, path: str, timeout: float) -> Answer:
        return proxy(core, ns, t, method, path, timeout)

    return Job(name, targets, fetch, None, where=f"namespace {ns}")


def proxy(core: Any, ns: str, t: Target, method: str, path: str, timeout: float) -> Answer:
    """``/api/v1/namespaces/<ns>/pods/<pod>:9464/proxy/<path>``; the API server forwards the
    query string to the pod."""
    from kubernetes.client.exceptions import ApiException

    route, _, query = path.partition("?")
    params = [tuple(kv.split("=", 1)) for kv in query.split("&") if "=" in kv]
    pod = f"{t.pod}:{contract.SIDECAR_HTTP_PORT}"
    try:
        if method == "GET" and not params:
            raw = core.connect_get_namespaced_pod_proxy_with_path(
                pod, ns, route.lstrip("/"), _preload_content=False, _request_timeout=timeout
            )
        else:
            raw = core.api_client.call_api(
                f"/api/v1/namespaces/{ns}/pods/{pod}/proxy{route}",
                method,
                query_params=params,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=timeout,
            )[0]
        return int(raw.status), _decode(raw.data)
    except ApiException as exc:
        return int(exc.status or 0), _decode(
            (exc.body or b"")
            if isinstance(exc.body, bytes)
            else str(exc.body or exc.reason).encode()
        )
    except Exception as exc:  # urllib3 timeouts and connection errors
        return 0, {"error": f"pod proxy to {t.pod}: {exc}"}
