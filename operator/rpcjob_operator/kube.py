"""Thin async access to the Kubernetes API for the operator (plain dicts in, plain dicts out).

Built on the official ``kubernetes`` client's configuration loading (kubeconfig, in-cluster
service account, exec plugins, token refresh) and its REST layer, called from a small thread
pool: the client is synchronous and kopf's own HTTP helpers are private. Objects are raw API
JSON (camelCase dicts) — the planner and renderers work on dicts, and deserialising into the
client's model classes would only cost CPU.

Failures are translated once, here: a transient failure (connection refused, 5xx, 429) raises
:class:`kopf.TemporaryError`; a stale write raises :class:`Conflict`; anything else the server
refuses raises :class:`ApiRefused` with the server's message (the caller turns a user error,
e.g. a pod template the API server rejects, into a Warning event instead of a crash loop).
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf

from rpcjob import contract

USER_AGENT = "rpcjob-operator/0.1.0"
JOB_PATH = f"/apis/{contract.GROUP}/{contract.VERSION}/namespaces/{{ns}}/{contract.PLURAL}"
PATHS = {
    "Pod": "/api/v1/namespaces/{ns}/pods",
    "Service": "/api/v1/namespaces/{ns}/services",
    "NetworkPolicy": "/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies",
    contract.KIND: JOB_PATH,
}
MERGE = "application/merge-patch+json"
TRANSIENT = frozenset({0, 429, 500, 502, 503, 504})


class ApiRefused(Exception):
    """The API server refused a request for a reason a retry will not fix (4xx)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class Conflict(ApiRefused):
    """409 on a write with a resourceVersion precondition: re-read and plan again."""


def load_configuration() -> Any:
    """The client configuration: in-cluster service account if present, else KUBECONFIG."""
    from kubernetes import client, config

    cfg = client.Configuration()
    loaders: Any = config  # the kubernetes client is untyped
    try:
        loaders.load_incluster_config(client_configuration=cfg)
    except config.ConfigException:
        loaders.load_kube_config(client_configuration=cfg)
    return cfg


