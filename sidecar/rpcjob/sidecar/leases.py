"""A lease kept alive through etcd outages of any length.

:class:`rpcjob.etcd.KeepAlive` reports a loss in two ways: etcd said the lease is gone
(expired or revoked: ``on_lost(None)``), or no refresh got through for one TTL (etcd
unreachable: ``on_lost(error)``). Only the first is a real loss. etcd keeps leases across its
own restart and leader changes: a new leader restores every lease with its full TTL, so a
member whose etcd was down for longer than the TTL still holds its lease when etcd returns,
as long as it refreshes it within one TTL from then. :class:`LeaseKeeper` therefore treats
"unreachable" as "unknown": it keeps asking etcd (with a backoff capped at a third of the TTL)
until etcd answers, then either refreshes the lease and resumes the normal keepalive, or — the
lease really expired — calls ``on_gone``. See docs/contract.md ("etcd outages").
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from rpcjob.etcd import Client, EtcdError, KeepAlive, Lease

log = logging.getLogger("rpcjob.sidecar")

FIRST_RETRY_S = 0.2  # first wait after the keepalive gave up; doubles up to TTL/3
T = TypeVar("T")


def retry_etcd(
    what: str, call: Callable[[], T], ttl: float, until: threading.Event | None
) -> T | None:
    """Ride through an etcd outage: retry ``call`` with a backoff capped at TTL/3 until it
    answers or ``until`` is set (an incarnation's end: its LeaseKeeper ends it only when etcd
    says the lease is gone); None then. Without ``until``, give up after one TTL."""
    deadline = time.monotonic() + ttl
    delay = FIRST_RETRY_S
    while True:
        try:
            return call()
        except EtcdError as e:
            over = until.is_set() if until is not None else time.monotonic() > deadline
            if over:
                log.error("could not %s: %s", what, e)
                return None
            log.warning("could not %s yet (%s): retrying", what, e)
            if until is not None:
                until.wait(delay)  # backoff between attempts, not synchronisation
            else:
                time.sleep(delay)
            delay = min(delay * 2, max(ttl / 3, FIRST_RETRY_S))


class LeaseKeeper:
    """Refresh ``lease`` until :meth:`stop`; ``on_gone`` is called once when etcd says the
    lease no longer exists (never merely because etcd could not be reached)."""

    def __init__(
        self, client: Client, lease: Lease, on_gone: Callable[[], None], what: str
    ) -> None:
        self.client, self.lease, self.what = client, lease, what
        self._on_gone = on_gone
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self.gone = threading.Event()
        self.unreachable_since: float | None = None  # monotonic; None while refreshes work
        self._ka: KeepAlive | None = None
        self._start_keepalive()

    def stop(self) -> None:
        """Stop refreshing (the lease then expires after its TTL unless revoked)."""
        self._stopped.set()
        with self._lock:
            ka = self._ka
        if ka is not None:
            ka.stop()

    def _start_keepalive(self) -> None:
        with self._lock:
            if self._stopped.is_set():
                return
            self._ka = self.client.keepalive(self.lease, on_lost=self._lost)

    def _lost(self, err: BaseException | None) -> None:
        if self._stopped.is_set():
            return
        if err is None:
            self._gone()
            return
        self.unreachable_since = time.monotonic() - self.lease.ttl
        log.warning("etcd unreachable for the TTL of the %s lease (%ds): keeping it and "
                    "retrying until etcd answers (%s)", self.what, self.lease.ttl, err)  # fmt: skip
        threading.Thread(target=self._recover, daemon=True,
                         name=f"rpcjob-lease-recover-{self.lease.id:x}").start()  # fmt: skip

    def _recover(self) -> None:
        """Runs on its own thread: the keepalive thread that reported the loss has ended."""
        cap = max(self.lease.ttl / 3, FIRST_RETRY_S)
        delay = FIRST_RETRY_S
        while not self._stopped.wait(delay):
            try:
                remaining = self.client.lease_keepalive_once(self.lease.id, timeout=cap)
            except EtcdError as e:
                log.debug("%s lease %x: etcd still unreachable (%s)", self.what, self.lease.id, e)
                delay = min(delay * 2, cap)
                continue
            down = time.monotonic() - (self.unreachable_since or time.monotonic())
            self.unreachable_since = None
            if remaining <= 0:
                log.warning("etcd is back after %.1fs but the %s lease %x expired meanwhile",
                            down, self.what, self.lease.id)  # fmt: skip
                self._gone()
                return
            log.info("etcd is back after %.1fs; the %s lease %x is still alive (%ds left): "
                     "carrying on", down, self.what, self.lease.id, remaining)  # fmt: skip
            self._start_keepalive()
            return

    def _gone(self) -> None:
        if self._stopped.is_set() or self.gone.is_set():
            return
        self.gone.set()
        self._on_gone()
