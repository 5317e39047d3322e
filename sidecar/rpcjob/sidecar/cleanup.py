"""Crash eviction: the pure decision of what to take over, rewrite, delete and release in
torch's store after members died (docs/architecture.md#recovery). The executor is
:mod:`rpcjob.sidecar.cleaner`.

The decision is level-triggered: it compares torch's own view (``_ALL_WORKER_INFOS``, the
membership token, ``names/<rank>``, ``addrs/<name>``) with the live rank records in etcd, so a
cleaner that dies half-way is simply replaced by the next one, which recomputes the same plan.

A torch identity ``<name>-<rank>`` is *live* while ``ranks/<rank>`` exists and names ``<name>``
(the rank record is bound to its incarnation's lease and written before the worker joins).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rpcjob import contract as c
from rpcjob.torchkeys import (
    CLEANER_TOKEN,
    format_worker_infos,
    parse_worker_infos,
    token_holder,
)

Identity = tuple[str, int]  # (worker name, rank)


def torch_key(keys: c.JobKeys, key: str) -> str:
    """The etcd key of a torch key relative to the c10d store root (see rpcjob.torchkeys)."""
    return keys.store + key


@dataclass(frozen=True)
class LiveRank:
    rank: int
    worker: str
    create_revision: int


@dataclass(frozen=True)
class EvictRequest:
    name: str
    rank: int
    created: float  # cleaner's wall clock (time.time()) when published


@dataclass
class StoreState:
    """What the cleaner reads, in one etcd snapshot."""

    live: dict[int, LiveRank]
    token: str | None = None  # None: the key does not exist
    all_infos: str | None = None
    names: dict[int, str] = field(default_factory=dict)  # names/<rank> -> name
    addrs: set[str] = field(default_factory=set)  # names with an addrs/<name> key
    evicts: dict[Identity, EvictRequest] = field(default_factory=dict)
    acks: dict[Identity, set[int]] = field(default_factory=dict)  # -> acking ranks
    waiters: set[str] = field(default_factory=set)  # holder tokens taken over


@dataclass
class CleanupPlan:
    dead: list[Identity] = field(default_factory=list)
    # Compare-and-set the token from this value ("" = free or missing) to CLEANER_TOKEN.
    take_token: str | None = None
    wait_for: str | None = None  # a live holder: wait for it
    new_all_infos: str | None = None
    delete_names: dict[int, str] = field(default_factory=dict)
    delete_addrs: list[str] = field(default_factory=list)
    new_evicts: list[Identity] = field(default_factory=list)
    release: bool = False
    done: list[Identity] = field(default_factory=list)  # requests the release completes
    expired: list[Identity] = field(default_factory=list)  # of which: released by deadline
    unknown_token: str | None = None

    @property
    def idle(self) -> bool:
        return not (
            self.take_token is not None
            or self.new_all_infos is not None
            or self.delete_names
            or self.delete_addrs
            or self.new_evicts
            or self.release
        )


def plan_cleanup(state: StoreState, now: float, ack_deadline: float) -> CleanupPlan:
    """Decide the next step of crash cleanup.

    The token is needed to rewrite ``_ALL_WORKER_INFOS`` (torch edits it under the token) and is
    held until every live incarnation acked the eviction (or ``ack_deadline`` seconds passed, so
    that a hung survivor cannot wedge the group; a survivor that dies stops being required).
    """
    plan = CleanupPlan()
    live_names = {lr.worker for lr in state.live.values()}

    def is_live(name: str, rank: int) -> bool:
        lr = state.live.get(rank)
        return lr is not None and lr.worker == name

    entries = parse_worker_infos(state.all_infos or "")
    plan.dead = [(n, r) for n, r in entries if not is_live(n, r)]
    plan.delete_names = {r: n for r, n in state.names.items() if not is_live(n, r)}
    plan.delete_addrs = sorted(a for a in state.addrs if a not in live_names)

    holder = state.token or ""
    mine = holder == CLEANER_TOKEN  # one elected cleaner at a time: a predecessor's is ours
    holder_dead = False
    if holder and not mine:
        who = token_holder(holder)
        if who is None:
            plan.unknown_token = holder  # no live torch worker holds such a value: take it
            holder_dead = True
        elif who[0] not in live_names:
            holder_dead = True

    needs_token = bool(plan.dead) or holder_dead or bool(state.evicts)
    if not needs_token:
        plan.release = mine
        return plan
    if holder and not mine and not holder_dead:
        plan.wait_for = holder  # a live joiner/leaver
        return plan
    if not mine:
        plan.take_token = holder
        return plan  # edits happen once the token is ours (next step, fresh snapshot)

    if plan.dead:
        plan.new_all_infos = format_worker_infos([e for e in entries if e not in plan.dead])
    plan.new_evicts = [d for d in plan.dead if d not in state.evicts]
    if plan.new_evicts:
        return plan  # acks come after the requests are published
    for ident, req in sorted(state.evicts.items()):
        acked = state.acks.get(ident, set())
        missing = [r for r in state.live if r not in acked]
        if missing and now < req.created + ack_deadline:
            return plan  # still waiting
        plan.done.append(ident)
        if missing:
            plan.expired.append(ident)
    plan.release = True
    return plan


def name_is_clean(state: StoreState, name: str) -> bool:
    """May a new incarnation of ``name`` take a rank? Only once its old identity is evicted:
    torch refuses a duplicate name in ``_ALL_WORKER_INFOS`` and a waiter on a dead holder's
    token would otherwise wait on the dead."""
    if any(n == name for n, _ in parse_worker_infos(state.all_infos or "")):
        return False
    holder = token_holder(state.token or "")
    if holder is not None and holder[0] == name:
        return False
    return not any(n == name for n, _ in state.evicts)
