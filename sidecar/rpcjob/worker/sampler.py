"""A frame sampler that names the remote functions this worker serves and the ``rpc_sync``
calls it waits on, while a profile runs (docs/observability.md#profile).

torch's server-process profiler records the ops each request ran but not the user function
that ran them, and torch calls its cached ``_run_function`` from C++ (it cannot be wrapped
after ``init_rpc``). Sampling every thread's Python stack finds the ``_run_function`` frames
(callee side: ``python_udf.func`` names the function) and the ``rpc_sync`` frames (caller
side: ``to`` and ``func``). A span is one frame object seen in consecutive samples; its
times are accurate to about one sample interval. Runs only between profile start and stop.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

_CALLEE = ("_run_function", os.path.join("rpc", "internal.py"))
_CALLER = ("rpc_sync", os.path.join("rpc", "api.py"))
MAX_DEPTH = 64
MAX_SPANS = 50000


def qualname(func: Any) -> str:
    mod = getattr(func, "__module__", None) or ""
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)
    return f"{mod}.{name}" if mod else str(name)


def peer_name(to: Any) -> str:
    return str(getattr(to, "name", None) or to)


class FrameSampler:
    def __init__(self, interval: float) -> None:
        self.interval = max(0.0005, interval)
        self.open: dict[tuple[int, int], dict[str, Any]] = {}
        self.done: list[dict[str, Any]] = []
        self.frames: dict[tuple[int, int], Any] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rpcjob-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> list[dict[str, Any]]:
        self._stop.set()
        self._thread.join()
        self._close(set(), time.time())
        return sorted(self.done, key=lambda s: s["start_us"])

    def _run(self) -> None:
        me = threading.get_ident()
        while not self._stop.wait(self.interval):  # the sampling period itself
            self.sample(sys._current_frames(), time.time(), skip=me)

    def sample(self, frames: dict[int, Any], now: float, skip: int = 0) -> None:
        seen: set[tuple[int, int]] = set()
        for tid, frame in frames.items():
            if tid == skip:
                continue
            f, depth = frame, 0
            while f is not None and depth < MAX_DEPTH:
                code = f.f_code
                for kind, (name, path) in (("callee", _CALLEE), ("caller", _CALLER)):
                    if code.co_name == name and code.co_filename.endswith(path):
                        key = (tid, id(f))
                        seen.add(key)
                        if key not in self.open:
                            self.open[key] = self._span(kind, f, tid, now)
                            # Holding the frame keeps its address from being reused by
                            # the next call (back-to-back calls would merge into one span).
                            self.frames[key] = f
                        self.open[key]["last"] = now
                f, depth = f.f_back, depth + 1
        self._close(seen, now)

    def _span(self, kind: str, f: Any, tid: int, now: float) -> dict[str, Any]:
        loc = f.f_locals
        if kind == "callee":
            udf = loc.get("python_udf")
            name, peer = qualname(getattr(udf, "func", udf)), ""
        else:
            name, peer = qualname(loc.get("func")), peer_name(loc.get("to"))
        return {"kind": kind, "name": name, "peer": peer, "thread": tid, "first": now}

    def _close(self, seen: set[tuple[int, int]], now: float) -> None:
        half = self.interval / 2
        for key in [k for k in self.open if k not in seen]:
            s = self.open.pop(key)
            self.frames.pop(key, None)
            if len(self.done) >= MAX_SPANS:
                continue
            first, last = s.pop("first"), s.pop("last")
            s["start_us"] = (first - half) * 1e6
            s["end_us"] = (last + half) * 1e6
            self.done.append(s)
