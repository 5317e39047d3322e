"""Endpoints, channels, auth tokens and the retry loop shared by the sync client's parts.

One gRPC channel per endpoint, built lazily, with stubs built once per channel. Calls go to the
current endpoint; a connection failure moves to the next one (no blacklisting: a restarted
etcd is used again at once, because a failed endpoint's channel is replaced by a fresh one
instead of waiting out gRPC's reconnect backoff). Fork safety: channels remember the pid that
built them; a child process builds its own and never touches the inherited ones.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any, TypedDict, Unpack

import grpc
from google.protobuf.message import Message

from rpcjob.etcd import _failures as fl
from rpcjob.etcd._failures import Action, Failure
from rpcjob.etcd._pb import rpc_pb2 as pb
from rpcjob.etcd._pb import rpc_pb2_grpc as pbg
from rpcjob.etcd.errors import DEFAULT_NAMES, EtcdError, SettingNames
from rpcjob.netaddr import IPV6_HINT, InvalidHostPort, parse_host_port

log = logging.getLogger("rpcjob.etcd")

# Keep the failed endpoint's replacement channel from sharing the old one's subchannel (and its
# reconnect backoff); cap gRPC's own backoff so that a channel recovers quickly as well.
CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.enable_retries", 0),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
]
RETRY_BACKOFF = (0.02, 0.5)  # seconds, between rounds over all endpoints

# Channels inherited across fork must never be used, closed or garbage-collected (that runs
# gRPC code) in the child: they are parked here for the rest of the child's life.
_INHERITED: list[Endpoint] = []


def parse_endpoints(
    endpoints: str | Sequence[str], names: SettingNames = DEFAULT_NAMES
) -> list[str]:
    items = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    out = []
    for raw in items:
        ep = raw.strip().removeprefix("http://").removeprefix("https://").rstrip("/")
        if not ep:
            continue
        try:
            parse_host_port(ep, names.endpoints)
        except InvalidHostPort as e:
            raise ValueError(
                f"etcd endpoint {raw.strip()!r} is invalid ({names.endpoints}): use host:port "
                f"(e.g. 127.0.0.1:2379), several separated by commas ({e.reason}; {IPV6_HINT})"
            ) from None
        out.append(ep)
    if not out:
        raise ValueError(f"no etcd endpoint given: pass host:port items ({names.endpoints})")
    return out


def _read(path: str | None, what: str) -> bytes | None:
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise EtcdError(f"cannot read the etcd {what} file {path!r} ({e.strerror})") from e


def credentials(
    ca: str | None, cert: str | None, key: str | None, names: SettingNames
) -> grpc.ChannelCredentials | None:
    if not (ca or cert or key):
        return None
    if bool(cert) != bool(key):
        raise EtcdError(
            f"etcd client certificate needs both {names.cert} and {names.key}; only one was given"
        )
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca, f"CA ({names.ca})"),
        private_key=_read(key, f"client key ({names.key})"),
        certificate_chain=_read(cert, f"client certificate ({names.cert})"),
    )


class Endpoint:
    """One endpoint's channel and stubs, valid in the process that built them (see Conn)."""

    def __init__(self, address: str, channel: grpc.Channel) -> None:
        self.address = address
        self.channel = channel
        self.kv = pbg.KVStub(channel)
        self.watch = pbg.WatchStub(channel)
        self.lease = pbg.LeaseStub(channel)
        self.auth = pbg.AuthStub(channel)
        self.maintenance = pbg.MaintenanceStub(channel)
        self.token: str | None = None  # a credential: never printed
        self.metadata: tuple[tuple[str, str], ...] | None = None

    def keepalive_once(
        self,
        request: pb.LeaseKeepAliveRequest,
        timeout: float,
        metadata: tuple[tuple[str, str], ...] | None,
    ) -> pb.LeaseKeepAliveResponse:
        """One LeaseKeepAlive round trip on a short-lived stream."""
        call = self.lease.LeaseKeepAlive(iter((request,)), timeout=timeout, metadata=metadata)
        try:
            resp: pb.LeaseKeepAliveResponse = next(call)
            return resp
        finally:
            call.cancel()

    def set_token(self, token: str | None) -> None:
        self.token = token
        self.metadata = (("token", token),) if token else None


