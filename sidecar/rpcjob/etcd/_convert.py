"""Pure conversions between our values (values.py) and etcd's protobuf messages."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from rpcjob.etcd._pb import kv_pb2
from rpcjob.etcd._pb import rpc_pb2 as pb
from rpcjob.etcd.values import (
    _OPS,
    KV,
    Bytesish,
    Compare,
    DeleteResult,
    Op,
    PutResult,
    RangeResult,
    TxnResult,
    WatchEvent,
    to_bytes,
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


def range_end(key: bytes, prefix: bool, end: Bytesish | None = None) -> bytes:
    """The range_end field: every key under ``key`` (prefix), up to ``end``, or ``key`` alone."""
    return prefix_end(key) if prefix else to_bytes(end or b"")


def kv(m: kv_pb2.KeyValue) -> KV:
    return KV(m.key, m.value, m.create_revision, m.mod_revision, m.version, m.lease)


def opt_kv(parent: pb.PutResponse | kv_pb2.Event) -> KV | None:
    return kv(parent.prev_kv) if parent.HasField("prev_kv") else None


def range_result(r: pb.RangeResponse) -> RangeResult:
    return RangeResult([kv(m) for m in r.kvs], r.count, r.header.revision)


def put_result(r: pb.PutResponse) -> PutResult:
    return PutResult(r.header.revision, opt_kv(r))


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
    end = range_end(op.key, op.prefix)
    if op.kind == "get":
        return pb.RequestOp(request_range=pb.RangeRequest(key=op.key, range_end=end))
    if op.kind == "put":
        return pb.RequestOp(request_put=pb.PutRequest(key=op.key, value=op.value, lease=op.lease))
    if op.kind == "delete":
        return pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=op.key, range_end=end))
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


def watch_cancel(watch_id: int) -> pb.WatchRequest:
    return pb.WatchRequest(cancel_request=pb.WatchCancelRequest(watch_id=watch_id))
