"""The sidecar's ``/debug/rpc/*`` endpoints (docs/contract.md §5, docs/observability.md).

Each request becomes an INTROSPECT event on the worker's Session stream; the worker answers
with an INTROSPECTION report (zlib JSON) naming the event id. The sidecar adds what it knows
itself: the pod, node, rank, incarnation, the worker's state and the membership it reads from
etcd. Like ``/metrics`` these endpoints have no authentication: they listen on the pod IP
only, and in a cluster users reach them through the API server's pod proxy (RBAC
``pods/proxy``; the chart's ``rpcjob-debugger`` ClusterRole).
"""

from __future__ import annotations

import json
import threading
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .http import Route
from .incarnation import Event, Incarnation, IncarnationManager, Report

ASK_TIMEOUT_S = 10.0
MAX_PROFILE_S = 300.0


class Unavailable(RuntimeError):
    """The worker cannot answer (not joined, gone, or an old worker that ignores the ask)."""


@dataclass
class _Waiter:
    """One ask's answer, set by on_reply."""

    done: threading.Event = field(default_factory=threading.Event)
    body: dict[str, Any] = field(default_factory=dict)


class Introspection:
    def __init__(self, incarnations: IncarnationManager) -> None:
        self.im = incarnations
        self.lock = threading.Lock()
        self.waiters: dict[int, _Waiter] = {}
        self.profiling = threading.Lock()

    # --- the worker's answers -------------------------------------------------------------
    def on_reply(self, r: Any) -> None:
        with self.lock:
            w = self.waiters.pop(int(r.event_id), None)
        if w is None:
            return  # the asker gave up
        try:
            w.body = json.loads(zlib.decompress(r.payload))
        except (zlib.error, ValueError) as err:
            w.body = {"error": f"unreadable answer from the worker: {err}"}
        w.done.set()

    def ask(self, op: dict[str, Any], timeout: float = ASK_TIMEOUT_S) -> dict[str, Any]:
        inc = self._joined()
        w = _Waiter()
        with self.im.cond:  # the id is assigned under the lock send takes
            eid = self.im.send(inc, Event(kind=Event.INTROSPECT, request=json.dumps(op)))
            with self.lock:
                self.waiters[eid] = w
        deadline = time.monotonic() + timeout
        # Short waits: the incarnation may end meanwhile (its worker died).
        while not w.done.wait(min(0.1, max(0.0, deadline - time.monotonic()))):
            if inc.ended.is_set() or time.monotonic() >= deadline:
                with self.lock:
                    self.waiters.pop(eid, None)
                why = (
                    "the worker's incarnation ended (it died or left)"
                    if inc.ended.is_set()
                    else f"the worker did not answer within {timeout:g}s (an rpcjob older "
                    "than the sidecar ignores debug requests)"
                )
                raise Unavailable(why)
        return w.body

    def _joined(self) -> Incarnation:
        inc = self.im.inc
        if inc is None or inc.ended.is_set() or not inc.session_open:
            raise Unavailable(f"{self.im.me} has no running worker")
        if inc.state not in (Report.JOINED, Report.METRICS, Report.EVICTED):
            raise Unavailable(f"{self.im.me} has not joined (state {self._state(inc)})")
        return inc

    def _state(self, inc: Incarnation | None) -> str:
        if inc is None or inc.ended.is_set():
            return "NO_WORKER"
        # the worker's last state report (acks, metrics and answers do not change it)
        return Report.State.Name(inc.state) if inc.state else "STARTING"

    def member(self) -> dict[str, Any]:
        cfg, inc = self.im.cfg, self.im.inc
        with self.im.cond:
            ranks = {n: r.rank for n, r in self.im.group.members.items()}
        return {
            "name": self.im.me,
            "pod": cfg.pod_name,
            "node": cfg.node_name,
            "ip": cfg.pod_ip,
            "rank": inc.rank if inc is not None else -1,
            "incarnation": inc.revision if inc is not None else 0,
            "devices": list(inc.plan.devices) if inc is not None else [],
            "state": self._state(inc),
            "etcd_members": sorted(ranks),
            # name -> rank: what `rpcjob debug` checks the agents against in a cluster
            "etcd_ranks": ranks,
        }

    # --- HTTP ------------------------------------------------------------------------------
    def routes(self) -> dict[str, Route]:
        return {
            "/debug/rpc/top": lambda m, q: self._snapshot(m, "top"),
            "/debug/rpc/info": lambda m, q: self._snapshot(m, "snapshot"),
            "/debug/rpc/profile": self._profile,
        }

    def _snapshot(self, method: str, op: str) -> tuple[int, bytes, str]:
        if method != "GET":
            return _error(405, "use GET")
        body: dict[str, Any] = {"member": self.member()}
        try:
            body["worker"] = self.ask({"op": op})
        except Unavailable as err:
            body["error"] = str(err)
            return _json(503, body)
        return _json(200, body)

    def _profile(self, method: str, query: Mapping[str, list[str]]) -> tuple[int, bytes, str]:
        if method != "POST":
            return _error(405, "use POST /debug/rpc/profile?seconds=N")
        try:
            seconds = float(query.get("seconds", ["5"])[0])
            interval = float(query.get("interval_ms", ["2"])[0])
        except ValueError:
            return _error(
                400, "seconds and interval_ms must be numbers, e.g. ?seconds=5&interval_ms=2"
            )
        if not 0 < seconds <= MAX_PROFILE_S or not 0.5 <= interval <= 1000:
            return _error(
                400, f"seconds must be in (0, {MAX_PROFILE_S:g}] and interval_ms in [0.5, 1000]"
            )
        if not self.profiling.acquire(blocking=False):
            return _error(409, f"a profile of {self.im.me} is already running")
        try:
            return self._run_profile(seconds, interval)
        finally:
            self.profiling.release()

    def _run_profile(self, seconds: float, interval: float) -> tuple[int, bytes, str]:
        body: dict[str, Any] = {"member": self.member(), "complete": False}
        try:
            started = self.ask(
                {
                    "op": "profile_start",
                    "interval_ms": interval,
                    "max_seconds": seconds + 2 * ASK_TIMEOUT_S,
                }
            )
            if "error" in started:
                body["error"] = started["error"]
                return _json(409, body)
            inc = self._joined()
            t0 = time.monotonic()
            if inc.ended.wait(seconds):  # the profiling window; ends early if the worker dies
                raise Unavailable(
                    "the worker's incarnation ended (it died or left) "
                    f"{time.monotonic() - t0:.1f}s into the {seconds:g}s window"
                )
            body["profile"] = self.ask({"op": "profile_stop"})
            body["complete"] = "error" not in body["profile"]
        except Unavailable as err:
            body["error"] = f"profile incomplete: {err}"
            body["member"] = self.member()
            return _json(503, body)
        return _json(200 if body["complete"] else 500, body)


def _json(code: int, body: dict[str, Any]) -> tuple[int, bytes, str]:
    return code, json.dumps(body).encode(), "application/json"


def _error(code: int, message: str) -> tuple[int, bytes, str]:
    return _json(code, {"error": message})