class Kube:
    """The operator's API calls. One instance per operator process."""

    def __init__(self, configuration: Any | None = None, *, threads: int = 16) -> None:
        from kubernetes import client

        cfg = configuration if configuration is not None else load_configuration()
        cfg.connection_pool_maxsize = max(threads, 4)
        self._api: Any = client.ApiClient(cfg)
        self._api.user_agent = USER_AGENT
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="kube")
        self.timeout = 30.0

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._api.close()

    # --- the one request primitive ----------------------------------------------------------
    def _request_sync(
        self,
        method: str,
        path: str,
        query: dict[str, str] | None,
        body: Any,
        content_type: str,
    ) -> tuple[int, Any]:
        from kubernetes.client.exceptions import ApiException

        if query:
            path = f"{path}?{urllib.parse.urlencode(query)}"
        headers = {"Accept": "application/json", "Content-Type": content_type}
        try:
            m, url, hdrs, data, post = self._api.param_serialize(
                method, path, header_params=headers, body=body, auth_settings=["BearerToken"]
            )
            resp: Any = self._api.call_api(m, url, hdrs, data, post, _request_timeout=self.timeout)
            raw = resp.read()
        except ApiException as e:  # connection-level failures arrive as status 0
            return int(e.status or 0), {"reason": str(e.reason), "message": str(e.body or "")}
        except Exception as e:  # urllib3 errors, DNS, TLS: transient from our point of view
            return 0, {"reason": type(e).__name__, "message": str(e)}
        try:
            decoded = json.loads(raw) if raw else {}
        except ValueError:
            decoded = {"message": raw[:500].decode(errors="replace")}
        return int(resp.status), decoded

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        ok_statuses: tuple[int, ...] = (),
    ) -> tuple[int, dict[str, Any]]:
        """(status, body) for 2xx and ``ok_statuses``; raises otherwise (see the module doc)."""
        loop = asyncio.get_running_loop()
        status, data = await loop.run_in_executor(
            self._pool, self._request_sync, method, path, query, body, content_type
        )
        if 200 <= status < 300 or status in ok_statuses:
            return status, data if isinstance(data, dict) else {}
        reason = str((data or {}).get("reason") or "")
        message = str((data or {}).get("message") or "")
        where = f"{method} {path.split('?')[0]}"
        if status in TRANSIENT:
            raise kopf.TemporaryError(
                f"Kubernetes API {where} failed ({status or 'no connection'} {reason}): "
                f"{message[:300]}",
                delay=2,
            )
        cls = Conflict if status == 409 else ApiRefused
        raise cls(status, reason, f"{where}: {message}")

    # --- jobs ---------------------------------------------------------------------------------
    async def get_job(self, ns: str, name: str) -> dict[str, Any] | None:
        status, obj = await self.request(
            "GET", f"{JOB_PATH.format(ns=ns)}/{name}", ok_statuses=(404,)
        )
        return None if status == 404 else obj

    async def patch_job_status(
        self, ns: str, name: str, resource_version: str, status_patch: dict[str, Any]
    ) -> dict[str, Any]:
        """Merge-patch ``.status`` if the job is unchanged since ``resource_version``; raises
        :class:`Conflict` otherwise (then re-read and plan again: never count a restart twice).
        """
        body = {"metadata": {"resourceVersion": resource_version}, "status": status_patch}
        _, obj = await self.request(
            "PATCH", f"{JOB_PATH.format(ns=ns)}/{name}/status", body=body, content_type=MERGE
        )
        return obj

    async def delete_job(self, ns: str, name: str, uid: str) -> None:
        body = {"preconditions": {"uid": uid}, "propagationPolicy": "Background"}
        await self.request(
            "DELETE", f"{JOB_PATH.format(ns=ns)}/{name}", body=body, ok_statuses=(404, 409)
        )

    # --- pods -----------------------------------------------------------------------------------
    async def list_pods(self, ns: str, selector: dict[str, str]) -> list[dict[str, Any]]:
        sel = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
        _, data = await self.request(
            "GET", PATHS["Pod"].format(ns=ns), query={"labelSelector": sel}
        )
        return list(data.get("items") or [])

    async def create(self, obj: dict[str, Any]) -> bool:
        """Create ``obj``; False when it already exists (409: a previous cycle made it)."""
        ns = obj["metadata"]["namespace"]
        status, _ = await self.request(
            "POST", PATHS[obj["kind"]].format(ns=ns), body=obj, ok_statuses=(409,)
        )
        return status != 409

    async def create_or_patch(self, obj: dict[str, Any]) -> None:
        if await self.create(obj):
            return
        md = obj["metadata"]
        patch = {
            "metadata": {"labels": md.get("labels"), "ownerReferences": md.get("ownerReferences")},
            "spec": obj["spec"],
        }
        path = f"{PATHS[obj['kind']].format(ns=md['namespace'])}/{md['name']}"
        await self.request("PATCH", path, body=patch, content_type=MERGE)

    async def delete_pod(self, ns: str, name: str, uid: str, grace: int | None) -> bool:
        """Delete the pod only if it is still incarnation ``uid``; False when already gone."""
        body: dict[str, Any] = {"preconditions": {"uid": uid}}
        if grace is not None:
            body["gracePeriodSeconds"] = grace
        status, _ = await self.request(
            "DELETE", f"{PATHS['Pod'].format(ns=ns)}/{name}", body=body, ok_statuses=(404, 409)
        )
        return status not in (404, 409)


def merge_patch(old: Any, new: Any) -> Any:
    """The RFC 7386 merge patch that turns ``old`` into ``new`` (removed keys become null)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    out: dict[str, Any] = {}
    for key in old.keys() - new.keys():
        out[key] = None
    for key, value in new.items():
        if key not in old:
            out[key] = value
        elif old[key] != value:
            out[key] = merge_patch(old[key], value)
    return out
