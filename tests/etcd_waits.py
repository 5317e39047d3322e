"""Condition waits for the etcd client tests (deadlines, never fixed sleeps)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from rpcjob.etcd import WatchEvent


def wait_until(cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
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

    def wait_for(self, n: int, timeout: float = 10.0) -> list[WatchEvent]:
        with self._cv:
            ok = self._cv.wait_for(lambda: len(self.events) >= n, timeout)
            assert ok, f"got {len(self.events)} watch events, expected {n}: {self.events}"
            return list(self.events)

    def values(self) -> list[bytes]:
        with self._cv:
            return [e.kv.value for e in self.events]
