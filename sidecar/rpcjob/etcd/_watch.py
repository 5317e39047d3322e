"""One bidirectional watch stream per client, multiplexing every watch of that client.

A daemon thread owns the stream: it sends queued create/cancel requests (through the request
iterator gRPC consumes) and dispatches responses to the watches' callbacks, in order. When the
stream breaks (etcd restart, endpoint down) it reconnects, on the next endpoint when needed, and
re-creates every live watch from its last seen revision + 1, so callbacks see no lost and no
duplicate events.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from rpcjob.etcd import _convert as cv
from rpcjob.etcd import _failures as fl
from rpcjob.etcd._conn import RETRY_BACKOFF, Conn, Endpoint
from rpcjob.etcd._failures import Failure
from rpcjob.etcd._pb import rpc_pb2 as pb
from rpcjob.etcd.errors import EtcdCompacted, EtcdError
from rpcjob.etcd.values import WatchEvent

log = logging.getLogger("rpcjob.etcd")

WatchCallback = Callable[[list[WatchEvent]], None]
WatchErrorCallback = Callable[[BaseException], None]

_END = object()  # on a request queue: the stream is over (ends its iter(q.get, _END))


@dataclass(eq=False)
class Watch:
    """A handle on one watch of the client's shared watch stream.

    ``created`` is set once etcd has confirmed the watch (not needed for correctness: a watch
    with a start revision sees every event from it even if created later). ``done`` is set
    once the watch ends (cancelled, compacted, permission denied, client closed); ``error``
    then holds the reason when it was not a plain cancel.
    """

    _mux: WatchMux
    key: bytes
    range_end: bytes
    next_revision: int  # the start revision; 0 until etcd tells us "now"
    prev_kv: bool
    callback: WatchCallback
    on_error: WatchErrorCallback | None
    server_id: int | None = None
    cancelled: bool = False
    auth_retried: bool = False
    created: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def cancel(self) -> None:
        """Stop the watch; no callback starts after this returns (one running may finish)."""
        self._mux.cancel(self)

    def _create_request(self) -> pb.WatchRequest:
        create = pb.WatchCreateRequest(
            key=self.key, range_end=self.range_end, start_revision=self.next_revision,
            prev_kv=self.prev_kv,
        )  # fmt: skip
        return pb.WatchRequest(create_request=create)


class WatchMux:
    def __init__(self, conn: Conn) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self._watches: list[Watch] = []
        self._by_id: dict[int, Watch] = {}
        self._pending: deque[Watch] = deque()
        self._out: queue.SimpleQueue[pb.WatchRequest | object] | None = None
        self._call: Any = None  # the grpc stream call (grpc is untyped)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        conn.fork_hooks.append(self._forked)
        conn.resume_hooks.append(self._resume)

    # --- public side (any thread) -------------------------------------------------------------
    def add(self, w: Watch) -> None:
        with self._lock:
            if self._stop.is_set():
                raise EtcdError("watch: the etcd client is closed")
            self._watches.append(w)
            if self._out is not None:
                self._pending.append(w)
                self._out.put(w._create_request())
            if self._thread is None or not self._thread.is_alive():
                self._start_thread()

    def cancel(self, w: Watch) -> None:
        with self._lock:
            if w.cancelled:
                return
            w.cancelled = True
            if w in self._watches:
                self._watches.remove(w)
            if w.server_id is not None:
                self._by_id.pop(w.server_id, None)
                if self._out is not None:
                    self._out.put(cv.watch_cancel(w.server_id))
            # a pending watch is cancelled when its "created" arrives
        w.done.set()

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            watches, self._watches = self._watches, []
            call = self._call
            if self._out is not None:
                self._out.put(_END)
        if call is not None:
            call.cancel()
        for w in watches:
            w.cancelled = True
            w.done.set()

    def _forked(self) -> None:
        # In a fork child: the parent's thread and stream do not exist here. Start over with
        # the same watches (each resumes from its next revision) once the child uses the
        # client (_resume).
        self._lock = threading.Lock()
        self._out = None
        self._call = None
        self._by_id = {}
        self._pending = deque()
        self._thread = None
        for w in self._watches:
            w.server_id = None

    def _resume(self) -> None:
        with self._lock:
            if self._watches and not self._stop.is_set() and self._thread is None:
                self._start_thread()

    def _start_thread(self) -> None:
        self._thread = threading.Thread(target=self._run, name="rpcjob-etcd-watch", daemon=True)
        self._thread.start()

    # --- the stream thread --------------------------------------------------------------------
    def _run(self) -> None:
        backoff = RETRY_BACKOFF[0]
        while not self._stop.is_set():
            q: queue.SimpleQueue[pb.WatchRequest | object] = queue.SimpleQueue()
            try:
                ep = self._conn.current()
                self._conn.authenticate(ep, self._conn.timeout + time.monotonic())
                with self._lock:
                    self._out = q
                    self._by_id = {}
                    self._pending = deque()
                    for w in self._watches:
                        w.server_id = None
                        self._pending.append(w)
                        q.put(w._create_request())
                    call = ep.watch.Watch(iter(q.get, _END), metadata=ep.metadata)
                    self._call = call
                for resp in call:
                    backoff = RETRY_BACKOFF[0]
                    self._dispatch(resp, ep)
                failure, details = Failure.BROKEN, "watch stream ended"
            except grpc.RpcError as e:
                failure = fl.classify(e.code(), e.details() or "", have_user=bool(self._conn.user))
                details = e.details() or ""
                if failure in (Failure.CONNECT, Failure.TLS):
                    self._conn.failed(ep)
                elif failure is Failure.REAUTH:
                    ep.set_token(None)
            except EtcdError as e:  # re-authentication failed
                failure, details = Failure.OTHER, str(e)
            finally:
                with self._lock:
                    self._out = None
                    self._call = None
                q.put(_END)
            if self._stop.is_set():
                return
            log.info("etcd watch stream broke (%s: %s); resuming", failure.value, fl.short(details))
            self._stop.wait(backoff)
            backoff = min(backoff * 2, RETRY_BACKOFF[1])

    def _dispatch(self, resp: pb.WatchResponse, ep: Endpoint) -> None:
        ended: tuple[Watch, BaseException] | None = None
        deliver: tuple[Watch, list[WatchEvent]] | None = None
        with self._lock:
            if resp.created:
                if not self._pending:
                    return
                w = self._pending.popleft()
                if resp.canceled:
                    ended = (w, self._cancel_error(w, resp, ep))
                else:
                    w.server_id = resp.watch_id
                    if w.cancelled:
                        if self._out is not None:
                            self._out.put(cv.watch_cancel(resp.watch_id))
                    else:
                        w.auth_retried = False
                        w.created.set()
                        self._by_id[resp.watch_id] = w
                        if w.next_revision == 0:
                            w.next_revision = resp.header.revision + 1
            else:
                w_or_none = self._by_id.get(resp.watch_id)
                if w_or_none is None:
                    return
                w = w_or_none
                if resp.canceled or resp.compact_revision:
                    self._by_id.pop(resp.watch_id, None)
                    if not w.cancelled:
                        ended = (w, self._cancel_error(w, resp, ep))
                elif resp.events and not w.cancelled:
                    events = [
                        e
                        for e in cv.watch_events(resp.events)
                        if e.kv.mod_revision >= w.next_revision
                    ]
                    if events:
                        w.next_revision = events[-1].kv.mod_revision + 1
                        deliver = (w, events)
            if ended is not None and ended[1] is _RETRY:
                ended = None  # re-created on the fresh stream
        if deliver is not None:
            try:
                deliver[0].callback(deliver[1])
            except Exception:
                log.exception("etcd watch callback for %r raised", deliver[0].key)
        if ended is not None:
            self._end(*ended)

    def _cancel_error(self, w: Watch, resp: pb.WatchResponse, ep: Endpoint) -> BaseException:
        if resp.compact_revision:
            return EtcdCompacted(
                f"watch on {w.key!r} at etcd {ep.address}: revision {w.next_revision} has been "
                f"compacted (oldest available: {resp.compact_revision}); re-read the keys and "
                "watch again from the revision of that read + 1",
                resp.compact_revision,
            )
        reason = resp.cancel_reason or "cancelled by etcd"
        if "permission denied" in reason and self._conn.user and not w.auth_retried:
            # etcd 3.4 reports an expired token on a watch create as "permission denied":
            # authenticate again and restart the stream once before giving up.
            w.auth_retried = True
            ep.set_token(None)
            self._watches.remove(w)
            self._watches.append(w)
            if self._call is not None:
                self._call.cancel()
            return _RETRY
        f = Failure.PERMISSION if "permission denied" in reason else Failure.OTHER
        return self._conn.error(f, reason, ep.address, f"watch {w.key!r}", self._conn.timeout)

    def _end(self, w: Watch, err: BaseException) -> None:
        with self._lock:
            w.cancelled = True
            if w in self._watches:
                self._watches.remove(w)
        w.error = err
        w.done.set()
        if w.on_error is not None:
            try:
                w.on_error(err)
            except Exception:
                log.exception("etcd watch on_error for %r raised", w.key)
        else:
            log.warning("etcd watch on %r ended: %s", w.key, err)


_RETRY = EtcdError("retry")
