"""Where the sidecar gets its Node's labels: a file or inline JSON (local mode, tests), else the
Kubernetes API (in cluster: ``GET /api/v1/nodes/<node>`` with the service account's token).

A plain ``http.client`` call: the sidecar image stays slim (no kubernetes package). Failures
to *read* labels are errors naming the fix; what the labels *say* is judged by
:func:`rpcjob.devices.parse_node_labels` (warnings and documented fallbacks).
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
from collections.abc import Mapping
from pathlib import Path

import yaml

from rpcjob import contract as c

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class LabelsError(RuntimeError):
    pass


def _as_labels(data: object, where: str) -> dict[str, str]:
    # Accept a plain label map, or a Node-shaped object ({"metadata": {"labels": ...}}).
    if isinstance(data, dict) and isinstance(data.get("metadata"), dict):
        data = data["metadata"].get("labels") or {}
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise LabelsError(
            f'{where} must be a map of label name to value, e.g. {{"nvidia.com/gpu.count": "8"}}'
        )
    return {k: "" if v is None else str(v) for k, v in data.items()}


def labels_from_file(path: str) -> dict[str, str]:
    where = f"{c.ENV_NODE_LABELS_FILE}={path!r}"
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise LabelsError(f"{where}: cannot read it ({e.strerror}); fix the path") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise LabelsError(f"{where} is not YAML/JSON: {e}") from None
    return _as_labels(data, where)


def labels_from_json(raw: str) -> dict[str, str]:
    where = f"{c.ENV_NODE_LABELS}"
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise LabelsError(f"{where} is not valid JSON ({e.msg})") from None
    return _as_labels(data, where)


def labels_from_api(
    node: str, env: Mapping[str, str], timeout: float = 10.0, sa_dir: Path = SA_DIR
) -> dict[str, str]:
    host = env.get("KUBERNETES_SERVICE_HOST", "")
    port = int(env.get("KUBERNETES_SERVICE_PORT", "443") or 443)
    token_file, ca_file = sa_dir / "token", sa_dir / "ca.crt"
    if not host or not token_file.exists():
        raise LabelsError(
            "not running in a Kubernetes pod (no KUBERNETES_SERVICE_HOST or service-account "
            f"token): set {c.ENV_NODE_LABELS_FILE} or {c.ENV_NODE_LABELS} in local mode"
        )
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file.exists() else None)
    conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=ctx)
    try:
        conn.request(
            "GET",
            f"/api/v1/nodes/{node}",
            headers={
                "Authorization": f"Bearer {token_file.read_text().strip()}",
                "Accept": "application/json",
            },
        )
        resp = conn.getresponse()
        body = resp.read()
    except OSError as e:
        raise LabelsError(f"cannot reach the Kubernetes API at {host}:{port}: {e}") from None
    finally:
        conn.close()
    if resp.status == 403:
        raise LabelsError(
            f"the pod's service account may not GET node {node!r} (403): grant it "
            "'get' on nodes (the rpcjob chart's job ClusterRole does)"
        )
    if resp.status == 404:
        raise LabelsError(f"node {node!r} not found: check {c.ENV_NODE_NAME} (spec.nodeName)")
    if resp.status != 200:
        raise LabelsError(f"GET /api/v1/nodes/{node} answered {resp.status}: {body[:200]!r}")
    return _as_labels(json.loads(body), f"node {node}")


def read_node_labels(
    node: str, labels_file: str, labels_json: str, env: Mapping[str, str] | None = None
) -> dict[str, str]:
    if labels_file:
        return labels_from_file(labels_file)
    if labels_json:
        return labels_from_json(labels_json)
    if not node:
        raise LabelsError(
            f"{c.ENV_NODE_NAME} is not set: set it from the downward API (spec.nodeName), or "
            f"give labels with {c.ENV_NODE_LABELS_FILE} / {c.ENV_NODE_LABELS} in local mode"
        )
    return labels_from_api(node, os.environ if env is None else env)
