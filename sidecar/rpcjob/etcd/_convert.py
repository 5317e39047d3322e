"""Pure conversions between our values (values.py) and etcd's protobuf messages."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from rpcjob.etcd._pb import kv_pb2
from rpcjob.etcd._pb import rpc_pb2 as pb
from rpcjob.etcd.values import (
    _OPS,
    KV,
    Compare,
    DeleteResult,
    Op,
    PutResult,
    RangeResult,
    TxnResult,
    WatchEvent,
)

_TARGETS = {"version": 0, "create_revision": 1, "mod_revision": 2, "value": 3, "lease": 4}


def prefix_end(prefix: bytes) -> bytes:
    """The range end that covers every key starting with ``prefix`` (etcd's GetPrefixRangeEnd)."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"  # every key


def kv(m: kv_pb2.KeyValue) -> KV:
    return KV(m.key, m.value, m.create_revision, m.mod_revision, m.version, m.lease)


def opt_kv(parent: pb.PutResponse | kv_pb2.Event) -> KV | None:
    return kv(parent.prev_kv) if parent.HasField("prev_kv") else None


def range_request(
    key: bytes,
    *,
    prefix: bool = False,
    range_end: bytes | None = None,
    keys_only: bool = False,
    count_only: bool = False,
    limit: int = 0,
    revision: int = 0,
) -> pb.RangeRequest:
    end = prefix_end(key) if prefix else (range_end or b"")
    return pb.RangeRequest(
        key=key,
        range_end=end,
        keys_only=keys_only,
        count_only=count_only,
        limit=limit,
        revision=revision,
    )


def range_result(r: pb.RangeResponse) -> RangeResult:
    return RangeResult([kv(m) for m in r.kvs], r.count, r.header.revision)


def put_result(r: pb.PutResponse) -> PutResult:
    return PutResult(r.header.revision, opt_kv(r))


def delete_request(key: bytes, prefix: bool, prev_kv: bool) -> pb.DeleteRangeRequest:
    return pb.DeleteRangeRequest(
        key=key, range_end=prefix_end(key) if prefix else b"", prev_kv=prev_kv
    )


def delete_result(r: pb.DeleteRangeResponse) -> DeleteResult:
    return DeleteResult(r.deleted, r.header.revision, [kv(m) for m in r.prev_kvs])


def compare_pb(c: Compare) -> pb.Compare:
    m = pb.Compare(
        result=_OPS[c.op],  # type: ignore[arg-type]  # the enum's int values
        target=_TARGETS[c.target],  # type: ignore[arg-type]
        key=c.key,
        range_end=c.range_end,
    )
    setattr(m, c.target, c.operand)  # the oneof field named like the target
    return m


def request_op(op: Op) -> pb.RequestOp:
    if op.kind == "get":
        return pb.RequestOp(request_range=range_request(op.key, prefix=op.prefix))
    if op.kind == "put":
        return pb.RequestOp(request_put=pb.PutRequest(key=op.key, value=op.value, lease=op.lease))
    if op.kind == "delete":
        return pb.RequestOp(request_delete_range=delete_request(op.key, op.prefix, False))
    return pb.RequestOp(request_txn=txn_request(op.compare, op.success, op.failure))


def txn_request(
    compare: Iterable[Compare], success: Iterable[Op], failure: Iterable[Op]
) -> pb.TxnRequest:
    return pb.TxnRequest(
        compare=[compare_pb(c) for c in compare],
        success=[request_op(o) for o in success],
        failure=[request_op(o) for o in failure],
    )


def txn_result(r: pb.TxnResponse, revision: int = 0) -> TxnResult:
    revision = r.header.revision or revision  # etcd leaves nested txn headers empty
    out: list[RangeResult | PutResult | DeleteResult | TxnResult] = []
    for resp in r.responses:
        which = resp.WhichOneof("response")
        if which == "response_range":
            out.append(range_result(resp.response_range))
        elif which == "response_put":
            out.append(put_result(resp.response_put))
        elif which == "response_delete_range":
            out.append(delete_result(resp.response_delete_range))
        else:
            out.append(txn_result(resp.response_txn, revision))
    return TxnResult(r.succeeded, revision, out)


def watch_events(events: Sequence[kv_pb2.Event]) -> list[WatchEvent]:
    return [WatchEvent("DELETE" if e.type else "PUT", kv(e.kv), opt_kv(e)) for e in events]


def watch_create(
    key: bytes, range_end: bytes, start_revision: int, prev_kv: bool
) -> pb.WatchRequest:
    return pb.WatchRequest(
        create_request=pb.WatchCreateRequest(
            key=key, range_end=range_end, start_revision=start_revision, prev_kv=prev_kv
        )
    )


def watch_cancel(watch_id: int) -> pb.WatchRequest:
    return pb.WatchRequest(cancel_request=pb.WatchCancelRequest(watch_id=watch_id))


def status_dict(endpoint: str, r: pb.StatusResponse) -> dict[str, Any]:
    return {
        "endpoint": endpoint,
        "leader": r.leader,
        "member_id": r.header.member_id,
        "revision": r.header.revision,
        "raft_term": r.raftTerm,
        "version": r.version,
        "db_size": r.dbSize,
    }
