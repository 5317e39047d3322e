"""The worker's answers to its sidecar's INTROSPECT requests (docs/observability.md).

Ops: ``snapshot`` (agent metrics and debug info, the agent's worker infos and device maps,
outgoing call counters), ``profile_start`` / ``profile_stop`` (torch's server-process global
profiler plus a frame sampler that names the remote functions being served and the
``rpc_sync`` calls being waited on). Nothing here runs until the sidecar asks: while no
profile is running the only cost is the outgoing call counter (one dict increment per
``rpc_sync``/``rpc_async``).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any

from rpcjob.worker.sampler import FrameSampler, peer_name

log = logging.getLogger("rpcjob.worker")

MAX_OPS = 20000  # torch op events per profile (the reply crosses a 4 MiB gRPC message)
MAX_PAYLOAD = 3 * 1024 * 1024

Reply = Callable[[int, bytes], None]  # (event id, zlib(JSON))


def encode(body: dict[str, Any]) -> bytes:
    return zlib.compress(json.dumps(body, default=str).encode())


def _agent() -> Any:
    from torch.distributed.rpc import api

    return api._get_current_rpc_agent()  # type: ignore[attr-defined]


def _number(v: Any) -> Any:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    return int(f) if f.is_integer() else f


class CallCounter:
    """Counts outgoing ``rpc_sync``/``rpc_async`` calls per destination (torch's agent exposes
    only gauges, so ``rpcjob top`` derives RPCs/s from these: out from mine, in from the peers'
    counts towards me). Installed once per process by wrapping ``api._invoke_rpc`` (looked up
    at call time by ``rpc_sync``/``rpc_async``)."""

    def __init__(self) -> None:
        self.out: dict[str, int] = {}
        self.installed = False

    def install(self) -> None:
        from torch.distributed.rpc import api

        if self.installed:
            return
        inner = api._invoke_rpc
        counts = self.out

        def _invoke_rpc(to: Any, *args: Any, **kwargs: Any) -> Any:
            key = peer_name(to)
            counts[key] = counts.get(key, 0) + 1  # GIL-atomic enough for a rate
            return inner(to, *args, **kwargs)

        api._invoke_rpc = _invoke_rpc
        self.installed = True


calls = CallCounter()


def snapshot(full: bool) -> dict[str, Any]:
    agent = _agent()
    me = agent.get_worker_info()
    out: dict[str, Any] = {
        "worker": me.name,
        "rank": int(me.id),
        "pid": os.getpid(),
        "time": time.time(),
        "metrics": {str(k): _number(v) for k, v in agent.get_metrics().items()},
        "calls_out": dict(calls.out),
        "profiling": _profile.running(),
    }
    infos = sorted(agent.get_worker_infos(), key=lambda w: int(w.id))
    out["worker_infos"] = [{"name": w.name, "rank": int(w.id)} for w in infos]
    if full:
        out["debug_info"] = {str(k): _number(v) for k, v in agent.get_debug_info().items()}
        opts = agent._get_backend_options()
        out["devices"] = [str(d) for d in getattr(opts, "devices", [])]
        out["declared_device_maps"] = {
            peer: {str(a): str(b) for a, b in m.items()}
            for peer, m in (getattr(opts, "device_maps", {}) or {}).items()
        }
        out["device_maps"] = {
            w.name: {str(a): str(b) for a, b in agent._get_device_map(w).items()}
            for w in infos
            if w.name != me.name
        }
    return out


class Profile:
    """One profiling window at a time: torch's server-process profiler and the sampler."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sampler: FrameSampler | None = None
        self.started = 0.0
        self.timer: threading.Timer | None = None

    def running(self) -> bool:
        return self.sampler is not None

    def start(self, interval_ms: float, max_seconds: float) -> dict[str, Any]:
        import torch
        from torch.distributed import rpc

        with self.lock:
            if self.sampler is not None:
                return {"error": "a profile is already running in this worker"}
            cfg = torch.autograd.ProfilerConfig(  # type: ignore[attr-defined]
                torch.autograd.ProfilerState.CPU,  # type: ignore[attr-defined]
                False,
                False,
                False,
                False,
                False,
                torch.profiler._ExperimentalConfig(),  # type: ignore[attr-defined]
            )
            rpc._enable_server_process_global_profiler(cfg)  # type: ignore[attr-defined]
            self.sampler = FrameSampler(interval_ms / 1000.0)
            self.sampler.start()
            self.started = time.time()
            # A sidecar that dies mid-profile must not leave the profiler on for good.
            self.timer = threading.Timer(max_seconds, self.stop)
            self.timer.daemon = True
            self.timer.start()
        return {"started": self.started}

    def stop(self) -> dict[str, Any]:
        from torch.distributed import rpc

        with self.lock:
            sampler, self.sampler = self.sampler, None
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            if sampler is None:
                return {"error": "no profile is running in this worker (it may have timed out)"}
            spans = sampler.stop()
            raw = rpc._disable_server_process_global_profiler()  # type: ignore[attr-defined]
        requests, ops, truncated = torch_events(raw)
        return {
            "start": self.started,
            "end": time.time(),
            "spans": spans,
            "requests": requests,
            "ops": ops,
            "truncated": truncated,
            "sample_interval_ms": sampler.interval * 1000.0,
        }


