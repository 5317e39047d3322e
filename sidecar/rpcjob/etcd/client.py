"""The synchronous etcd v3 client (skeleton: bodies being filled in)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

from rpcjob.etcd.values import (
    KV,
    Bytesish,
    Compare,
    DeleteResult,
    Lease,
    Op,
    PutResult,
    RangeResult,
    TxnResult,
    WatchEvent,
)

WatchCallback = Callable[[list[WatchEvent]], None]
WatchErrorCallback = Callable[[BaseException], None]
LostCallback = Callable[[BaseException | None], None]


class Watch:
    """A handle on one watch of the client's shared watch stream.

    ``done`` is set once the watch ends (cancelled, compacted, client closed); ``error`` then
    holds the reason when it was not a plain cancel (e.g. :class:`EtcdCompacted`).
    """

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: BaseException | None = None

    def cancel(self) -> None:
        raise NotImplementedError


class KeepAlive:
    """A daemon thread refreshing one lease every TTL/3.

    Loss is reported once: ``lost`` is set and ``on_lost`` called with ``None`` when etcd says
    the lease is gone (expired or revoked), or with the last error when etcd stayed unreachable
    for longer than the TTL. The thread ends after a loss or :meth:`stop`.
    """

    def __init__(self) -> None:
        self.lost = threading.Event()
        self.error: BaseException | None = None

    def stop(self) -> None:
        raise NotImplementedError


class Client:
    """A thin, thread-safe etcd v3 client over grpcio.

    ``endpoints``: ``"host:port"`` items or one comma-separated string; on UNAVAILABLE the
    next endpoint is tried. Idempotent calls are retried across endpoints within ``timeout``
    seconds; a txn is never retried once it may have reached etcd (:class:`EtcdTimeout` says
    the outcome is unknown). TLS: ``ca`` (PEM path), ``cert`` + ``key`` (client certificate).
    Auth: ``user`` + ``password``; the token is renewed when etcd rejects it.
    Fork-safe: a child process builds its own channels on first use.
    """

    def __init__(
        self,
        endpoints: str | Sequence[str],
        *,
        timeout: float = 5.0,
        ca: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        user: str | None = None,
        password: str | None = None,
    ) -> None:
        raise NotImplementedError

    @classmethod
    def from_env(cls, endpoints: str | Sequence[str] | None = None, **kw: Any) -> Client:
        """Build a client from RPCJOB_ETCD_{ENDPOINTS,CA,CERT,KEY,USER,PASSWORD}."""
        raise NotImplementedError

    @property
    def endpoints(self) -> list[str]:
        raise NotImplementedError

    # --- KV -----------------------------------------------------------------------------------
    def get(self, key: Bytesish) -> KV | None:
        raise NotImplementedError

    def range(
        self,
        key: Bytesish,
        *,
        prefix: bool = False,
        keys_only: bool = False,
        count_only: bool = False,
        limit: int = 0,
        revision: int = 0,
        range_end: Bytesish | None = None,
    ) -> RangeResult:
        raise NotImplementedError

    def get_prefix(self, prefix: Bytesish) -> list[KV]:
        raise NotImplementedError

    def put(
        self, key: Bytesish, value: Bytesish, *, lease: int = 0, prev_kv: bool = False
    ) -> PutResult:
        raise NotImplementedError

    def delete(self, key: Bytesish, *, prefix: bool = False, prev_kv: bool = False) -> DeleteResult:
        raise NotImplementedError

    def txn(
        self, compare: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        raise NotImplementedError

    # --- leases -------------------------------------------------------------------------------
    def lease_grant(self, ttl: int, lease_id: int = 0) -> Lease:
        raise NotImplementedError

    def lease_revoke(self, lease_id: int) -> None:
        raise NotImplementedError

    def lease_keepalive_once(self, lease_id: int) -> int:
        raise NotImplementedError

    def lease_ttl(self, lease_id: int) -> int:
        raise NotImplementedError

    def keepalive(self, lease: Lease, on_lost: LostCallback | None = None) -> KeepAlive:
        raise NotImplementedError

    # --- watch --------------------------------------------------------------------------------
    def watch(
        self,
        key: Bytesish,
        *,
        prefix: bool = False,
        start_revision: int = 0,
        prev_kv: bool = False,
        callback: WatchCallback,
        on_error: WatchErrorCallback | None = None,
    ) -> Watch:
        """Watch ``key`` (or the prefix); ``callback`` gets each batch of events, in order, on
        the client's watch thread (keep it short; it may call the client). After a stream
        error the watch resumes from its last seen revision + 1. When the watch cannot
        continue (compacted: :class:`EtcdCompacted`; permission denied) it ends: ``on_error``
        is called once, ``Watch.error`` is set and ``Watch.done`` fires."""
        raise NotImplementedError

    # --- maintenance --------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """``{"endpoint", "leader", "member_id", "revision", "version", "db_size"}``."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