_LIVE: weakref.WeakSet[Conn] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for conn in list(_LIVE):
        conn.forked()


os.register_at_fork(after_in_child=_after_fork_in_child)


class ClientSettings(TypedDict, total=False):
    """How a client reaches etcd besides its endpoints and timeout: TLS files (``ca``, ``cert``,
    ``key``: PEM paths), auth (``user``, ``password``) and how messages name them (``names``).
    Every layer (Client, EtcdStore, the pod contract's env) passes these on as one set."""

    ca: str | None
    cert: str | None
    key: str | None
    user: str | None
    password: str | None
    names: SettingNames


class Conn:
    """The endpoints of one client and the retry loop around each call."""

    def __init__(
        self, endpoints: str | Sequence[str], *, timeout: float, **settings: Unpack[ClientSettings]
    ) -> None:
        names = settings.get("names", DEFAULT_NAMES)
        user, password = settings.get("user"), settings.get("password")
        self.names = names
        self.endpoints = parse_endpoints(endpoints, names)
        if timeout <= 0:
            raise ValueError(f"etcd client timeout must be > 0 seconds, got {timeout}")
        if bool(user) != bool(password) and user:
            raise EtcdError(f"etcd user {user!r} given without a password ({names.password})")
        self.timeout = float(timeout)
        self.user = user or None
        self._password = password or None
        self._creds = credentials(
            settings.get("ca"), settings.get("cert"), settings.get("key"), names
        )
        self._lock = threading.Lock()
        self._eps: list[Endpoint | None] = [None] * len(self.endpoints)
        self._cur = 0
        self._pid = os.getpid()
        self.closed = False
        # The highest revision seen in any response: etcd had reached it before the next
        # request was sent, which lets a caller tell whether a key changed since then.
        self.revision = 0
        # Called in a fork child right after fork (reset state; no I/O, no threads) and on the
        # child's first use of the client (restart streams), so that a child that never uses
        # the client (a DataLoader worker) opens no connection.
        self.fork_hooks: list[Callable[[], None]] = []
        self.resume_hooks: list[Callable[[], None]] = []
        self._pending_resume: list[Callable[[], None]] = []
        _LIVE.add(self)

    # --- channels -----------------------------------------------------------------------------
    def forked(self) -> None:
        """In a fork child: drop (never use) the parent's channels; rebuild on demand."""
        self._lock = threading.Lock()
        _INHERITED.extend(ep for ep in self._eps if ep is not None)
        self._eps = [None] * len(self.endpoints)
        self._pid = os.getpid()
        for hook in self.fork_hooks:
            hook()
        self._pending_resume = list(self.resume_hooks)

    def _build(self, i: int) -> Endpoint:
        addr = self.endpoints[i]
        if self._creds is not None:
            ch = grpc.secure_channel(addr, self._creds, options=CHANNEL_OPTIONS)
        else:
            ch = grpc.insecure_channel(addr, options=CHANNEL_OPTIONS)
        return Endpoint(addr, ch)

    def current(self) -> Endpoint:
        if self._pid != os.getpid():  # forked without the at-fork hook (should not happen)
            self.forked()
        if self._pending_resume:
            hooks, self._pending_resume = self._pending_resume, []
            for hook in hooks:
                hook()
        ep = self._eps[self._cur]
        if ep is None:
            with self._lock:
                ep = self._eps[self._cur]
                if ep is None:
                    ep = self._eps[self._cur] = self._build(self._cur)
        return ep

    def failed(self, ep: Endpoint) -> None:
        """``ep`` could not be reached: replace its channel, move on to the next endpoint."""
        with self._lock:
            for i, e in enumerate(self._eps):
                if e is ep:
                    self._eps[i] = None  # dropped, not closed: in-flight calls keep it alive
                    if i == self._cur:
                        self._cur = (i + 1) % len(self._eps)

    def close(self) -> None:
        self.closed = True
        with self._lock:
            eps, self._eps = self._eps, [None] * len(self.endpoints)
        if self._pid == os.getpid():
            for ep in eps:
                if ep is not None:
                    ep.channel.close()

    # --- errors -------------------------------------------------------------------------------
    def error(self, f: Failure, details: str, endpoint: str, op: str, budget: float) -> EtcdError:
        """Failure ``f`` as the EtcdError naming this client's endpoints and settings."""
        return fl.error_for(
            f, details, endpoint=endpoint, endpoints=self.endpoints, op=op, timeout=budget,
            user=self.user, names=self.names,
        )  # fmt: skip

    def _timeout_error(
        self,
        last: tuple[Failure, str, str] | None,
        ep: Endpoint,
        op: str,
        budget: float,
        details: str = "deadline passed before the call could be sent",
    ) -> EtcdError:
        # After earlier failed attempts, say why they failed, not just "timed out".
        f, details, address = last or (Failure.DEADLINE, details, ep.address)
        return self.error(f, details, address, op, budget)

    # --- auth ---------------------------------------------------------------------------------
    def authenticate(self, ep: Endpoint, deadline: float) -> None:
        """Get ``ep`` a token unless it has one (simple tokens are per member: per endpoint)."""
        if not self.user or ep.token is not None:
            return
        req = pb.AuthenticateRequest(name=self.user, password=self._password or "")
        resp = ep.auth.Authenticate(req, timeout=max(deadline - time.monotonic(), 0.001))
        ep.set_token(resp.token)

    # --- calls --------------------------------------------------------------------------------
    def _saw(self, resp: Message) -> None:
        """Raise the revision high-water mark to ``resp``'s header revision. A racing update
        may keep the lower value: the mark only ever errs low, which is the safe side."""
        header = getattr(resp, "header", None)
        rev = header.revision if header is not None else 0
        if rev > self.revision:
            self.revision = rev

    def call(
        self,
        stub: str,
        method: str,
        request: Message,
        *,
        repeatable: bool,
        op: str,
        keys: str = "",
        timeout: float | None = None,
    ) -> Any:
        """Send one unary request with failover; translate failures into EtcdError. Returns
        the method's response message (callers annotate its type: the stub is looked up by
        name).

        ``repeatable``: the request may be sent again after a failure that left its outcome
        unknown (reads); otherwise such a failure raises EtcdOutcomeUnknown naming ``keys``."""
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
                self.authenticate(ep, deadline)
                fn = getattr(getattr(ep, stub) if stub else ep, method)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self._timeout_error(last, ep, op, budget)
                resp = fn(request, timeout=remaining, metadata=ep.metadata)
                self._saw(resp)
                return resp
            except grpc.RpcError as e:
                err: grpc.RpcError = e
                code, details = e.code(), e.details() or ""
            f = fl.classify(code, details, have_user=bool(self.user))
            action = fl.decide(f, repeatable=repeatable, reauthed=reauthed)
            if action is Action.REAUTH:
                reauthed = True
                ep.set_token(None)
                continue
            if action is Action.DROP_AUTH:
                ep.set_token("")  # etcd has auth off: go on without a token
                self.user = None
                continue
            if action is Action.UNKNOWN:
                raise fl.outcome_unknown(
                    details, op=op, keys=keys, endpoint=ep.address, timeout=budget,
                    deadline=f is Failure.DEADLINE,
                ) from err  # fmt: skip
            if action is Action.RETRY:
                # (debug: which failure let a call be sent again is what a test of "never
                # re-sent" needs to see when it fails)
                log.debug("etcd %s at %s: %s failure, sending again: %s", op, ep.address,
                          f.value, fl.short(details))  # fmt: skip
                self.failed(ep)
                tried += 1
                last = (f, details, ep.address)
                if tried % len(self.endpoints) == 0:  # a full round failed: back off
                    time.sleep(max(min(backoff, deadline - time.monotonic()), 0))
                    backoff = min(backoff * 2, RETRY_BACKOFF[1])
                if deadline - time.monotonic() > 0.001:
                    continue
            if f is Failure.DEADLINE:
                raise self._timeout_error(last, ep, op, budget, details) from err
            raise self.error(f, details, ep.address, op, budget) from err
