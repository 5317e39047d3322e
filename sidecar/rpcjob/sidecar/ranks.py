"""Rank allocation: a fresh torch rank per incarnation, never one a live member may still know.

Keys (docs/contract.md): ``ranks/<r>`` is the allocation, bound to the incarnation's lease;
``ranks-retired/<r>`` is written in the same txn (no lease) and outlives it, recording that
``r`` was used. ``{"retired": 0}`` means "in use, or its end not yet stamped"; once
``ranks/<r>`` is gone the next allocator stamps the revision it observed the absence at (an
upper bound of the real end: conservative). A retired rank is reusable only when every live
incarnation was allocated after that revision: a member that knew the old incarnation keeps a
stale pipe to it (docs/architecture.md#identity).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from rpcjob import contract as c
from rpcjob import torchkeys as tk
from rpcjob.etcd import KV, Client, Compare, Op

from .cleaner import kvs_of

# A worker process that retries its join keeps its first rank as its dist-autograd worker id
# (torch allows one per process): ``ranks/<first>`` is re-put with ``"worker": ""`` (not a
# torch identity: the cleaner ignores it) under each retry's lease, so no other incarnation
# gets that rank while the process lives.
RESERVED = "the rank reserved as this worker process's dist-autograd id"


# --- what one allocation attempt gives ----------------------------------------------------
@dataclass(frozen=True)
class Allocated:
    rank: int
    revision: int  # of the allocation txn: the incarnation id


@dataclass(frozen=True)
class Again:  # raced another allocator, or stamped ended ranks first: try again at once
    why: str


@dataclass(frozen=True)
class Wait:  # the space is exhausted, or our ended incarnation still holds the reserved rank
    why: str


@dataclass(frozen=True)
class ReserveLost:  # another incarnation holds the rank reserved for this process: restart it
    why: str


Allocation = Allocated | Again | Wait | ReserveLost


@dataclass(frozen=True)
class RankChoice:
    rank: int
    retired_mod_revision: int  # 0: never used (the retired key must still be absent)


def retired_value(retired_rev: int, worker: str) -> str:
    return json.dumps({"retired": retired_rev, "worker": worker}, sort_keys=True)


def parse_retired(value: bytes) -> int:
    try:
        return int(json.loads(value).get("retired", 0))
    except (ValueError, AttributeError):
        return 0


def to_stamp(held: Iterable[int], retired: dict[int, tuple[int, int]]) -> list[int]:
    """Ranks whose allocation ended but whose end revision is not recorded yet."""
    h = set(held)
    return sorted(r for r, (rev, _) in retired.items() if rev == 0 and r not in h)


def choose_rank(
    space: int,
    held: Iterable[int],
    retired: dict[int, tuple[int, int]],
    live_create_revisions: Iterable[int],
) -> RankChoice | None:
    """The lowest safe rank, or None when the space is exhausted.

    ``retired``: rank -> (retired revision, 0 = not stamped; mod revision of the retired key).
    A never-used rank is safe; a retired one only when it was stamped before every live
    incarnation's allocation (``live_create_revisions``).
    """
    h = set(held)
    oldest = min(live_create_revisions, default=None)
    for r in range(space):
        if r in h:
            continue
        if r not in retired:
            return RankChoice(r, 0)
        rev, mod = retired[r]
        if rev > 0 and (oldest is None or rev < oldest):
            return RankChoice(r, mod)
    return None


def describe_exhaustion(
    space: int, held: Iterable[int], retired: dict[int, tuple[int, int]]
) -> str:
    h = sorted(held)
    waiting = sorted(r for r in retired if r not in set(h))
    return (
        f"rank space exhausted: {c.ENV_RANK_SPACE}={space}, held by live incarnations: {h}, "
        f"retired ranks not yet safe to reuse (a live member joined before they ended): "
        f"{waiting}; waiting for members to leave — raise {c.ENV_RANK_SPACE} to avoid this"
    )


def allocate_once(
    client: Client,
    keys: c.JobKeys,
    lease: int,
    worker: str,
    record: Mapping[str, object],
    space: int,
    reserve: int | None = None,
) -> Allocation:
    """One allocation attempt.

    ``reserve``: a rank to hold too, under the same lease (see RESERVED); ReserveLost when
    another incarnation holds it already.
    """
    snap = client.txn(
        [], [Op.get(keys.ranks, prefix=True), Op.get(keys.retired_ranks, prefix=True)]
    )
    held_kvs, retired_kvs = (kvs_of(r) for r in snap.responses)
    held = {int(kv.key.decode().rsplit("/", 1)[1]): kv.create_revision for kv in held_kvs}
    retired = {
        int(kv.key.decode().rsplit("/", 1)[1]): (parse_retired(kv.value), kv.mod_revision)
        for kv in retired_kvs
    }
    stamps = to_stamp(held, retired)
    if stamps:
        # The allocation ended at or before this snapshot's revision: record that bound.
        for r in stamps:
            _, mod = retired[r]
            client.txn(
                [Compare.version(keys.rank(r), "=", 0),
                 Compare.mod_revision(keys.retired_rank(r), "=", mod)],
                [Op.put(keys.retired_rank(r), retired_value(snap.revision, ""))],
            )  # fmt: skip
        return Again("stamped ended ranks")
    if reserve is not None and reserve in held:
        kv = next(kv for kv in held_kvs if kv.key.decode() == keys.rank(reserve))
        rec = json.loads(kv.value)
        if worker in (rec.get("worker"), rec.get("reserved_by")):
            # our ended incarnation's lease could not be revoked: it expires within the TTL
            return Wait(f"waiting for rank {reserve} of an ended incarnation of {worker} to expire")
        return ReserveLost(f"{RESERVED} ({reserve}) is held by another incarnation: "
                           "restart the worker")  # fmt: skip
    taken = [*held, *([] if reserve is None else [reserve])]
    choice = choose_rank(space, taken, retired, held.values())
    if choice is None:
        return Wait(describe_exhaustion(space, held, retired))

    def claim(rank: int, retired_mod: int, **fields: str) -> tuple[list[Compare], list[Op]]:
        value = json.dumps({**record, **fields, "rank": rank})
        return (
            [Compare.version(keys.rank(rank), "=", 0),
             Compare.mod_revision(keys.retired_rank(rank), "=", retired_mod)],
            [Op.put(keys.rank(rank), value, lease=lease),
             Op.put(keys.retired_rank(rank), retired_value(0, worker))],
        )  # fmt: skip

    r = choice.rank
    compare, ops = claim(r, choice.retired_mod_revision, worker=worker)
    if reserve is not None:
        kept = claim(reserve, retired.get(reserve, (0, 0))[1], worker="", reserved_by=worker)
        compare, ops = compare + kept[0], kept[1] + ops
    # torch never deletes names/<rank> on a graceful leave; a reused rank must not find the
    # previous owner's name there (torch would refuse the join).
    res = client.txn(compare, [*ops, Op.delete(keys.store + tk.name_key(r))])
    return Allocated(r, res.revision) if res.succeeded else Again("raced")


def predecessor_leases(rank_kvs: Iterable[KV], worker: str) -> list[int]:
    """Leases of earlier incarnations of ``worker`` still holding a rank (or a reserved one).

    A sidecar starts only once its slot's previous pod is gone (pod names are unique, and the
    operator creates a slot's replacement after the old pod is gone), or in that same pod after
    its own sidecar died, which ends the worker too. So at sidecar start every such incarnation
    is dead, and its lease can be revoked at once instead of waiting for its TTL.
    """
    out = set()
    for kv in rank_kvs:
        try:
            rec = json.loads(kv.value)
        except ValueError:
            continue
        mine = isinstance(rec, dict) and worker in (rec.get("worker"), rec.get("reserved_by"))
        if mine and kv.lease:
            out.add(kv.lease)
    return sorted(out)
