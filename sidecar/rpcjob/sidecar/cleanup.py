"""Crash cleanup: the one pure planner of every repair rpcjob makes to torch's keys in the store
(docs/architecture.md#recovery). State in, one action out; :mod:`rpcjob.sidecar.cleaner` is the
executor that applies an action as one guarded etcd txn.

The plan is level-triggered: it compares torch's own view (``_ALL_WORKER_INFOS``, the
membership token, ``names/<rank>``, ``addrs/<name>``) with the live rank records in etcd, so a
cleaner that dies half-way is simply replaced by the next one, which plans the same remaining
steps from the same state.

A torch identity ``<name>-<rank>`` is *live* while ``ranks/<rank>`` exists and names ``<name>``
(the rank record is bound to its incarnation's lease and written before the worker joins).
Torch never removes a crashed member, and a graceful leave leaves ``names/<rank>`` and
``addrs/<name>`` behind: the keys of an identity that is not live are stale.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from rpcjob.torchkeys import (
    CLEANER_TOKEN,
    format_worker_infos,
    parse_worker_infos,
    token_holder,
)

Identity = tuple[str, int]  # (worker name, rank)


@dataclass(frozen=True)
class EvictRequest:
    name: str
    rank: int
    created: float  # cleaner's wall clock (time.time()) when published


@dataclass
class StoreState:
    """What the cleaner reads, in one etcd snapshot."""

    live: dict[int, str]  # ranks/<rank> -> the worker name it is held for
    token: str | None = None  # None: the key does not exist
    all_infos: str | None = None
    names: dict[int, str] = field(default_factory=dict)  # names/<rank> -> name
    addrs: set[str] = field(default_factory=set)  # names with an addrs/<name> key
    evicts: dict[Identity, EvictRequest] = field(default_factory=dict)
    acks: dict[Identity, set[int]] = field(default_factory=dict)  # -> acking ranks
    waiters: set[str] = field(default_factory=set)  # holder tokens taken over


# --- the actions: each is one guarded txn of the executor --------------------------------------
@dataclass(frozen=True)
class DeleteStale:
    """Delete ``names/<rank>`` (only while it still names ``names[rank]``) and ``addrs/<name>``
    of identities that are not live. No token needed: no live worker reads them."""

    names: Mapping[int, str]
    addrs: tuple[str, ...] = ()


@dataclass(frozen=True)
class TakeToken:
    """Compare-and-set the token from ``holder`` ("" = free or missing) to CLEANER_TOKEN."""

    holder: str
    unknown: bool = False  # no torch worker writes such a value: taken over with a warning


@dataclass(frozen=True)
class WaitForHolder:
    """A live joiner or leaver holds the token: nothing to do until it releases it."""

    holder: str
    dead: tuple[Identity, ...]


@dataclass(frozen=True)
class Publish:
    """With the token held: rewrite ``_ALL_WORKER_INFOS`` without the dead (None: unchanged)
    and publish an eviction request per newly dead identity, in one txn."""

    all_infos: str | None
    evicts: tuple[Identity, ...]


@dataclass(frozen=True)
class Release:
    """Release the token as torch does and delete the requests in ``done`` with their acks;
    ``expired`` ones were released at the ack deadline, not by every live incarnation."""

    done: tuple[Identity, ...] = ()
    expired: tuple[Identity, ...] = ()


Action = DeleteStale | TakeToken | WaitForHolder | Publish | Release


def is_live(state: StoreState, name: str, rank: int) -> bool:
    return state.live.get(rank) == name


def stale_keys(state: StoreState) -> DeleteStale | None:
    live_names = set(state.live.values())
    names = {r: n for r, n in state.names.items() if not is_live(state, n, r)}
    addrs = tuple(sorted(a for a in state.addrs if a not in live_names))
    return DeleteStale(names, addrs) if names or addrs else None


def after_leave(name: str, rank: int) -> DeleteStale:
    """A graceful leave ends ``(name, rank)`` in the txn that deletes its rank record: its
    torch keys are stale from that revision on, so the same txn deletes them (a joiner that
    reuses the rank compare_sets ``names/<rank>`` from "" and would fail on the old name)."""
    return DeleteStale({rank: name}, (name,))


def plan_cleanup(state: StoreState, now: float, ack_deadline: float) -> Action | None:
    """The next step of crash cleanup, or None when there is nothing to do now.

    The token is needed to rewrite ``_ALL_WORKER_INFOS`` (torch edits it under the token) and is
    held until every live incarnation acked the eviction (or ``ack_deadline`` seconds passed, so
    that a hung survivor cannot wedge the group; a survivor that dies stops being required).
    """
    stale = stale_keys(state)
    if stale is not None:
        return stale
    entries = parse_worker_infos(state.all_infos or "")
    dead = tuple((n, r) for n, r in entries if not is_live(state, n, r))
    holder = state.token or ""
    mine = holder == CLEANER_TOKEN  # one elected cleaner at a time: a predecessor's is ours
    who = token_holder(holder)
    unknown = bool(holder) and not mine and who is None
    live_names = set(state.live.values())
    holder_dead = unknown or (who is not None and who[0] not in live_names)

    if not (dead or holder_dead or state.evicts):
        return Release() if mine else None
    if holder and not mine and not holder_dead:
        return WaitForHolder(holder, dead)
    if not mine:
        return TakeToken(holder, unknown)  # edits once the token is ours, from a fresh read
    if dead:
        kept = format_worker_infos([e for e in entries if e not in dead])
        return Publish(kept, tuple(d for d in dead if d not in state.evicts))
    return _release_when_acked(state, now, ack_deadline)


def _release_when_acked(state: StoreState, now: float, ack_deadline: float) -> Release | None:
    done: list[Identity] = []
    expired: list[Identity] = []
    for ident, req in sorted(state.evicts.items()):
        acked = state.acks.get(ident, set())
        missing = [r for r in state.live if r not in acked]
        if missing and now < req.created + ack_deadline:
            return None  # still waiting
        done.append(ident)
        if missing:
            expired.append(ident)
    return Release(tuple(done), tuple(expired))


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
