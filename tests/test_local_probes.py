"""The `rpcjob run` kubelet's probes say why they failed (its liveness warning quotes it)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rpcjob_operator.localexec.ports import release_port, reserve_port
from rpcjob_operator.localexec.probes import ProbeState, run_probe


class _Handler(BaseHTTPRequestHandler):
    release = threading.Event()

    def do_GET(self) -> None:
        if self.path == "/slow":
            self.release.wait(30)  # answers only after the test is done with it
        code = 503 if self.path == "/down" else 200
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[int]:
    _Handler.release = threading.Event()
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield int(srv.server_address[1])
    finally:
        _Handler.release.set()
        srv.shutdown()
        srv.server_close()


@pytest.mark.parametrize(
    ("path", "passed", "why"),
    [
        ("/ok", True, ""),
        ("/down", False, "HTTP 503 Service Unavailable"),
        ("/slow", False, "timed out after 0.5s"),
    ],
)
def test_http_probe_result_and_reason(server: int, path: str, passed: bool, why: str) -> None:
    probe = {"httpGet": {"path": path, "port": server}, "timeoutSeconds": 0.5}
    ok, reason = run_probe(probe, {"name": "c"}, "127.0.0.1")
    assert ok is passed
    if passed:
        assert reason.endswith("HTTP 200")
    else:
        assert reason == why


def test_refused_and_exec_reasons() -> None:
    port = reserve_port()  # ours, and nothing listens on it
    try:
        ok, why = run_probe({"tcpSocket": {"port": port}}, {"name": "c"}, "127.0.0.1")
    finally:
        release_port(port)
    assert not ok and "refused" in why.lower()
    ok, why = run_probe({"exec": {"command": ["false"]}}, {"name": "c"}, "127.0.0.1")
    assert (ok, why) == (False, "exec ['false']: exit 1")


def test_liveness_fails_after_threshold_and_keeps_the_last_error() -> None:
    ps = ProbeState({"failureThreshold": 2, "periodSeconds": 10})
    ps.record((False, "timed out after 5s"), 0.0)
    assert not ps.failed and ps.next_at == 10.0
    ps.record((True, ""), 10.0)
    ps.record((False, "HTTP 503 Service Unavailable"), 20.0)
    assert not ps.failed  # a success in between resets the count
    ps.record((False, "timed out after 5s"), 30.0)
    assert ps.failed and ps.last_error == "timed out after 5s"
