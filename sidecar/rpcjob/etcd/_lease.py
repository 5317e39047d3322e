"""The lease keepalive thread of the sync client."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from rpcjob.etcd.errors import EtcdError
from rpcjob.etcd.values import Lease

log = logging.getLogger("rpcjob.etcd")

LostCallback = Callable[[BaseException | None], None]
RETRY_INTERVAL = 0.5  # seconds between refresh attempts while etcd is unreachable


class KeepAlive:
    """A daemon thread refreshing one lease every TTL/3.

    Loss is reported once: ``lost`` is set, ``error`` filled and ``on_lost`` called (on the
    keepalive thread) with ``None`` when etcd says the lease is gone (expired or revoked), or
    with the last error when no refresh succeeded for longer than the TTL (etcd unreachable).
    The thread ends after a loss or :meth:`stop`.
    """

    def __init__(
        self,
        refresh: Callable[[int, float], int],
        lease: Lease,
        on_lost: LostCallback | None = None,
    ) -> None:
        self.lease = lease
        self.lost = threading.Event()
        self.error: BaseException | None = None
        self._refresh = refresh
        self._on_lost = on_lost
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"rpcjob-etcd-keepalive-{lease.id:x}", daemon=True
        )
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        """Stop refreshing (the lease then expires after its TTL unless revoked)."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        ttl = max(self.lease.ttl, 1)
        last_ok = time.monotonic()
        delay = ttl / 3
        while not self._stop.wait(delay):
            left = ttl - (time.monotonic() - last_ok)
            try:
                remaining = self._refresh(self.lease.id, max(min(left, ttl / 3), 0.5))
            except EtcdError as e:
                if time.monotonic() - last_ok >= ttl:
                    self._lose(e)
                    return
                log.info("etcd lease %x refresh failed (%s); retrying", self.lease.id, e)
                delay = min(RETRY_INTERVAL, max(ttl - (time.monotonic() - last_ok), 0.01))
                continue
            if remaining <= 0:
                self._lose(None)
                return
            last_ok = time.monotonic()
            ttl = remaining
            delay = remaining / 3

    def _lose(self, err: BaseException | None) -> None:
        if self._stop.is_set():
            return
        self.error = err or EtcdError(f"etcd lease {self.lease.id:x} expired or was revoked")
        self.lost.set()
        if err is None:
            log.warning("etcd lease %x is gone (expired or revoked)", self.lease.id)
        else:
            log.warning("etcd lease %x lost: no refresh for its TTL (%s)", self.lease.id, err)
        if self._on_lost is not None:
            try:
                self._on_lost(err)
            except Exception:
                log.exception("etcd lease on_lost callback raised")
