"""The asyncio etcd v3 client (skeleton: bodies being filled in)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
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


class AsyncWatch:
    """An async iterator of event batches: ``async for events in client.watch(key): ...``.

    Iteration raises :class:`EtcdCompacted` (or another :class:`EtcdError`) when the watch
    cannot continue; it stops after :meth:`cancel`.
    """

    def __aiter__(self) -> AsyncIterator[list[WatchEvent]]:
        return self

    async def __anext__(self) -> list[WatchEvent]:
        raise NotImplementedError

    async def cancel(self) -> None:
        raise NotImplementedError


class AsyncClient:
    """The asyncio twin of :class:`rpcjob.etcd.Client`: same arguments, same methods as
    coroutines. Channels are bound per event loop (a client used from two loops holds two)."""

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

    async def get(self, key: Bytesish) -> KV | None:
        raise NotImplementedError

    async def range(
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

    async def get_prefix(self, prefix: Bytesish) -> list[KV]:
        raise NotImplementedError

    async def put(
        self, key: Bytesish, value: Bytesish, *, lease: int = 0, prev_kv: bool = False
    ) -> PutResult:
        raise NotImplementedError

    async def delete(
        self, key: Bytesish, *, prefix: bool = False, prev_kv: bool = False
    ) -> DeleteResult:
        raise NotImplementedError

    async def txn(
        self, compare: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        raise NotImplementedError

    async def lease_grant(self, ttl: int, lease_id: int = 0) -> Lease:
        raise NotImplementedError

    async def lease_revoke(self, lease_id: int) -> None:
        raise NotImplementedError

    async def lease_keepalive_once(self, lease_id: int) -> int:
        raise NotImplementedError

    async def lease_ttl(self, lease_id: int) -> int:
        raise NotImplementedError

    def watch(
        self,
        key: Bytesish,
        *,
        prefix: bool = False,
        start_revision: int = 0,
        prev_kv: bool = False,
    ) -> AsyncWatch:
        raise NotImplementedError

    async def status(self) -> dict[str, Any]:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
