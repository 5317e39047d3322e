"""The process kubelet's API calls, with the node's own credentials (Node authorizer +
NodeRestriction apply): raw JSON objects, pod status writes, the final delete, and the
Secrets / ConfigMaps / service-account tokens that volumes and env refer to."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from .kubelet_volumes import VolumeNotReady


def api_client(kubeconfig: Path) -> client.ApiClient:
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
    cfg.connection_pool_maxsize = 32  # one runner thread per pod writes status concurrently
    return client.ApiClient(cfg)


class NodeApi:
    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        **query: Any,
    ) -> Any:
        """One request; the decoded JSON body. ApiException (status, body) on an error."""
        params = self.api.param_serialize(
            method=method,
            resource_path=path,
            query_params=[(k, v) for k, v in query.items() if v is not None],
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
        )
        resp = self.api.call_api(*params)
        data = resp.read()
        if not 200 <= resp.status <= 299:
            ApiException.from_response(
                http_resp=resp, body=data.decode(errors="replace"), data=None
            )  # raises
        return json.loads(data) if data else None

    def get(self, path: str) -> dict[str, Any] | None:
        try:
            return dict(self.call("GET", path))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    # --- pods ---------------------------------------------------------------------------
    def write_pod_status(self, ns: str, name: str, uid: str, status: dict[str, Any]) -> None:
        """Replace the status we own, keep what others wrote (qosClass is immutable, other
        writers' conditions stay), and keep lastTransitionTime of unchanged conditions."""
        path = f"/api/v1/namespaces/{ns}/pods/{name}"
        for _ in range(10):
            pod = self.get(path)
            if pod is None or pod["metadata"]["uid"] != uid:
                return
            old = pod.get("status") or {}
            new = {**old, **{k: v for k, v in status.items() if k != "qosClass"}}
            before = {c["type"]: c for c in old.get("conditions") or []}
            mine = {c["type"] for c in status.get("conditions") or []}
            conds = []
            for c in status.get("conditions") or []:
                prev = before.get(c["type"])
                same = prev is not None and prev.get("status") == c["status"]
                stamp = prev.get("lastTransitionTime") if same and prev else None
                conds.append({**c, "lastTransitionTime": stamp or _now()})
            conds += [c for t, c in before.items() if t not in mine]
            new["conditions"] = conds
            if new == old:
                return
            pod["status"] = new
            try:
                self.call("PUT", path + "/status", pod)
                return
            except ApiException as exc:
                if exc.status == 404:
                    return
                if exc.status != 409:
                    raise
        raise RuntimeError(f"pod {ns}/{name}: status write kept conflicting")

    def finalize_pod(self, ns: str, name: str, uid: str) -> None:
        """The kubelet's last word on a terminating pod: delete it with grace 0."""
        body = {"gracePeriodSeconds": 0, "preconditions": {"uid": uid}}
        try:
            self.call("DELETE", f"/api/v1/namespaces/{ns}/pods/{name}", body)
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise

    # --- what pods refer to ---------------------------------------------------------------
    def object_data(self, ns: str, kind: str, name: str) -> dict[str, bytes] | None:
        """A Secret's or ConfigMap's keys, decoded; None when missing. The Node authorizer
        lets a node read them only once a pod bound to it refers to them, and learns of new
        bindings a moment later: a 403 is retried briefly before it counts as missing."""
        plural = "secrets" if kind == "secret" else "configmaps"
        for attempt in range(20):
            try:
                obj = self.get(f"/api/v1/namespaces/{ns}/{plural}/{name}")
                break
            except ApiException as exc:
                if exc.status != 403 or attempt == 19:
                    raise
                time.sleep(0.25)  # the authorizer's graph catches up; nothing to wait on
        if obj is None:
            return None
        if kind == "secret":
            return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
        out = {k: str(v).encode() for k, v in (obj.get("data") or {}).items()}
        out.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
        return out

    def lookup_all(self, ns: str, kind: str, name: str) -> Mapping[str, str] | None:
        data = self.object_data(ns, kind, name)
        return None if data is None else {k: v.decode() for k, v in data.items()}

    def lookup(self, ns: str, kind: str, name: str, key: str) -> str | None:
        return (self.lookup_all(ns, kind, name) or {}).get(key)

    def token(self, pod: Mapping[str, Any], audience: str | None, expiration: int) -> str:
        """A TokenRequest bound to the pod, as the kubelet asks for projected tokens."""
        meta, spec = pod["metadata"], pod["spec"]
        sa = spec.get("serviceAccountName") or "default"
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": [audience] if audience else None,
                "expirationSeconds": expiration,
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": meta["name"],
                    "uid": meta["uid"],
                },
            },
        }
        path = f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{sa}/token"
        try:
            return str(self.call("POST", path, body)["status"]["token"])
        except ApiException as exc:
            raise VolumeNotReady(f"token for service account {sa!r}: {exc.reason}") from exc


class PodSource:
    """kubelet_volumes.Source for one pod."""

    def __init__(self, api: NodeApi, pod: Mapping[str, Any]) -> None:
        self.api = api
        self.pod = pod
        self.ns = str(pod["metadata"]["namespace"])

    def secret(self, name: str) -> Mapping[str, bytes] | None:
        return self.api.object_data(self.ns, "secret", name)

    def configmap(self, name: str) -> Mapping[str, bytes] | None:
        return self.api.object_data(self.ns, "configmap", name)

    def token(self, audience: str | None, expiration: int) -> str:
        return self.api.token(self.pod, audience, expiration)

    def claim_path(self, claim: str) -> str | None:
        pvc = self.api.get(f"/api/v1/namespaces/{self.ns}/persistentvolumeclaims/{claim}")
        name = ((pvc or {}).get("spec") or {}).get("volumeName")
        if not name:
            return None
        spec = (self.api.get(f"/api/v1/persistentvolumes/{name}") or {}).get("spec") or {}
        path = (spec.get("hostPath") or spec.get("local") or {}).get("path")
        return str(path) if path else None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
