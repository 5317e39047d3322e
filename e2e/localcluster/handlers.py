"""CRUD, patch, scale and watch handlers of the emulated API server."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import time
from dataclasses import dataclass
from typing import Any

import yaml
from aiohttp import web

from . import errors, protobuf
from .patch import json_patch, merge_patch, strategic_merge
from .resources import ResourceType
from .selectors import parse_field_selector, parse_label_selector
from .store import Event, Obj, Store
from .tables import to_table

DEFAULT_WATCH_TIMEOUT = 1800.0


@dataclass
class Request:
    http: web.Request
    rt: ResourceType
    namespace: str
    name: str
    subresource: str

    @property
    def query(self) -> Any:
        return self.http.query


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(body), status=status, content_type="application/json")


def _strict(req: Request) -> bool:
    return bool(req.query.get("fieldValidation") == "Strict")


def _wants_table(req: Request) -> bool:
    return "as=Table" in req.http.headers.get("Accept", "")


def _get_path(obj: Any, path: str) -> Any:
    cur = obj
    for part in path.strip(".").split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


def _set_path(obj: Obj, path: str, value: Any) -> None:
    parts = path.strip(".").split(".")
    cur = obj
    for part in parts[:-1]:
        cur = cur.setdefault(part, {})
    cur[parts[-1]] = value


class Handlers:
    def __init__(self, store: Store, bookmark_interval: float) -> None:
        self.store = store
        self.bookmark_interval = bookmark_interval
        self.closing = False
        # (namespace, pod, container or None) -> log text; set by the cluster's kubelet.
        self.pod_logs: Any = None

    async def handle(self, req: Request) -> web.StreamResponse:
        m = req.http.method
        sub = req.subresource
        if sub and sub not in req.rt.subresources:
            raise errors.ApiError(
                404, "NotFound", "the server could not find the requested resource"
            )
        if m == "GET" and not req.name:
            if req.query.get("watch") in ("1", "true"):
                return await self.watch(req)
            return self.list(req)
        if m == "GET":
            if sub == "scale":
                return _json(self._scale_of(req, self.store.get(req.rt, req.namespace, req.name)))
            if sub == "log":
                self.store.get(req.rt, req.namespace, req.name)
                if self.pod_logs is None:
                    raise errors.bad_request("no kubelet serves logs in this cluster")
                try:
                    text = self.pod_logs(req.namespace, req.name, req.query.get("container"))
                except KeyError as exc:
                    raise errors.bad_request(f"pod {req.name} has no logs yet") from exc
                return web.Response(text=text, content_type="text/plain")
            obj = self.store.get(req.rt, req.namespace, req.name)
            if _wants_table(req):
                return _json(
                    to_table(req.rt, [obj], None, req.query.get("includeObject", "Metadata"))
                )
            return _json(obj)
        body = await self._body(req)
        if m == "POST" and not req.name and req.rt.group == "authorization.k8s.io":
            review = dict(body or {})
            review.update(apiVersion=req.rt.api_version, kind=req.rt.kind)
            review["status"] = {
                "allowed": True,
                "reason": "the local cluster authorizes everything",
            }
            return _json(review, 201)
        if m == "POST" and not req.name:
            return _json(self.store.create(req.rt, req.namespace or None, body, _strict(req)), 201)
        if m == "POST" and sub == "binding":
            return self.bind(req, body)
        if m == "PUT":
            return _json(self.update(req, body))
        if m == "PATCH":
            return _json(self.patch(req, body))
        if m == "DELETE" and req.name:
            return self.delete(req, body)
        if m == "DELETE":
            return self.delete_collection(req, body)
        raise errors.method_not_allowed(
            "the server does not allow this method on the requested resource"
        )

    async def _body(self, req: Request) -> Any:
        raw = await req.http.read()
        if not raw:
            return None
        if req.http.content_type == "application/apply-patch+yaml":
            return yaml.safe_load(raw)
        if req.http.content_type == protobuf.CONTENT_TYPE:  # client-go typed clients (helm)
            try:
                return protobuf.decode(raw)
            except protobuf.ProtobufUnsupported as exc:
                raise errors.ApiError(415, "UnsupportedMediaType", str(exc)) from None
        return json.loads(raw)

    # --- reads --------------------------------------------------------------------------
    def _selectors(self, req: Request) -> tuple[Any, Any]:
        lsel = req.query.get("labelSelector")
        return (
            parse_label_selector(lsel),
            parse_field_selector(req.query.get("fieldSelector"), req.rt, lsel),
        )

    def list(self, req: Request) -> web.Response:
        labels, fields = self._selectors(req)
        items, rv = self.store.list(req.rt, req.namespace or None, labels, fields)
        if _wants_table(req):
            return _json(
                to_table(req.rt, items, str(rv), req.query.get("includeObject", "Metadata"))
            )
        limit = int(req.query.get("limit", "0") or 0)
        start = int(req.query.get("continue", "0") or 0)
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if limit:
            page = items[start : start + limit]
            if start + limit < len(items):
                meta["continue"] = str(start + limit)
                meta["remainingItemCount"] = len(items) - start - limit
            items = page
        return _json(
            {
                "kind": f"{req.rt.kind}List",
                "apiVersion": req.rt.api_version,
                "metadata": meta,
                "items": items,
            }
        )

    async def watch(self, req: Request) -> web.StreamResponse:
        labels, fields = self._selectors(req)
        rv_param = req.query.get("resourceVersion", "")
        since = None if rv_param in ("", "0") else int(rv_param)
        timeout = float(req.query.get("timeoutSeconds", DEFAULT_WATCH_TIMEOUT))
        bookmarks = req.query.get("allowWatchBookmarks") in ("true", "1")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Event] = asyncio.Queue()

        def push(ev: Event) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, ev)

        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(req.http)
        try:
            cancel = self.store.watch(req.rt, req.namespace or None, since, labels, fields, push)
        except errors.ApiError as err:  # 410: an ERROR event on a 200 stream, like the real server
            await resp.write(
                (json.dumps({"type": "ERROR", "object": err.status()}) + "\n").encode()
            )
            await resp.write_eof()
            return resp
        deadline = time.monotonic() + timeout
        next_bookmark = time.monotonic() + self.bookmark_interval
        try:
            while not self.closing:
                now = time.monotonic()
                if now >= deadline:
                    break
                wait = deadline - now
                if bookmarks:
                    wait = min(wait, max(0.0, next_bookmark - now))
                try:
                    ev = await asyncio.wait_for(queue.get(), timeout=min(wait, 1.0))
                except TimeoutError:
                    if bookmarks and time.monotonic() >= next_bookmark:
                        self.store.bookmark(req.rt, push)
                        next_bookmark = time.monotonic() + self.bookmark_interval
                    if req.http.transport is None or req.http.transport.is_closing():
                        break
                    continue
                if ev.type == "BOOKMARK":
                    if not bookmarks:
                        continue
                    obj: Obj = {
                        "kind": req.rt.kind,
                        "apiVersion": req.rt.api_version,
                        "metadata": {"resourceVersion": str(ev.rv)},
                    }
                else:
                    obj = copy.deepcopy(ev.obj)
                    obj["apiVersion"] = req.rt.api_version
                await resp.write((json.dumps({"type": ev.type, "object": obj}) + "\n").encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            cancel()
        with contextlib.suppress(ConnectionResetError):
            await resp.write_eof()
        return resp

    # --- writes -------------------------------------------------------------------------
    def _scale_of(self, req: Request, obj: Obj) -> Obj:
        spec = req.rt.scale_spec()
        assert spec is not None
        spec_path, status_path, selector_path = spec
        status: dict[str, Any] = {"replicas": _get_path(obj, status_path) or 0}
        if selector_path:
            selector = _get_path(obj, selector_path)
            if isinstance(selector, dict):  # built-ins keep a LabelSelector; Scale wants a string
                selector = ",".join(
                    f"{k}={v}" for k, v in (selector.get("matchLabels") or {}).items()
                )
            if selector:
                status["selector"] = selector
        meta = obj["metadata"]
        return {
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {
                k: meta[k]
                for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                if k in meta
            },
            "spec": {"replicas": _get_path(obj, spec_path) or 0},
            "status": status,
        }

    def _write_scale(self, req: Request, scale: Obj, current: Obj) -> Obj:
        spec = req.rt.scale_spec()
        assert spec is not None
        replicas = (scale.get("spec") or {}).get("replicas")
        if not isinstance(replicas, int) or replicas < 0:
            raise errors.invalid(
                req.rt,
                req.name,
                [
                    (
                        "spec.replicas",
                        f"spec.replicas: Invalid value: {json.dumps(replicas)}: "
                        "must be greater than or equal to 0",
                    )
                ],
            )
        new = copy.deepcopy(current)
        _set_path(new, spec[0], replicas)
        sent_rv = (scale.get("metadata") or {}).get("resourceVersion")
        if sent_rv and sent_rv != current["metadata"]["resourceVersion"]:
            raise errors.conflict(req.rt, req.name)
        obj = self.store.update(req.rt, req.namespace or None, req.name, new, check_rv=False)
        return self._scale_of(req, obj)

    def update(self, req: Request, body: Any) -> Obj:
        if not isinstance(body, dict):
            raise errors.bad_request("the request body must be an object")
        with self.store.lock:
            if req.subresource == "scale":
                current = self.store.get(req.rt, req.namespace, req.name)
                return self._write_scale(req, body, current)
            return self.store.update(
                req.rt,
                req.namespace or None,
                req.name,
                body,
                req.subresource or None,
                strict=_strict(req),
            )

    def patch(self, req: Request, body: Any) -> Obj:
        ctype = req.http.content_type
        with self.store.lock:
            try:
                current = self.store.get(req.rt, req.namespace, req.name)
            except errors.ApiError:
                if ctype == "application/apply-patch+yaml" and not req.subresource:
                    return self.store.create(req.rt, req.namespace or None, body)
                raise
            target = self._scale_of(req, current) if req.subresource == "scale" else current
            if ctype == "application/json-patch+json":
                patched = json_patch(target, body)
            elif ctype in ("application/merge-patch+json", "application/apply-patch+yaml"):
                if not isinstance(body, dict):
                    raise errors.bad_request(
                        f"error decoding patch: a {ctype} body must be a JSON object, got "
                        f"{type(body).__name__} (a list of operations needs "
                        "application/json-patch+json)"
                    )
                patched = merge_patch(target, body)
            elif ctype == "application/strategic-merge-patch+json":
                if req.rt.is_custom:
                    raise errors.unsupported_media_type(ctype)
                patched = strategic_merge(target, body)
            else:
                raise errors.unsupported_media_type(ctype)
            if not isinstance(patched, dict):
                raise errors.bad_request("the patched object is not a JSON object")
            if req.subresource == "scale":
                return self._write_scale(req, patched, current)
            return self.store.update(
                req.rt,
                req.namespace or None,
                req.name,
                patched,
                req.subresource or None,
                strict=_strict(req),
            )

    def _delete_opts(self, req: Request, body: Any) -> dict[str, Any]:
        opts = dict(body) if isinstance(body, dict) else {}
        if "gracePeriodSeconds" in req.query:
            opts["gracePeriodSeconds"] = int(req.query["gracePeriodSeconds"])
        if "propagationPolicy" in req.query:
            opts["propagationPolicy"] = req.query["propagationPolicy"]
        if opts.get("orphanDependents") is True:
            opts.setdefault("propagationPolicy", "Orphan")
        return opts

    def delete(self, req: Request, body: Any) -> web.Response:
        opts = self._delete_opts(req, body)
        pre = opts.get("preconditions") or {}
        obj = self.store.delete(
            req.rt,
            req.namespace or None,
            req.name,
            grace=opts.get("gracePeriodSeconds"),
            propagation=opts.get("propagationPolicy"),
            precondition_uid=pre.get("uid"),
            precondition_rv=pre.get("resourceVersion"),
        )
        status = (
            202
            if obj["metadata"].get("deletionTimestamp")
            and self.store.raw(req.rt, req.namespace or None, req.name) is not None
            else 200
        )
        return _json(obj, status)

    def delete_collection(self, req: Request, body: Any) -> web.Response:
        opts = self._delete_opts(req, body)
        labels, fields = self._selectors(req)
        items, _ = self.store.list(req.rt, req.namespace or None, labels, fields)
        deleted = []
        for obj in items:
            meta = obj["metadata"]
            try:
                deleted.append(
                    self.store.delete(
                        req.rt,
                        meta.get("namespace"),
                        meta["name"],
                        grace=opts.get("gracePeriodSeconds"),
                        propagation=opts.get("propagationPolicy"),
                    )
                )
            except errors.ApiError:
                continue
        return _json(
            {
                "kind": f"{req.rt.kind}List",
                "apiVersion": req.rt.api_version,
                "metadata": {},
                "items": deleted,
            }
        )

    def bind(self, req: Request, body: Any) -> web.Response:
        node = ((body or {}).get("target") or {}).get("name")
        if not node:
            raise errors.bad_request("binding target.name is required")

        def assign(pod: Obj) -> None:
            if pod.get("spec", {}).get("nodeName"):
                raise errors.ApiError(
                    409,
                    "Conflict",
                    f'pod {req.name} is already assigned to node "{pod["spec"]["nodeName"]}"',
                )
            pod.setdefault("spec", {})["nodeName"] = node

        if self.store.mutate(req.rt, req.namespace, req.name, assign) is None:
            raise errors.not_found(req.rt, req.name)
        return _json(
            {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "code": 201,
            },
            201,
        )
