"""The synchronous etcd v3 client."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Unpack

import grpc
from google.protobuf.message import Message

from rpcjob.etcd import _convert as cv
from rpcjob.etcd import values
from rpcjob.etcd._conn import ClientSettings, Conn
from rpcjob.etcd._failures import Failure, classify
from rpcjob.etcd._lease import KeepAlive, LostCallback
from rpcjob.etcd._pb import rpc_pb2 as pb
from rpcjob.etcd._watch import Watch, WatchCallback, WatchErrorCallback, WatchMux
from rpcjob.etcd.errors import EtcdError
from rpcjob.etcd.values import (
    KV,
    Bytesish,
    Compare,
    Lease,
    Op,
    describe_keys,
    read_only,
    to_bytes,
    written_keys,
)

__all__ = ["Client", "ClientSettings", "KeepAlive", "Watch"]

# Auth methods that only read, so may be sent again; admin writes are not re-sent.
_AUTH_READS = ("Authenticate", "AuthStatus", "UserGet", "UserList", "RoleGet", "RoleList")


class Client:
    """A thin, thread-safe etcd v3 client over grpcio.

    ``endpoints``: ``"host:port"`` items or one comma-separated string; on a connection failure
    the next endpoint is tried. Reads (range, read-only txn), lease and status calls are retried
    across endpoints within ``timeout`` seconds (or the call's ``timeout=``); a write (put,
    delete, txn that writes) is sent again only when it certainly never reached etcd,
    otherwise :class:`EtcdOutcomeUnknown` says its outcome is unknown (as etcd's Go client).
    TLS: ``ca`` (PEM path), ``cert`` + ``key`` (client certificate). Auth: ``user`` +
    ``password``; the token is renewed when etcd rejects it. Settings come only as arguments
    (no environment); ``names`` says how error messages name them. Fork-safe: a child process builds
    its own channels (and watch stream) on first use and never touches the inherited ones.
    """

    def __init__(
        self,
        endpoints: str | Sequence[str],
        *,
        timeout: float = 5.0,
        **settings: Unpack[ClientSettings],
    ) -> None:
        self._conn = Conn(endpoints, timeout=timeout, **settings)
        self._mux = WatchMux(self._conn)
        self._keepalives: list[KeepAlive] = []
        self._ka_lock = threading.Lock()

    @property
    def endpoints(self) -> list[str]:
        return list(self._conn.endpoints)

    @property
    def revision(self) -> int:
        """The highest etcd revision seen in any response of this client (0 before the
        first). Read before a write, it bounds what etcd held before the write was sent: a
        key whose mod_revision is not above it has not been written since (by anyone)."""
        return self._conn.revision

    # --- KV -----------------------------------------------------------------------------------
    def get(self, key: Bytesish, *, timeout: float | None = None) -> KV | None:
        r: pb.RangeResponse = self._conn.call(
            "kv", "Range", pb.RangeRequest(key=to_bytes(key)), repeatable=True, op="get",
            timeout=timeout,
        )  # fmt: skip
        return cv.kv(r.kvs[0]) if r.kvs else None

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
        timeout: float | None = None,
    ) -> values.RangeResult:
        """Keys ``key`` (or with ``prefix``, or in ``[key, range_end)``), at ``revision``
        (0 = latest)."""
        k = to_bytes(key)
        req = pb.RangeRequest(
            key=k,
            range_end=cv.range_end(k, prefix, range_end),
            keys_only=keys_only,
            count_only=count_only,
            limit=limit,
            revision=revision,
        )
        r: pb.RangeResponse = self._conn.call(
            "kv", "Range", req, repeatable=True, op="range", timeout=timeout
        )
        return cv.range_result(r)

    def get_prefix(self, prefix: Bytesish, *, timeout: float | None = None) -> list[KV]:
        return self.range(prefix, prefix=True, timeout=timeout).kvs

    def put(
        self,
        key: Bytesish,
        value: Bytesish,
        *,
        lease: int = 0,
        prev_kv: bool = False,
        timeout: float | None = None,
    ) -> values.PutResult:
        """Set ``key``; never re-sent once it may have reached etcd (EtcdOutcomeUnknown)."""
        k = to_bytes(key)
        req = pb.PutRequest(key=k, value=to_bytes(value), lease=lease, prev_kv=prev_kv)
        r: pb.PutResponse = self._conn.call("kv", "Put", req, repeatable=False, op="put",
                            keys=describe_keys([k]), timeout=timeout)  # fmt: skip
        return cv.put_result(r)

    def delete(
        self,
        key: Bytesish,
        *,
        prefix: bool = False,
        prev_kv: bool = False,
        timeout: float | None = None,
    ) -> values.DeleteResult:
        """Delete ``key`` (or the prefix); never re-sent once it may have reached etcd."""
        k = to_bytes(key)
        req = pb.DeleteRangeRequest(key=k, range_end=cv.range_end(k, prefix), prev_kv=prev_kv)
        what = f"prefix {k.decode(errors='replace')!r}" if prefix else describe_keys([k])
        r: pb.DeleteRangeResponse = self._conn.call(
            "kv", "DeleteRange", req, repeatable=False, op="delete", keys=what, timeout=timeout
        )
        return cv.delete_result(r)

    def txn(
        self,
        compare: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
        *,
        timeout: float | None = None,
    ) -> values.TxnResult:
        """Atomically: if every ``compare`` holds, run ``success``, else ``failure``. Re-sent
        like a range only when it only reads (else see EtcdOutcomeUnknown)."""
        ops = [*success, *failure]
        req = cv.txn_request(compare, success, failure)
        r: pb.TxnResponse = self._conn.call("kv", "Txn", req, repeatable=read_only(ops), op="txn",
                            keys=describe_keys(written_keys(ops)), timeout=timeout)  # fmt: skip
        return cv.txn_result(r)

    # --- leases -------------------------------------------------------------------------------
    def lease_grant(self, ttl: int, lease_id: int = 0, *, timeout: float | None = None) -> Lease:
        req = pb.LeaseGrantRequest(TTL=ttl, ID=lease_id)
        r: pb.LeaseGrantResponse = self._conn.call(
            "lease", "LeaseGrant", req, repeatable=True, op="lease grant", timeout=timeout
        )
        if r.error:
            raise EtcdError(f"etcd refused lease grant (ttl={ttl}): {r.error}")
        return Lease(r.ID, r.TTL)

    def lease_revoke(self, lease_id: int, *, timeout: float | None = None) -> None:
        """Revoke the lease (its keys are deleted); an unknown lease is not an error."""
        req = pb.LeaseRevokeRequest(ID=lease_id)
        try:
            self._conn.call(
                "lease", "LeaseRevoke", req, repeatable=True, op="lease revoke", timeout=timeout
            )
        except EtcdError as e:
            cause = e.__cause__
            if not isinstance(cause, grpc.RpcError) or (
                classify(cause.code(), cause.details() or "", have_user=False)
                is not Failure.LEASE_NOT_FOUND
            ):
                raise

    def lease_keepalive_once(self, lease_id: int, *, timeout: float | None = None) -> int:
        """Refresh the lease once; returns the remaining TTL, 0 when the lease is gone."""
        req = pb.LeaseKeepAliveRequest(ID=lease_id)
        try:
            r: pb.LeaseKeepAliveResponse = self._conn.call(
                "", "keepalive_once", req, repeatable=True, op="lease keepalive", timeout=timeout
            )
        except StopIteration:
            return 0
        return int(r.TTL)

    def lease_ttl(self, lease_id: int, *, timeout: float | None = None) -> int:
        """Remaining TTL in seconds, -1 when the lease is gone."""
        req = pb.LeaseTimeToLiveRequest(ID=lease_id)
        r: pb.LeaseTimeToLiveResponse = self._conn.call(
            "lease", "LeaseTimeToLive", req, repeatable=True, op="lease ttl", timeout=timeout
        )
        return int(r.TTL)

    def keepalive(self, lease: Lease, on_lost: LostCallback | None = None) -> KeepAlive:
        """Refresh ``lease`` every TTL/3 on a daemon thread until stopped or lost (see
        :class:`KeepAlive`). Keepalives belong to the process that started them: a fork child
        does not inherit the thread."""
        ka = KeepAlive(
            lambda lid, t: self.lease_keepalive_once(lid, timeout=t), lease, on_lost=on_lost
        )
        with self._ka_lock:
            self._keepalives = [k for k in self._keepalives if k.alive] + [ka]
        return ka

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
        range_end: Bytesish | None = None,
    ) -> Watch:
        """Watch ``key`` (or the prefix, or ``[key, range_end)``) from ``start_revision``
        (0 = from now). Returns at once; events are not lost because the watch starts at the
        given revision. ``callback`` gets each batch of events in revision order, on the
        client's watch thread (keep it short; it may call the client). After a stream error
        the watch resumes from its last seen revision + 1. When it cannot continue
        (compacted: :class:`EtcdCompacted`; permission denied: :class:`EtcdAuthError`) it
        ends: ``on_error`` is called once, ``Watch.error`` is set and ``Watch.done`` fires.
        A fork child that uses the client resumes the inherited watches in the child."""
        k = to_bytes(key)
        end = cv.range_end(k, prefix, range_end)
        w = Watch(self._mux, k, end, start_revision, prev_kv, callback, on_error)
        self._mux.add(w)
        return w

    # --- maintenance --------------------------------------------------------------------------
    def status(self, *, timeout: float | None = None) -> dict[str, Any]:
        """``{"endpoint", "leader", "member_id", "revision", "raft_term", "version",
        "db_size"}`` of the endpoint in use."""
        r: pb.StatusResponse = self._conn.call(
            "maintenance", "Status", pb.StatusRequest(), repeatable=True, op="status",
            timeout=timeout,
        )  # fmt: skip
        return {
            "endpoint": self._conn.current().address,
            "leader": r.leader,
            "member_id": r.header.member_id,
            "revision": r.header.revision,
            "raft_term": r.raftTerm,
            "version": r.version,
            "db_size": r.dbSize,
        }

    def auth_call(self, method: str, request: Message, *, timeout: float | None = None) -> Any:
        """Call an ``etcdserverpb.Auth`` method (user/role admin; used by test fixtures)."""
        return self._conn.call("auth", method, request, repeatable=method in _AUTH_READS,
                               op=f"auth {method}", keys="auth settings",
                               timeout=timeout)  # fmt: skip

    def close(self) -> None:
        """Stop the watch stream and keepalives, close the channels. Idempotent."""
        self._mux.close()
        with self._ka_lock:
            kas, self._keepalives = self._keepalives, []
        for ka in kas:
            ka.stop()
        self._conn.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
