"""The asyncio twin of _conn.Conn: per-event-loop channels and the same retry rules.

gRPC's aio channels belong to the loop that created them, so each loop that uses a client gets
its own channels (held weakly by loop); auth tokens are per endpoint and shared by all loops.
"""

from __future__ import annotations

import asyncio
import os
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio

from rpcjob.etcd import _failures as fl
from rpcjob.etcd._conn import (
    CHANNEL_OPTIONS,
    RETRY_BACKOFF,
    ErrorContext,
    credentials,
    parse_endpoints,
)
from rpcjob.etcd._failures import Action, Failure
from rpcjob.etcd._pb import rpc_pb2 as _rpc_pb2
from rpcjob.etcd._pb import rpc_pb2_grpc as _rpc_pb2_grpc
from rpcjob.etcd.errors import EtcdError

pb: Any = _rpc_pb2  # generated at run time: Any for mypy
pbg: Any = _rpc_pb2_grpc

_INHERITED: list[Any] = []  # aio channels inherited across fork: never touched again


@dataclass
class AEndpoint:
    address: str
    channel: Any
    kv: Any = field(init=False)
    watch: Any = field(init=False)
    lease: Any = field(init=False)
    auth: Any = field(init=False)
    maintenance: Any = field(init=False)
    token: str | None = field(default=None, repr=False)  # a credential: never printed
    metadata: tuple[tuple[str, str], ...] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.kv = pbg.KVStub(self.channel)
        self.watch = pbg.WatchStub(self.channel)
        self.lease = pbg.LeaseStub(self.channel)
        self.auth = pbg.AuthStub(self.channel)
        self.maintenance = pbg.MaintenanceStub(self.channel)

    async def keepalive_once(self, request: Any, timeout: float, metadata: Any) -> Any:
        call = self.lease.LeaseKeepAlive(timeout=timeout, metadata=metadata)
        try:
            await call.write(request)
            resp = await call.read()
            return None if resp is grpc.aio.EOF else resp
        finally:
            call.cancel()

    def set_token(self, token: str | None) -> None:
        self.token = token
        self.metadata = (("token", token),) if token else None


class _LoopState:
    def __init__(self, n: int) -> None:
        self.eps: list[AEndpoint | None] = [None] * n
        self.cur = 0
        self.extra: dict[str, Any] = {}  # per-loop helpers (the watch mux)


class AConn(ErrorContext):
    def __init__(
        self,
        endpoints: str | Sequence[str],
        *,
        timeout: float,
        ca: str | None,
        cert: str | None,
        key: str | None,
        user: str | None,
        password: str | None,
    ) -> None:
        self.endpoints = parse_endpoints(endpoints)
        if timeout <= 0:
            raise ValueError(f"etcd client timeout must be > 0 seconds, got {timeout}")
        if user and not password:
            raise EtcdError(f"etcd user {user!r} given without a password (RPCJOB_ETCD_PASSWORD)")
        self.timeout = float(timeout)
        self.user = user or None
        self._password = password or None
        self._creds = credentials(ca, cert, key)
        self._states: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = (
            weakref.WeakKeyDictionary()
        )
        self._pid = os.getpid()
        self.closed = False

    def state(self) -> _LoopState:
        if self._pid != os.getpid():
            _INHERITED.append(self._states)
            self._states = weakref.WeakKeyDictionary()
            self._pid = os.getpid()
        loop = asyncio.get_running_loop()
        st = self._states.get(loop)
        if st is None:
            st = self._states[loop] = _LoopState(len(self.endpoints))
        return st

    def current(self) -> AEndpoint:
        st = self.state()
        ep = st.eps[st.cur]
        if ep is None:
            addr = self.endpoints[st.cur]
            if self._creds is not None:
                ch = grpc.aio.secure_channel(addr, self._creds, options=CHANNEL_OPTIONS)
            else:
                ch = grpc.aio.insecure_channel(addr, options=CHANNEL_OPTIONS)
            ep = st.eps[st.cur] = AEndpoint(addr, ch)
        return ep

    def failed(self, ep: AEndpoint) -> None:
        st = self.state()
        for i, e in enumerate(st.eps):
            if e is ep:
                st.eps[i] = None
                if i == st.cur:
                    st.cur = (i + 1) % len(st.eps)
                # Not awaited: in-flight calls on it finish or fail on their own.
                asyncio.get_running_loop().create_task(ep.channel.close(grace=1.0))

    async def close(self) -> None:
        self.closed = True
        if self._pid != os.getpid():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        st = self._states.pop(loop, None)
        if st is not None:
            for ep in st.eps:
                if ep is not None:
                    await ep.channel.close()

    async def authenticate(self, ep: AEndpoint, deadline: float) -> None:
        if not self.user:
            return
        req = pb.AuthenticateRequest(name=self.user, password=self._password or "")
        resp = await ep.auth.Authenticate(req, timeout=max(deadline - time.monotonic(), 0.001))
        ep.set_token(resp.token)

    async def call(
        self,
        stub: str,
        method: str,
        request: Any,
        *,
        idempotent: bool,
        op: str,
        timeout: float | None = None,
    ) -> Any:
        budget = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + budget
        reauthed = False
        tried = 0
        backoff = RETRY_BACKOFF[0]
        # The last connect/TLS failure: when the deadline then passes, it is the better error.
        last: tuple[Failure, str, str] | None = None
        while True:
            if self.closed:
                raise EtcdError(f"{op}: the etcd client is closed")
            ep = self.current()
            try:
                if self.user and ep.token is None:
                    await self.authenticate(ep, deadline)
                fn = getattr(getattr(ep, stub) if stub else ep, method)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self._timeout_error(last, ep, op, budget)
                return await fn(request, timeout=remaining, metadata=ep.metadata)
            except grpc.aio.AioRpcError as e:
                err = e
                code, details = e.code(), e.details() or ""
            f = fl.classify(code, details, have_user=bool(self.user))
            action = fl.decide(f, repeatable=idempotent, reauthed=reauthed)
            if action is Action.REAUTH:
                reauthed = True
                ep.set_token(None)
                continue
            if action is Action.DROP_AUTH:
                ep.set_token("")
                self.user = None
                continue
            if action is Action.UNKNOWN:
                raise fl.outcome_unknown(
                    details, op=op, keys="", endpoint=ep.address, timeout=budget,
                    deadline=f is Failure.DEADLINE,
                ) from err  # fmt: skip
            if action is Action.RETRY:
                self.failed(ep)
                tried += 1
                last = (f, details, ep.address)
                if tried % len(self.endpoints) == 0:  # a full round failed: back off
                    await asyncio.sleep(max(min(backoff, deadline - time.monotonic()), 0))
                    backoff = min(backoff * 2, RETRY_BACKOFF[1])
                if deadline - time.monotonic() > 0.001:
                    continue
            if f is Failure.DEADLINE:
                raise self._timeout_error(last, ep, op, budget, details) from err
            raise fl.error_for(f, details, **self._ctx(ep, op, budget)) from err
