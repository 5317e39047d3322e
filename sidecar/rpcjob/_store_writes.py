"""EtcdStore's writes: an unknown outcome is settled by reading back, never by a blind re-send.

The etcd client never re-sends a put or delete that may have reached etcd (a late copy could
undo a later write: torch releases its membership token with ``set(token, "")``, and the next
holder may have taken the token by the time a copy would land). The store then reads the keys
back and decides:

* every key already holds what was written (is gone, for a delete): the write took effect;
* every other key is unchanged since before the write was sent (its mod_revision is not above
  the client's revision read before sending): the write did not apply, so it is sent again as
  a txn conditional on those mod_revisions, which cannot overwrite anyone's later write;
* otherwise someone wrote a key after ours was sent (or a key is missing): whether ours
  applied first cannot be known, and the client's :class:`EtcdOutcomeUnknown` is raised.

(A write that etcd had queued but not yet committed when it was read back could still land
later; etcd's own clients share that limit.)
"""

from __future__ import annotations

import time

from rpcjob.etcd import KV, Client, Compare, EtcdOutcomeUnknown, Op, RangeResult


def put_all(client: Client, pairs: list[tuple[bytes, bytes]], budget: float) -> None:
    """Set every key of ``pairs`` atomically (one put, or one txn for several keys)."""
    deadline = time.monotonic() + budget
    before = client.revision
    puts = [Op.put(k, v) for k, v in pairs]
    try:
        if len(pairs) == 1:
            client.put(pairs[0][0], pairs[0][1], timeout=budget)
        else:
            client.txn([], puts, timeout=budget)
        return
    except EtcdOutcomeUnknown as e:
        unknown = e
    while time.monotonic() < deadline:
        kvs = _read(client, [k for k, _ in pairs], deadline)
        pending = [(kv, v) for kv, (_, v) in zip(kvs, pairs, strict=True) if _differs(kv, v)]
        if not pending:
            return  # every key holds its value: the write took effect
        if any(kv is None or kv.mod_revision > before for kv, _ in pending):
            raise unknown  # written since ours was sent (or gone): never overwrite that
        compare = [Compare.mod_revision(kv.key, "=", kv.mod_revision) for kv in kvs if kv]
        if _conditional(client, compare, puts, deadline):
            return
    raise unknown


def delete_one(client: Client, key: bytes, budget: float) -> bool:
    """Delete ``key``; whether it existed. After an unknown outcome a key found gone counts as
    deleted by this call."""
    deadline = time.monotonic() + budget
    before = client.revision
    try:
        return client.delete(key, timeout=budget).deleted > 0
    except EtcdOutcomeUnknown as e:
        unknown = e
    while time.monotonic() < deadline:
        kv = client.get(key, timeout=_left(deadline))
        if kv is None:
            return True
        if kv.mod_revision > before:
            raise unknown  # set again after our delete may have run: never delete that
        compare = [Compare.mod_revision(key, "=", kv.mod_revision)]
        if _conditional(client, compare, [Op.delete(key)], deadline):
            return True
    raise unknown


def _differs(kv: KV | None, value: bytes) -> bool:
    return kv is None or kv.value != value


def _left(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.001)


def _read(client: Client, keys: list[bytes], deadline: float) -> list[KV | None]:
    r = client.txn([], [Op.get(k) for k in keys], timeout=_left(deadline))  # read-only: re-sent
    return [_first(resp) for resp in r.responses]


def _first(resp: object) -> KV | None:
    return resp.kvs[0] if isinstance(resp, RangeResult) and resp.kvs else None


def _conditional(client: Client, compare: list[Compare], ops: list[Op], deadline: float) -> bool:
    """Send ``ops`` if ``compare`` holds; False when it did not (or the outcome is unknown
    again): the caller reads the keys once more."""
    try:
        return client.txn(compare, ops, timeout=_left(deadline)).succeeded
    except EtcdOutcomeUnknown:
        return False