_profile = Profile()


def torch_events(raw: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]], bool]:
    """Torch's per-request record lists → request spans and op spans (epoch microseconds:
    each record's ``start_us()`` is wall-clock time, measured on torch 2.13). Each list is
    one request callback: it starts at its ``__start_profile`` mark."""
    requests: list[dict[str, Any]] = []
    ops: list[dict[str, Any]] = []
    truncated = False
    for request in raw:  # one request callback: a list of per-thread record lists
        begin: float | None = None
        last = 0.0
        n = 0
        tid = -1
        for records in request:
            opened: dict[tuple[int, int], Any] = {}
            for rec in records:
                t = float(rec.start_us())
                last = max(last, t)
                kind, name = rec.kind(), rec.name()
                if name == "__start_profile":
                    begin = t if begin is None else min(begin, t)
                    tid = int(rec.thread_id())
                elif kind == "push":
                    opened[(rec.handle(), rec.node_id())] = rec
                elif kind == "pop":
                    start = opened.pop((rec.handle(), rec.node_id()), None)
                    if start is None:
                        continue
                    n += 1
                    if len(ops) >= MAX_OPS:
                        truncated = True
                        continue
                    ops.append(
                        {
                            "name": start.name(),
                            "thread": int(start.thread_id()),
                            "start_us": float(start.start_us()),
                            "end_us": t,
                        }
                    )
        if begin is not None:
            requests.append({"thread": tid, "start_us": begin, "end_us": last, "ops": n})
    return requests, ops, truncated


def handle(request: str) -> dict[str, Any]:
    try:
        req = json.loads(request or "{}")
        op = req.get("op")
        if op in ("snapshot", "top"):
            return snapshot(full=op == "snapshot")
        if op == "profile_start":
            return _profile.start(
                float(req.get("interval_ms", 2.0)), float(req.get("max_seconds", 330.0))
            )
        if op == "profile_stop":
            return _profile.stop()
        return {"error": f"unknown introspection op {op!r}"}
    except Exception as err:  # an answer, never a dead worker thread
        log.exception("rpcjob: introspection request failed")
        return {"error": f"{type(err).__name__}: {err}"}


def answer(event_id: int, request: str, reply: Reply) -> None:
    """Answer on a thread of its own: the events thread must keep applying membership."""

    def run() -> None:
        body = encode(handle(request))
        if len(body) > MAX_PAYLOAD:
            body = encode({"error": f"answer too large ({len(body)} bytes compressed)"})
        reply(event_id, body)

    threading.Thread(target=run, name="rpcjob-introspect", daemon=True).start()
