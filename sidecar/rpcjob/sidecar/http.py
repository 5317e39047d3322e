"""``/healthz``, ``/readyz`` and Prometheus ``/metrics`` of the sidecar (a small threaded
http.server over prometheus_client's own registry: nothing global, one registry per daemon)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Extra endpoints: (method, query) -> (status, body, content type); see introspect.py.
Route = Callable[[str, Mapping[str, list[str]]], tuple[int, bytes, str]]


class Metrics:
    def __init__(self) -> None:
        # The daemon adds its /debug/rpc/* routes here (this object is what main.py hands to
        # both the daemon and the HTTP server).
        self.routes: dict[str, Route] = {}
        self.registry = r = CollectorRegistry()
        self.members = Gauge("rpcjob_members", "Live members of the job seen by this sidecar",
                             registry=r)  # fmt: skip
        self.joins = Counter("rpcjob_member_joins", "Members seen joining", registry=r)
        self.leaves = Counter("rpcjob_member_leaves", "Members seen leaving gracefully",
                              registry=r)  # fmt: skip
        self.evictions = Counter(
            "rpcjob_evictions",
            "Crashed incarnations evicted by this sidecar as cleaner",
            registry=r,
        )
        self.evictions_unacked = Counter(
            "rpcjob_evictions_unacked",
            "Evictions released at the ack deadline without every survivor's ack",
            registry=r,
        )
        self.eviction_latency = Histogram(
            "rpcjob_eviction_latency_seconds",
            "From publishing an eviction to every survivor's ack (cleaner side)",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
            registry=r,
        )
        self.incarnations = Counter("rpcjob_incarnations", "Worker incarnations (Hello calls)",
                                    registry=r)  # fmt: skip
        self.rank = Gauge("rpcjob_rank", "Torch rank of the current incarnation (-1: none)",
                          registry=r)  # fmt: skip
        self.rank.set(-1)
        self.leader = Gauge("rpcjob_cleaner_leader", "1 while this sidecar is the elected cleaner",
                            registry=r)  # fmt: skip
        self.worker_joined = Gauge("rpcjob_worker_joined", "1 while the worker is in the group",
                                   registry=r)  # fmt: skip
        self.agent = Gauge("rpcjob_agent_metric", "RPC agent metrics reported by the worker",
                           ["name"], registry=r)  # fmt: skip


Check = Callable[[], tuple[bool, str]]


class HealthServer:
    """Serves the endpoints on ``host:port`` from a daemon thread."""

    def __init__(self, host: str, port: int, metrics: Metrics, healthy: Check, ready: Check):
        registry = metrics.registry
        routes = metrics.routes

        class Handler(BaseHTTPRequestHandler):
            def _route(self, method: str) -> bool:
                path, _, query = self.path.partition("?")
                route = routes.get(path)
                if route is None:
                    return False
                self._send(*route(method, parse_qs(query, keep_blank_values=True)))
                return True

            def do_POST(self) -> None:
                if not self._route("POST"):
                    self._send(404, b"not found\n", "text/plain")

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if self._route("GET"):
                    return
                if path == "/metrics":
                    self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/readyz"):
                    ok, why = (healthy if path == "/healthz" else ready)()
                    self._send(200 if ok else 503, (why + "\n").encode(), "text/plain")
                else:
                    self._send(404, b"not found: try /healthz, /readyz or /metrics\n",
                               "text/plain")  # fmt: skip

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # probes every few seconds would drown the log

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True,
                                        name="rpcjob-http")  # fmt: skip

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
