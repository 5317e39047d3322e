"""The asyncio watch stream: one per client and event loop, multiplexing every watch.

Same protocol as _watch.WatchMux (resume from the last seen revision + 1 after a stream error),
but owned by a task, and each watch is an async iterator fed through an asyncio.Queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import grpc.aio

from rpcjob.etcd import _convert as cv
from rpcjob.etcd import _failures as fl
from rpcjob.etcd._aconn import AConn, AEndpoint
from rpcjob.etcd._conn import RETRY_BACKOFF
from rpcjob.etcd._failures import Failure
from rpcjob.etcd.errors import EtcdCompacted, EtcdError
from rpcjob.etcd.values import WatchEvent

log = logging.getLogger("rpcjob.etcd")
_END = object()


class AsyncWatch:
    """An async iterator of event batches: ``async for events in client.watch(key): ...``.

    Batches come in revision order; after a stream error the watch resumes from its last seen
    revision + 1. Iteration raises :class:`EtcdCompacted` (or :class:`EtcdAuthError` when
    permission is denied) when the watch cannot continue, and stops after :meth:`cancel`.
    """

    def __init__(
        self, mux: AsyncWatchMux, key: bytes, range_end: bytes, start: int, prev_kv: bool
    ) -> None:
        self._mux = mux
        self.key = key
        self.range_end = range_end
        self.prev_kv = prev_kv
        self.next_revision = start
        self.server_id: int | None = None
        self.cancelled = False
        self.auth_retried = False
        self.queue: asyncio.Queue[Any] = asyncio.Queue()

    def __aiter__(self) -> AsyncIterator[list[WatchEvent]]:
        return self

    async def __anext__(self) -> list[WatchEvent]:
        item = await self.queue.get()
        if item is _END:
            self.queue.put_nowait(_END)  # stay exhausted
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self.queue.put_nowait(_END)
            raise item
        events: list[WatchEvent] = item
        return events

    async def cancel(self) -> None:
        self._mux.cancel(self)

    def _create_request(self) -> Any:
        return cv.watch_create(self.key, self.range_end, self.next_revision, self.prev_kv)


class AsyncWatchMux:
    def __init__(self, conn: AConn) -> None:
        self._conn = conn
        self._watches: list[AsyncWatch] = []
        self._by_id: dict[int, AsyncWatch] = {}
        self._pending: deque[AsyncWatch] = deque()
        self._out: asyncio.Queue[Any] | None = None
        self._call: Any = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def add(self, w: AsyncWatch) -> None:
        if self._closed:
            raise EtcdError("watch: the etcd client is closed")
        self._watches.append(w)
        if self._out is not None:
            self._pending.append(w)
            self._out.put_nowait(w._create_request())
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    def cancel(self, w: AsyncWatch) -> None:
        if w.cancelled:
            return
        w.cancelled = True
        if w in self._watches:
            self._watches.remove(w)
        if w.server_id is not None:
            self._by_id.pop(w.server_id, None)
            if self._out is not None:
                self._out.put_nowait(cv.watch_cancel(w.server_id))
        w.queue.put_nowait(_END)

    async def close(self) -> None:
        self._closed = True
        for w in list(self._watches):
            self.cancel(w)
        if self._call is not None:
            self._call.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _requests(self, q: asyncio.Queue[Any]) -> AsyncIterator[Any]:
        while True:
            item = await q.get()
            if item is _END:
                return
            yield item

    async def _run(self) -> None:
        backoff = RETRY_BACKOFF[0]
        while not self._closed:
            q: asyncio.Queue[Any] = asyncio.Queue()
            ep = self._conn.current()
            failure, details = Failure.BROKEN, "watch stream ended"
            try:
                if self._conn.user and ep.token is None:
                    await self._conn.authenticate(ep, time.monotonic() + self._conn.timeout)
                self._out, self._by_id, self._pending = q, {}, deque()
                for w in self._watches:
                    w.server_id = None
                    self._pending.append(w)
                    q.put_nowait(w._create_request())
                self._call = ep.watch.Watch(self._requests(q), metadata=ep.metadata)
                async for resp in self._call:
                    backoff = RETRY_BACKOFF[0]
                    self._dispatch(resp, ep)
            except grpc.aio.AioRpcError as e:
                details = e.details() or ""
                failure = fl.classify(e.code(), details, have_user=bool(self._conn.user))
                if failure in (Failure.CONNECT, Failure.TLS):
                    self._conn.failed(ep)
                elif failure is Failure.REAUTH:
                    ep.set_token(None)
            except EtcdError as e:
                failure, details = Failure.OTHER, str(e)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if self._closed or (task is not None and task.cancelling()):
                    raise
                failure, details = Failure.BROKEN, "stream restarted"  # we cancelled the call
            finally:
                self._out, self._call = None, None
                q.put_nowait(_END)
            if self._closed:
                return
            log.info("etcd watch stream broke (%s: %s); resuming", failure.value, fl.short(details))
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, RETRY_BACKOFF[1])

    def _dispatch(self, resp: Any, ep: AEndpoint) -> None:
        if resp.created:
            if not self._pending:
                return
            w = self._pending.popleft()
            if resp.canceled:
                self._ended(w, resp, ep)
                return
            w.server_id = resp.watch_id
            if w.cancelled:
                if self._out is not None:
                    self._out.put_nowait(cv.watch_cancel(resp.watch_id))
                return
            w.auth_retried = False
            self._by_id[resp.watch_id] = w
            if w.next_revision == 0:
                w.next_revision = resp.header.revision + 1
            return
        found = self._by_id.get(resp.watch_id)
        if found is None:
            return
        if resp.canceled or resp.compact_revision:
            self._by_id.pop(resp.watch_id, None)
            if not found.cancelled:
                self._ended(found, resp, ep)
            return
        events = [
            e for e in cv.watch_events(resp.events) if e.kv.mod_revision >= found.next_revision
        ]
        if events and not found.cancelled:
            found.next_revision = events[-1].kv.mod_revision + 1
            found.queue.put_nowait(events)

    def _ended(self, w: AsyncWatch, resp: Any, ep: AEndpoint) -> None:
        reason = resp.cancel_reason or "cancelled by etcd"
        if resp.compact_revision:
            err: EtcdError = EtcdCompacted(
                f"watch on {w.key!r} at etcd {ep.address}: revision {w.next_revision} has been "
                f"compacted (oldest available: {resp.compact_revision}); re-read the keys and "
                "watch again from the revision of that read + 1",
                resp.compact_revision,
            )
        elif "permission denied" in reason and self._conn.user and not w.auth_retried:
            # etcd 3.4 reports an expired token on a watch create as "permission denied".
            w.auth_retried = True
            ep.set_token(None)
            if self._call is not None:
                self._call.cancel()
            return
        else:
            f = Failure.PERMISSION if "permission denied" in reason else Failure.OTHER
            err = fl.error_for(
                f,
                reason,
                endpoint=ep.address,
                endpoints=self._conn.endpoints,
                op=f"watch {w.key!r}",
                timeout=self._conn.timeout,
                user=self._conn.user,
            )
        w.cancelled = True
        if w in self._watches:
            self._watches.remove(w)
        w.queue.put_nowait(err)
