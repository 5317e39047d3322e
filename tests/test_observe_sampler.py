"""The worker's frame sampler (rpcjob.worker.sampler) on real threads: it names the function a
server thread runs inside ``rpc/internal.py:_run_function`` and the ``rpc/api.py:rpc_sync``
a caller waits in, and keeps back-to-back calls apart. Stand-in modules with torch's file
layout, so no torch process is needed."""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

from etcd_waits import wait_until

from rpcjob.worker.sampler import FrameSampler

INTERNAL = "def _run_function(python_udf):\n    return python_udf.func(*python_udf.args)\n"
API = "def rpc_sync(to, func, args=None):\n    return args[0].wait(30)\n"


def _module(root: Path, rel: str, text: str) -> ModuleType:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(rel.replace("/", "_")[:-3], path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def slow_udf(gate: threading.Event) -> bool:
    return gate.wait(30)


def test_sampler_names_callee_and_caller_spans(tmp_path: Path) -> None:
    internal = _module(tmp_path, "rpc/internal.py", INTERNAL)
    api = _module(tmp_path, "rpc/api.py", API)
    sampler = FrameSampler(0.002)
    sampler.start()
    gates = [threading.Event() for _ in range(3)]

    def server() -> None:  # two calls back to back on one thread
        for gate in gates[:2]:
            internal._run_function(SimpleNamespace(func=slow_udf, args=(gate,)))

    def caller() -> None:
        api.rpc_sync(SimpleNamespace(name="server_0"), slow_udf, args=(gates[2],))

    threads = [threading.Thread(target=server), threading.Thread(target=caller)]
    for t in threads:
        t.start()

    def kinds() -> list[str]:
        return sorted(s["kind"] for s in list(sampler.open.values()))

    wait_until(lambda: kinds() == ["callee", "caller"], 10, "both spans to be sampled")
    gates[0].set()  # the next call starts on the same thread at once
    wait_until(lambda: len([s for s in sampler.done if s["kind"] == "callee"]) == 1 and
               "callee" in kinds(), 10, "the second call to be sampled")  # fmt: skip
    gates[1].set()
    gates[2].set()
    for t in threads:
        t.join(10)
    spans: list[dict[str, Any]] = sampler.stop()
    callee = [s for s in spans if s["kind"] == "callee"]
    caller_spans = [s for s in spans if s["kind"] == "caller"]
    assert len(callee) == 2, spans  # not merged into one span
    assert {s["name"] for s in callee + caller_spans} == {f"{__name__}.slow_udf"}
    assert caller_spans[0]["peer"] == "server_0"
    assert callee[0]["end_us"] <= callee[1]["start_us"] + 2 * 2000  # within one period
    assert all(s["end_us"] > s["start_us"] for s in spans)


class _Frame:
    """A stand-in for a ``_run_function`` frame object (what ``sys._current_frames()`` gives)."""

    f_back = None

    def __init__(self, udf: Any) -> None:
        self.f_code = SimpleNamespace(co_name="_run_function", co_filename="/x/rpc/internal.py")
        self.f_locals = {"python_udf": SimpleNamespace(func=udf)}


def test_back_to_back_calls_are_not_merged_when_a_frame_address_is_reused() -> None:
    """A served call's frame is freed when it returns and the next call's frame may get its
    address (CPython reuses the freed block at once): unless the sampler holds each frame it
    tracks, ``id(frame)`` repeats and N back-to-back calls merge into fewer spans."""
    sampler = FrameSampler(0.002)
    calls = 200
    for i in range(calls):
        # Each call is seen once; the previous call's frame is already gone (no sample
        # between two calls: back to back).
        sampler.sample({7: _Frame(slow_udf)}, 1000.0 + i * 0.002)
    sampler.sample({}, 1000.0 + calls * 0.002)  # no call running: every span closes
    assert len(sampler.done) == calls
    assert {s["name"] for s in sampler.done} == {f"{__name__}.slow_udf"}
