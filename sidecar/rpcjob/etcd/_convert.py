"""Pure conversions between our values (values.py) and etcd's protobuf messages."""

from __future__ import annotations

from typing import Any

from rpcjob.etcd._pb import rpc_pb2 as _rpc_pb2
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

# The generated modules build their classes at run time: mypy sees them as Any.
pb: Any = _rpc_pb2

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


def kv(m: Any) -> KV:
    return KV(m.key, m.value, m.create_revision, m.mod_revision, m.version, m.lease)


def opt_kv(parent: Any, field: str) -> KV | None:
    return kv(getattr(parent, field)) if parent.HasField(field) else None


def range_request(
    key: bytes,
    *,
    prefix: bool = False,
    range_end: bytes | None = None,
    keys_only: bool = False,
    count_only: bool = False,
    limit: int = 0,
    revision: int = 0,
) -> Any:
    end = prefix_end(key) if prefix else (range_end or b"")
    return pb.RangeRequest(
        key=key,
        range_end=end,
        keys_only=keys_only,
        count_only=count_only,
        limit=limit,
        revision=revision,
    )


def range_result(r: Any) -> RangeResult:
    return RangeResult([kv(m) for m in r.kvs], r.count, r.header.revision)


def put_result(r: Any) -> PutResult:
    return PutResult(r.header.revision, opt_kv(r, "prev_kv"))


def delete_request(key: bytes, prefix: bool, prev_kv: bool) -> Any:
    return pb.DeleteRangeRequest(
        key=key, range_end=prefix_end(key) if prefix else b"", prev_kv=prev_kv
    )


def delete_result(r: Any) -> DeleteResult:
    return DeleteResult(r.deleted, r.header.revision, [kv(m) for m in r.prev_kvs])


def compare_pb(c: Compare) -> Any:
    m = pb.Compare(result=_OPS[c.op], target=_TARGETS[c.target], key=c.key, range_end=c.range_end)
    setattr(m, c.target, c.operand)
    return m


def request_op(op: Op) -> Any:
    if op.kind == "get":
        return pb.RequestOp(request_range=range_request(op.key, prefix=op.prefix))
    if op.kind == "put":
        return pb.RequestOp(request_put=pb.PutRequest(key=op.key, value=op.value, lease=op.lease))
    if op.kind == "delete":
        return pb.RequestOp(request_delete_range=delete_request(op.key, op.prefix, False))
    return pb.RequestOp(request_txn=txn_request(op.compare, op.success, op.failure))


def txn_request(compare: Any, success: Any, failure: Any) -> Any:
    return pb.TxnRequest(
        compare=[compare_pb(c) for c in compare],
        success=[request_op(o) for o in success],
        failure=[request_op(o) for o in failure],
    )


def txn_result(r: Any, revision: int = 0) -> TxnResult:
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


def watch_events(events: Any) -> list[WatchEvent]:
    return [
        WatchEvent("DELETE" if e.type else "PUT", kv(e.kv), opt_kv(e, "prev_kv")) for e in events
    ]


def watch_create(key: bytes, range_end: bytes, start_revision: int, prev_kv: bool) -> Any:
    return pb.WatchRequest(
        create_request=pb.WatchCreateRequest(
            key=key, range_end=range_end, start_revision=start_revision, prev_kv=prev_kv
        )
    )


def watch_cancel(watch_id: int) -> Any:
    return pb.WatchRequest(cancel_request=pb.WatchCancelRequest(watch_id=watch_id))


def status_dict(endpoint: str, r: Any) -> dict[str, Any]:
    return {
        "endpoint": endpoint,
        "leader": r.leader,
        "member_id": r.header.member_id,
        "revision": r.header.revision,
        "raft_term": r.raftTerm,
        "version": r.version,
        "db_size": r.dbSize,
    }
