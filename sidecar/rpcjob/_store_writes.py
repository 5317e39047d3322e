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
from collections.abc import Sequence

from rpcjob.etcd import KV, Client, Compare, EtcdOutcomeUnknown, Op, RangeResult

MAX_TXN_OPS = 128  # etcd's default --max-txn-ops: reads and writes of more keys are chunked


def write(client: Client, pairs: Sequence[tuple[bytes, bytes | None]], budget: float) -> bool:
    """Set each key of ``pairs`` to its value, or delete it for ``None``, atomically (one put or
    delete, or one txn for several keys). For a single delete: whether the key existed (after an
    unknown outcome, a key found gone counts as deleted by this call); otherwise True."""
    deadline = time.monotonic() + budget
    before = client.revision
    ops = [Op.put(k, v) if v is not None else Op.delete(k) for k, v in pairs]
    try:
        if len(pairs) > 1:
            client.txn([], ops, timeout=budget)
        elif (value := pairs[0][1]) is None:
            return client.delete(pairs[0][0], timeout=budget).deleted > 0
        else:
            client.put(pairs[0][0], value, timeout=budget)
        return True
    except EtcdOutcomeUnknown as e:
        unknown = e
    while time.monotonic() < deadline:
        kvs = read(client, [k for k, _ in pairs], _left(deadline))
        got = [kv.value if kv else None for kv in kvs]
        pending = [kv for kv, g, (_, v) in zip(kvs, got, pairs, strict=True) if g != v]
        if not pending:
            return True  # every key holds its value (or is gone): the write took effect
        if any(kv is None or kv.mod_revision > before for kv in pending):
            raise unknown  # written since ours was sent (or gone): never overwrite that
        compare = [Compare.mod_revision(kv.key, "=", kv.mod_revision) for kv in kvs if kv]
        if _conditional(client, compare, ops, deadline):
            return True
    raise unknown


def read(client: Client, keys: list[bytes], timeout: float) -> list[KV | None]:
    """Each key's KV (None when missing), by read-only txns, which the client re-sends."""
    out: list[KV | None] = []
    for i in range(0, len(keys), MAX_TXN_OPS):
        r = client.txn([], [Op.get(k) for k in keys[i : i + MAX_TXN_OPS]], timeout=timeout)
        out += [x.kvs[0] if isinstance(x, RangeResult) and x.kvs else None for x in r.responses]
    return out


def _left(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.001)


def _conditional(client: Client, compare: list[Compare], ops: list[Op], deadline: float) -> bool:
    """Send ``ops`` if ``compare`` holds; False when it did not (or the outcome is unknown
    again): the caller reads the keys once more."""
    try:
        return client.txn(compare, ops, timeout=_left(deadline)).succeeded
    except EtcdOutcomeUnknown:
        return False
