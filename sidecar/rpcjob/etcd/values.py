"""Plain values of the etcd client: key-values, results, compares, ops, leases, watch events.

Keys and values are accepted as ``str`` (UTF-8 encoded) or ``bytes``; returned keys and
values are always ``bytes``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

Bytesish = str | bytes
CompareOp = Literal["=", "!=", "<", ">"]
CompareTarget = Literal["version", "create_revision", "mod_revision", "value", "lease"]


def to_bytes(v: Bytesish) -> bytes:
    return v.encode() if isinstance(v, str) else v


@dataclass(frozen=True, slots=True)
class KV:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int


@dataclass(frozen=True, slots=True)
class RangeResult:
    kvs: list[KV]
    count: int
    revision: int


@dataclass(frozen=True, slots=True)
class PutResult:
    revision: int
    prev: KV | None


@dataclass(frozen=True, slots=True)
class DeleteResult:
    deleted: int
    revision: int
    prev: list[KV]


@dataclass(frozen=True, slots=True)
class TxnResult:
    succeeded: bool
    revision: int
    responses: list[RangeResult | PutResult | DeleteResult | TxnResult]


_OPS: dict[str, int] = {"=": 0, ">": 1, "<": 2, "!=": 3}  # etcdserverpb.Compare.CompareResult


def _numeric(target: CompareTarget) -> Callable[[type[Compare], Bytesish, CompareOp, int], Compare]:
    """The constructor of a Compare whose operand is a number (all targets but ``value``)."""

    def make(cls: type[Compare], key: Bytesish, op: CompareOp, number: int) -> Compare:
        return cls(target, to_bytes(key), op, int(number))

    return make


@dataclass(frozen=True, slots=True)
class Compare:
    """One comparison of a txn: ``Compare.value(key, "=", b"x")``, ``Compare.version(k, "=", 0)``.

    ``range_end`` (optional) compares every key in ``[key, range_end)``.
    """

    target: CompareTarget
    key: bytes
    op: CompareOp
    operand: bytes | int
    range_end: bytes = b""

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise ValueError(f"compare op {self.op!r} is invalid: use one of '=', '!=', '<', '>'")

    @classmethod
    def value(cls, key: Bytesish, op: CompareOp, value: Bytesish) -> Compare:
        return cls("value", to_bytes(key), op, to_bytes(value))

    # The key's version, create/mod revision or lease id against a number.
    version = classmethod(_numeric("version"))
    create_revision = classmethod(_numeric("create_revision"))
    mod_revision = classmethod(_numeric("mod_revision"))
    lease = classmethod(_numeric("lease"))


@dataclass(frozen=True, slots=True)
class Op:
    """One operation of a txn: ``Op.get``, ``Op.put``, ``Op.delete`` or a nested ``Op.txn``."""

    kind: Literal["get", "put", "delete", "txn"]
    key: bytes = b""
    value: bytes = b""
    prefix: bool = False
    lease: int = 0
    compare: tuple[Compare, ...] = ()
    success: tuple[Op, ...] = ()
    failure: tuple[Op, ...] = ()

    @classmethod
    def get(cls, key: Bytesish, prefix: bool = False) -> Op:
        return cls("get", to_bytes(key), prefix=prefix)

    @classmethod
    def put(cls, key: Bytesish, value: Bytesish, lease: int = 0) -> Op:
        return cls("put", to_bytes(key), to_bytes(value), lease=lease)

    @classmethod
    def delete(cls, key: Bytesish, prefix: bool = False) -> Op:
        return cls("delete", to_bytes(key), prefix=prefix)

    @classmethod
    def txn(
        cls, compare: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> Op:
        return cls("txn", compare=tuple(compare), success=tuple(success), failure=tuple(failure))


@dataclass(frozen=True, slots=True)
class Lease:
    id: int
    ttl: int


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: Literal["PUT", "DELETE"]
    kv: KV
    prev_kv: KV | None


def read_only(ops: Sequence[Op]) -> bool:
    """Whether a txn branch only reads (nested txns included): such a txn may be re-sent."""
    return all(
        op.kind == "get" or (op.kind == "txn" and read_only(op.success + op.failure)) for op in ops
    )


def written_keys(ops: Sequence[Op]) -> list[bytes]:
    """The keys a txn branch writes (nested txns included), in order, without repeats."""
    out: list[bytes] = []
    for op in ops:
        keys = written_keys(op.success + op.failure) if op.kind == "txn" else [op.key]
        out += [k for k in keys if op.kind != "get" and k not in out]
    return out


def describe_keys(keys: Sequence[bytes], *, most: int = 3) -> str:
    """``key '/a'`` or ``keys '/a', '/b' and 2 more`` for error messages."""
    names = [repr(k.decode(errors="replace")) for k in keys[:most]]
    more = f" and {len(keys) - most} more" if len(keys) > most else ""
    return f"key{'s' if len(keys) > 1 else ''} {', '.join(names)}{more}"
