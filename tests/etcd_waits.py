"""Condition waits for the etcd client tests (deadlines, never fixed sleeps).

The default deadline (WAIT_S) is sized for a loaded 2-core machine running the suite on two
workers: a deadline only bounds how long a failing test takes, never how fast a passing one is
(timing goals live in bench/)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rpcjob.etcd import WatchEvent

WAIT_S = 30.0


def wait_until(cond: Callable[[], bool], timeout: float = WAIT_S, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


class Collector:
    """A watch callback that records events and lets a test wait for a count."""

    def __init__(self) -> None:
        self.events: list[WatchEvent] = []
        self.batches = 0
        self._cv = threading.Condition()

    def __call__(self, events: list[WatchEvent]) -> None:
        with self._cv:
            self.events.extend(events)
            self.batches += 1
            self._cv.notify_all()

    def wait_for(self, n: int, timeout: float = WAIT_S) -> list[WatchEvent]:
        with self._cv:
            ok = self._cv.wait_for(lambda: len(self.events) >= n, timeout)
            assert ok, f"got {len(self.events)} watch events, expected {n}: {self.events}"
            return list(self.events)

    def values(self) -> list[bytes]:
        with self._cv:
            return [e.kv.value for e in self.events]


def _all_threads_stopped(pid: int) -> bool:
    states = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            states.append(f.read().rsplit(")", 1)[1].split()[0])
    return all(s in ("T", "t") for s in states)


@contextmanager
def frozen(pid: int | None) -> Iterator[None]:
    """SIGSTOP a process (etcd) until every thread is stopped: connections stay open and
    nothing is answered, like a hung or partitioned etcd. SIGCONT on exit."""
    assert pid
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_until(lambda: _all_threads_stopped(pid), WAIT_S, "etcd to stop")
        yield
    finally:
        os.kill(pid, signal.SIGCONT)
