"""``rpcjob top|debug|profile`` against a cluster: the RpcJob (its ``status.members`` give the
ranks), its pods by label, and each sidecar through the API server's pod proxy
(``/api/v1/namespaces/<ns>/pods/<pod>:9464/proxy/debug/rpc/...``; no port-forward). The API
server authenticates the user with the kubeconfig's credentials (client certificate, token,
exec plugin) and authorizes ``pods/proxy`` get (GET) and create (POST): the chart's
``<release>-debugger`` ClusterRole (docs/observability.md#cluster). Tested on the real
control plane in e2e/tests/test_observe.py.
"""

from __future__ import annotations

import re
from typing import Any

from rpcjob import contract
from rpcjob.records import MemberRecord
from rpcjob_operator.observe.targets import (
    Answer,
    Job,
    Target,
    TargetError,
    _decode,
    merge_targets,
)

PROXY = "/api/v1/namespaces/{namespace}/pods/{name}/proxy"
ROLE = "rpcjob-debugger"  # the chart's <release>-debugger with the default release name


def forbidden_hint(message: str, namespace: str) -> str:
    """Pure: what to ask for when the API server refused (403): the user it named and the
    ``kubectl create rolebinding`` that grants the chart's debugger ClusterRole."""
    m = re.search(r'User "([^"]+)"', message)
    user = m.group(1) if m else ""
    sa = re.fullmatch(r"system:serviceaccount:([^:]+):([^:]+)", user)
    if sa:
        who, flag = sa.group(2), f"--serviceaccount={sa.group(1)}:{sa.group(2)}"
    else:
        who, flag = (user or "you"), f"--user={user or '<you>'}"
    slug = re.sub(r"[^a-z0-9-]+", "-", who.lower()).strip("-") or "user"
    return (
        f"ask a cluster admin to bind the chart's ClusterRole {ROLE} "
        f"(<release>-debugger) in namespace {namespace}: kubectl create rolebinding "
        f"{slug}-rpcjob-debug -n {namespace} --clusterrole={ROLE} {flag}"
    )


def api_error(code: int, body: dict[str, Any], namespace: str) -> dict[str, Any]:
    """Pure: an answer whose body is the API server's own ``Status`` (the proxy refused or
    could not reach the pod) becomes ``{"error": ...}``; the sidecar's answers pass through."""
    if body.get("kind") != "Status":
        return body
    msg = str(body.get("message") or body.get("reason") or f"HTTP {code}")
    if code == 403:
        return {"error": f"API server: {msg}; {forbidden_hint(msg, namespace)}"}
    return {"error": f"API server: {msg}"}


def cluster_job(
    name: str, namespace: str | None, kubeconfig: str | None, context: str | None
) -> Job:
    import kubernetes

    k8s: Any = kubernetes  # the client's generated models are loosely typed
    try:
        k8s.config.load_kube_config(config_file=kubeconfig, context=context)
    except Exception as exc:  # ConfigException, missing file
        raise TargetError(
            f"cannot load the kubeconfig ({kubeconfig or '~/.kube/config'}): "
            f"{exc}; pass --kubeconfig"
        ) from None
    ns = namespace or "default"
    api: Any = k8s.client.ApiClient()
    core: Any = k8s.client.CoreV1Api(api)
    rpcjob = _read(
        lambda: k8s.client.CustomObjectsApi(api).get_namespaced_custom_object(
            contract.GROUP, contract.VERSION, ns, contract.PLURAL, name
        ),
        f"read RpcJob {name!r} in namespace {ns!r}",
        ns,
        missing=f"no RpcJob named {name!r} in namespace {ns!r} (check the name and -n NAMESPACE)",
    )
    status = rpcjob.get("status") or {}
    pods: Any = _read(
        lambda: core.list_namespaced_pod(ns, label_selector=f"{contract.LABEL_JOB_NAME}={name}"),
        f"list the pods of job {name!r} in namespace {ns!r}",
        ns,
    )
    if not pods.items and not status.get("members"):
        raise TargetError(f"RpcJob {name!r} in namespace {ns!r} has no pods yet")
    by_pod = {
        p.metadata.name: {
            "ip": p.status.pod_ip or "",
            "phase": p.status.phase or "",
            "node": p.spec.node_name or "",
            "name": (p.metadata.labels or {}).get(contract.LABEL_WORKER_NAME, ""),
        }
        for p in pods.items
    }
    members = [MemberRecord.from_dict(m) for m in status.get("members") or [] if m.get("name")]
    targets = merge_targets(by_pod, members)

    def fetch(t: Target, method: str, path: str, timeout: float) -> Answer:
        return proxy(api, ns, t, method, path, timeout)

    return Job(name, targets, fetch, None, where=f"namespace {ns}")


def _read(call: Any, what: str, ns: str, missing: str | None = None) -> Any:
    from kubernetes.client.exceptions import ApiException

    try:
        return call()
    except ApiException as exc:
        if exc.status == 404 and missing:
            raise TargetError(missing) from None
        body = _decode(exc.body if isinstance(exc.body, bytes) else str(exc.body).encode())
        msg = str(body.get("message") or exc.reason)
        hint = f"; {forbidden_hint(msg, ns)}" if exc.status == 403 else ""
        raise TargetError(f"cannot {what}: {exc.status} {msg}{hint}") from None
    except Exception as exc:  # urllib3: API server unreachable, TLS
        raise TargetError(f"cannot {what}: {exc}") from None


def proxy(api: Any, ns: str, t: Target, method: str, path: str, timeout: float) -> Answer:
    """One request to ``t``'s sidecar through the API server's pod proxy, which forwards the
    method, the path after ``/proxy`` and the query string to ``<pod IP>:9464``."""
    from kubernetes.client.exceptions import ApiException

    route, _, query = path.partition("?")
    params = [tuple(kv.split("=", 1)) for kv in query.split("&") if "=" in kv]
    try:
        # param_serialize adds the server URL, the credentials (a bearer token; client
        # certificates are on the connection pool) and quotes the pod name.
        m, url, headers, body, post = api.param_serialize(
            method=method,
            resource_path=PROXY + route,
            path_params={"namespace": ns, "name": f"{t.pod}:{contract.SIDECAR_HTTP_PORT}"},
            query_params=params,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        raw = api.call_api(m, url, headers, body, post, _request_timeout=timeout)
        code, data = int(raw.status), raw.read()
    except ApiException as exc:
        code = int(exc.status or 0)
        data = exc.body if isinstance(exc.body, bytes) else str(exc.body or exc.reason).encode()
    except Exception as exc:  # urllib3 timeouts and connection errors
        return 0, {"error": f"pod proxy to {t.pod}: {exc}"}
    return code, api_error(code, _decode(data), ns)
