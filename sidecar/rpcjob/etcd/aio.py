"""The asyncio etcd v3 client: :class:`rpcjob.etcd.Client`'s twin, same rules."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

from rpcjob.contract import ENV_ETCD_ENDPOINTS
from rpcjob.etcd import _convert as cv
from rpcjob.etcd._aconn import AConn
from rpcjob.etcd._awatch import AsyncWatch, AsyncWatchMux
from rpcjob.etcd._pb import rpc_pb2 as _rpc_pb2
from rpcjob.etcd.errors import EtcdError
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
    to_bytes,
)

pb: Any = _rpc_pb2  # generated at run time: Any for mypy
log = logging.getLogger("rpcjob.etcd")

__all__ = ["AsyncClient", "AsyncKeepAlive", "AsyncWatch"]


class AsyncKeepAlive:
    """A task refreshing one lease every TTL/3 (see :class:`rpcjob.etcd.KeepAlive`): ``lost``
    (an asyncio.Event) is set and ``on_lost`` called once when the lease is gone (``None``) or
    no refresh succeeded for longer than the TTL (the last error)."""

    def __init__(
        self,
        client: AsyncClient,
        lease: Lease,
        on_lost: Callable[[BaseException | None], None] | None,
    ) -> None:
        self.lease = lease
        self.lost = asyncio.Event()
        self.error: BaseException | None = None
        self._client = client
        self._on_lost = on_lost
        self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        self._task.cancel()

    async def _run(self) -> None:
        ttl = max(self.lease.ttl, 1)
        last_ok = time.monotonic()
        delay = ttl / 3
        while True:
            await asyncio.sleep(delay)
            left = ttl - (time.monotonic() - last_ok)
            try:
                remaining = await self._client.lease_keepalive_once(
                    self.lease.id, timeout=max(min(left, ttl / 3), 0.5)
                )
            except EtcdError as e:
                if time.monotonic() - last_ok >= ttl:
                    self._lose(e)
                    return
                delay = min(0.5, max(ttl - (time.monotonic() - last_ok), 0.01))
                continue
            if remaining <= 0:
                self._lose(None)
                return
            last_ok = time.monotonic()
            ttl, delay = remaining, remaining / 3

    def _lose(self, err: BaseException | None) -> None:
        self.error = err or EtcdError(f"etcd lease {self.lease.id:x} expired or was revoked")
        self.lost.set()
        log.warning("etcd lease %x lost (%s)", self.lease.id, self.error)
        if self._on_lost is not None:
            try:
                self._on_lost(err)
            except Exception:
                log.exception("etcd lease on_lost callback raised")


class AsyncClient:
    """The asyncio twin of :class:`rpcjob.etcd.Client`: same arguments, same methods as
    coroutines (``keepalive`` returns an :class:`AsyncKeepAlive` task; ``watch`` returns an
    :class:`AsyncWatch` async iterator of event batches). Channels are bound per event loop:
    a client used from two loops holds two sets. Not thread-safe: use it from its loops."""

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
        self._conn = AConn(
            endpoints, timeout=timeout, ca=ca, cert=cert, key=key, user=user, password=password
        )
        self._keepalives: list[AsyncKeepAlive] = []

    @classmethod
    def from_env(cls, endpoints: str | Sequence[str] | None = None, **kw: Any) -> AsyncClient:
        from rpcjob.etcd.client import env_kwargs

        return cls(endpoints or os.environ.get(ENV_ETCD_ENDPOINTS, ""), **(env_kwargs() | kw))

    @property
    def endpoints(self) -> list[str]:
        return list(self._conn.endpoints)

    async def _call(
        self, stub: str, method: str, req: Any, op: str, timeout: float | None, idem: bool = True
    ) -> Any:
        return await self._conn.call(stub, method, req, idempotent=idem, op=op, timeout=timeout)

    async def get(self, key: Bytesish, *, timeout: float | None = None) -> KV | None:
        r = await self._call("kv", "Range", pb.RangeRequest(key=to_bytes(key)), "get", timeout)
        return cv.kv(r.kvs[0]) if r.kvs else None

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
        timeout: float | None = None,
    ) -> RangeResult:
        req = cv.range_request(
            to_bytes(key),
            prefix=prefix,
            range_end=to_bytes(range_end) if range_end is not None else None,
            keys_only=keys_only,
            count_only=count_only,
            limit=limit,
            revision=revision,
        )
        return cv.range_result(await self._call("kv", "Range", req, "range", timeout))

    async def get_prefix(self, prefix: Bytesish, *, timeout: float | None = None) -> list[KV]:
        return (await self.range(prefix, prefix=True, timeout=timeout)).kvs

    async def put(
        self,
        key: Bytesish,
        value: Bytesish,
        *,
        lease: int = 0,
        prev_kv: bool = False,
        timeout: float | None = None,
    ) -> PutResult:
        req = pb.PutRequest(key=to_bytes(key), value=to_bytes(value), lease=lease, prev_kv=prev_kv)
        return cv.put_result(await self._call("kv", "Put", req, "put", timeout, idem=False))

    async def delete(
        self,
        key: Bytesish,
        *,
        prefix: bool = False,
        prev_kv: bool = False,
        timeout: float | None = None,
    ) -> DeleteResult:
        req = cv.delete_request(to_bytes(key), prefix, prev_kv)
        return cv.delete_result(
            await self._call("kv", "DeleteRange", req, "delete", timeout, idem=False)
        )

    async def txn(
        self,
        compare: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
        *,
        timeout: float | None = None,
    ) -> TxnResult:
        req = cv.txn_request(compare, success, failure)
        return cv.txn_result(await self._call("kv", "Txn", req, "txn", timeout, idem=False))

    async def lease_grant(
        self, ttl: int, lease_id: int = 0, *, timeout: float | None = None
    ) -> Lease:
        req = pb.LeaseGrantRequest(TTL=ttl, ID=lease_id)
        r = await self._call("lease", "LeaseGrant", req, "lease grant", timeout)
        if r.error:
            raise EtcdError(f"etcd refused lease grant (ttl={ttl}): {r.error}")
        return Lease(r.ID, r.TTL)

    async def lease_revoke(self, lease_id: int, *, timeout: float | None = None) -> None:
        req = pb.LeaseRevokeRequest(ID=lease_id)
        try:
            await self._call("lease", "LeaseRevoke", req, "lease revoke", timeout)
        except EtcdError as e:
            from rpcjob.etcd.client import lease_not_found

            if not lease_not_found(e):
                raise

    async def lease_keepalive_once(self, lease_id: int, *, timeout: float | None = None) -> int:
        req = pb.LeaseKeepAliveRequest(ID=lease_id)
        r = await self._call("", "keepalive_once", req, "lease keepalive", timeout)
        return 0 if r is None else int(r.TTL)

    async def lease_ttl(self, lease_id: int, *, timeout: float | None = None) -> int:
        req = pb.LeaseTimeToLiveRequest(ID=lease_id)
        return int((await self._call("lease", "LeaseTimeToLive", req, "lease ttl", timeout)).TTL)

    def keepalive(
        self, lease: Lease, on_lost: Callable[[BaseException | None], None] | None = None
    ) -> AsyncKeepAlive:
        """Refresh ``lease`` every TTL/3 in a task of the running loop (call from a coroutine)."""
        ka = AsyncKeepAlive(self, lease, on_lost)
        self._keepalives.append(ka)
        return ka

    def watch(
        self,
        key: Bytesish,
        *,
        prefix: bool = False,
        start_revision: int = 0,
        prev_kv: bool = False,
        range_end: Bytesish | None = None,
    ) -> AsyncWatch:
        """Watch from ``start_revision`` (0 = now): ``async for events in client.watch(k)``.
        Call from a coroutine; the watch shares the loop's one watch stream."""
        k = to_bytes(key)
        end = cv.prefix_end(k) if prefix else (to_bytes(range_end) if range_end else b"")
        st = self._conn.state()
        mux = st.extra.get("mux")
        if mux is None:
            mux = st.extra["mux"] = AsyncWatchMux(self._conn)
        w = AsyncWatch(mux, k, end, start_revision, prev_kv)
        mux.add(w)
        return w

    async def status(self, *, timeout: float | None = None) -> dict[str, Any]:
        r = await self._call("maintenance", "Status", pb.StatusRequest(), "status", timeout)
        return cv.status_dict(self._conn.current().address, r)

    async def close(self) -> None:
        for ka in self._keepalives:
            ka.stop()
        self._keepalives = []
        try:
            mux = self._conn.state().extra.get("mux")
        except RuntimeError:
            mux = None
        if mux is not None:
            await mux.close()
        await self._conn.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
