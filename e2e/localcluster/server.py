"""The emulated Kubernetes API server: aiohttp app, URL parsing, discovery, OpenAPI, audit.

CRUD and watch handlers live in handlers.py; storage semantics in store.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from . import errors, openapi
from .audit import AuditLog, AuditRecord, now
from .controllers import Controllers
from .handlers import Handlers, Request
from .resources import ResourceType
from .store import Store, now_iso

log = logging.getLogger("e2e.localcluster")

DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(body), status=status, content_type="application/json")


def error_response(err: errors.ApiError) -> web.Response:
    return json_response(err.status(), err.code)


@dataclass
class Parsed:
    group: str
    version: str
    namespace: str
    plural: str
    name: str
    subresource: str


def parse_resource_path(path: str) -> Parsed | None:
    segs = [s for s in path.split("/") if s]
    if len(segs) >= 2 and segs[0] == "api":
        group, version, rest = "", segs[1], segs[2:]
    elif len(segs) >= 3 and segs[0] == "apis":
        group, version, rest = segs[1], segs[2], segs[3:]
    else:
        return None
    if not rest:
        return None
    ns = ""
    if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] not in ("status", "finalize"):
        ns, rest = rest[1], rest[2:]
    plural = rest[0]
    name = rest[1] if len(rest) > 1 else ""
    sub = rest[2] if len(rest) > 2 else ""
    if len(rest) > 3:
        return None
    return Parsed(group, version, ns, plural, name, sub)


class ApiServer:
    """Runs on its own thread and event loop; ``start()`` returns once it listens."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        store: Store | None = None,
        bookmark_interval: float = 5.0,
    ) -> None:
        self.host = host
        self.port = port
        self.store = store or Store()
        self.controllers = Controllers(self.store)
        self.audit = AuditLog()
        self.handlers = Handlers(self.store, bookmark_interval)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None
        ns_rt = self.store.registry.get("", "v1", "namespaces")
        assert ns_rt is not None
        for ns in DEFAULT_NAMESPACES:
            self.store.create(ns_rt, None, {"metadata": {"name": ns}})

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # --- lifecycle ----------------------------------------------------------------------
    def start(self) -> ApiServer:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._serve(ready))
            except BaseException as exc:  # surfaced to start()
                failure.append(exc)
                ready.set()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="localcluster-apiserver", daemon=True)
        self._thread.start()
        ready.wait(30)
        if failure:
            raise RuntimeError(f"the local API server failed to start: {failure[0]}") from failure[
                0
            ]
        return self

    async def _serve(self, ready: threading.Event) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = getattr(site, "_server", None)
        if self.port == 0 and server is not None:
            self.port = server.sockets[0].getsockname()[1]
        self._stopping = asyncio.Event()
        ready.set()
        await self._stopping.wait()
        self.handlers.closing = True
        await self._runner.cleanup()

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(10)
        self._thread = None

    # --- dispatch -----------------------------------------------------------------------
    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/") or "/"
        ua = request.headers.get("User-Agent", "")
        parsed = parse_resource_path(path)
        verb = request.method.lower()
        code = 500
        try:
            if parsed is None:
                resp: web.StreamResponse = self._non_resource(
                    path, request.headers.get("Accept", "")
                )
                code = resp.status
                return resp
            rt = self.store.registry.get(parsed.group, parsed.version, parsed.plural)
            verb = _rbac_verb(request, parsed)
            if rt is None:
                raise errors.ApiError(
                    404, "NotFound", "the server could not find the requested resource"
                )
            req = Request(request, rt, parsed.namespace, parsed.name, parsed.subresource)
            if verb == "watch":  # streams last long: record them when they start
                self._audit(verb, parsed, ua, 200, path)
                verb = ""
            resp = await self.handlers.handle(req)
            code = resp.status
            return resp
        except errors.ApiError as err:
            code = err.code
            return error_response(err)
        except json.JSONDecodeError as exc:
            code = 400
            return error_response(errors.bad_request(f"the request body is not valid JSON: {exc}"))
        except Exception as exc:  # a bug in the emulator: say so loudly, as a 500 Status
            log.exception("local API server: internal error on %s %s", request.method, path)
            code = 500
            return error_response(errors.ApiError(500, "InternalError", f"emulator bug: {exc!r}"))
        finally:
            if verb:
                self._audit(verb, parsed, ua, code, path)

    def _audit(self, verb: str, parsed: Parsed | None, ua: str, code: int, path: str) -> None:
        self.audit.add(
            AuditRecord(
                verb=verb,
                group=parsed.group if parsed else "",
                version=parsed.version if parsed else "",
                resource=parsed.plural if parsed else "",
                subresource=parsed.subresource if parsed else "",
                namespace=parsed.namespace if parsed else "",
                name=parsed.name if parsed else "",
                user_agent=ua,
                code=code,
                path=path,
                time=now(),
            )
        )

    def _non_resource(self, path: str, accept: str = "") -> web.Response:
        reg = self.store.registry
        if path in ("/healthz", "/readyz", "/livez"):
            return web.Response(text="ok")
        if path == "/version":
            return json_response(
                {
                    "major": "1",
                    "minor": "32",
                    "gitVersion": "v1.32.0-rpcjob-local",
                    "gitCommit": "local",
                    "gitTreeState": "clean",
                    "buildDate": now_iso(),
                    "goVersion": "go1.23",
                    "compiler": "gc",
                    "platform": "linux/amd64",
                }
            )
        if path == "/api":
            return json_response(
                {
                    "kind": "APIVersions",
                    "versions": ["v1"],
                    "serverAddressByClientCIDRs": [
                        {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{self.host}:{self.port}"}
                    ],
                }
            )
        if path == "/apis":
            return json_response(
                {
                    "kind": "APIGroupList",
                    "apiVersion": "v1",
                    "groups": [_group(g, vs) for g, vs in sorted(reg.groups().items())],
                }
            )
        if path == "/api/v1":
            return json_response(_resource_list("v1", reg.in_group_version("", "v1")))
        segs = [s for s in path.split("/") if s]
        if len(segs) == 2 and segs[0] == "apis":
            versions = reg.groups().get(segs[1])
            if versions:
                body = _group(segs[1], versions)
                body.update(kind="APIGroup", apiVersion="v1")
                return json_response(body)
        if len(segs) == 3 and segs[0] == "apis":
            rts = reg.in_group_version(segs[1], segs[2])
            if rts:
                return json_response(_resource_list(f"{segs[1]}/{segs[2]}", rts))
        if path == "/openapi/v3":
            return json_response(openapi.v3_index(reg))
        if path.startswith("/openapi/v3/"):
            doc = openapi.group_version_doc(reg, path[len("/openapi/v3/") :])
            if doc is not None:
                return json_response(doc)
        if path == "/openapi/v2":
            if any(t in accept for t in openapi.V2_PROTOBUF_ACCEPT):  # kubectl validation
                return web.Response(body=openapi.v2_protobuf(), content_type=openapi.V2_PROTOBUF)
            return json_response(openapi.v2_doc(reg))
        raise errors.ApiError(404, "NotFound", "the server could not find the requested resource")


def _rbac_verb(request: web.Request, parsed: Parsed) -> str:
    m = request.method
    if m == "GET":
        if request.query.get("watch") in ("1", "true"):
            return "watch"
        return "get" if parsed.name else "list"
    if m == "POST":
        return "create"
    if m == "PUT":
        return "update"
    if m == "PATCH":
        return "patch"
    if m == "DELETE":
        return "delete" if parsed.name else "deletecollection"
    return m.lower()


def _group(name: str, versions: list[str]) -> dict[str, Any]:
    vs = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
    return {"name": name, "versions": vs, "preferredVersion": vs[0]}


def _resource_list(gv: str, rts: list[ResourceType]) -> dict[str, Any]:
    resources: list[dict[str, Any]] = []
    for rt in sorted(rts, key=lambda r: r.plural):
        resources.extend(rt.discovery_entries())
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": resources,
    }
