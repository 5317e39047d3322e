"""The executor of crash cleanup, in the style of torch.distributed.elastic's rendezvous op
executor: read one etcd snapshot, ask :func:`cleanup.plan_cleanup` for the next action, apply it
as one guarded txn, repeat. Every txn compares what the plan was made from and that this
sidecar still holds the cleaner election, so a raced or deposed cleaner changes nothing and the
next step re-plans from a fresh read."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import assert_never

from rpcjob import contract as c
from rpcjob import torchkeys as tk
from rpcjob.etcd import KV, Client, Compare, Op, RangeResult, TxnResult
from rpcjob.etcd._convert import prefix_end

from .cleanup import (
    Action,
    DeleteStale,
    EvictRequest,
    Identity,
    Publish,
    Release,
    StoreState,
    TakeToken,
    WaitForHolder,
    plan_cleanup,
)

log = logging.getLogger("rpcjob.sidecar.cleaner")


def evict_value(name: str, rank: int, created: float) -> str:
    return json.dumps({"name": name, "rank": rank, "created": created}, sort_keys=True)


def parse_ident(text: str) -> Identity:
    name, _, rank = text.rpartition("-")
    return name, int(rank)


@dataclass
class Snapshot:
    state: StoreState
    revision: int
    token_kv: KV | None  # the compares of the takeover and the rewrite
    infos_kv: KV | None


def kvs_of(r: object) -> list[KV]:
    """The key-values of one range op's result inside a txn."""
    assert isinstance(r, RangeResult)
    return r.kvs


def read_snapshot(client: Client, keys: c.JobKeys) -> Snapshot:
    tkey = keys.store + tk.TOKEN_KEY
    ikey = keys.store + tk.ALL_WORKER_INFOS_KEY
    names_prefix = keys.store + tk.RPC_PREFIX + "names/"
    addrs_prefix = keys.store + tk.RPC_PREFIX + "addrs/"
    res = client.txn(
        [],
        [
            Op.get(keys.ranks, prefix=True),
            Op.get(tkey),
            Op.get(ikey),
            Op.get(names_prefix, prefix=True),
            Op.get(addrs_prefix, prefix=True),
            Op.get(keys.evicts, prefix=True),
            Op.get(keys.evict_acks, prefix=True),
            Op.get(keys.token_waiters, prefix=True),
        ],
    )
    ranks, token, infos, names, addrs, evicts, acks, waiters = (kvs_of(r) for r in res.responses)
    live: dict[int, str] = {}
    for kv in ranks:
        r = int(kv.key.decode().rsplit("/", 1)[1])
        worker = str(json.loads(kv.value)["worker"])
        if worker:  # "": a rank reserved as a process's dist-autograd id (ranks.ReserveLost)
            live[r] = worker
    state = StoreState(
        live=live,
        token=token[0].value.decode() if token else None,
        all_infos=infos[0].value.decode() if infos else None,
        names={int(t): kv.value.decode() for t, kv in _tails(names, names_prefix) if t.isdigit()},
        addrs={t for t, _ in _tails(addrs, addrs_prefix)},
    )
    for kv in evicts:
        d = json.loads(kv.value)
        ident = (str(d["name"]), int(d["rank"]))
        state.evicts[ident] = EvictRequest(ident[0], ident[1], float(d["created"]))
    for kv in acks:
        ident_s, _, acker = kv.key.decode()[len(keys.evict_acks) :].partition("/")
        state.acks.setdefault(parse_ident(ident_s), set()).add(int(acker))
    state.waiters = {t for t, _ in _tails(waiters, keys.token_waiters)}
    return Snapshot(state, res.revision, token[0] if token else None, infos[0] if infos else None)


def _tails(kvs: list[KV], prefix: str) -> list[tuple[str, KV]]:
    return [(kv.key.decode()[len(prefix) :], kv) for kv in kvs]


def delete_stale_ops(keys: c.JobKeys, action: DeleteStale) -> list[Op]:
    """The deletions of a :class:`DeleteStale`: ``names/<rank>`` only while it still names the
    dead identity (a nested txn), ``addrs/<name>`` outright. Used by the cleaner and by the
    graceful leave's txn (``cleanup.after_leave``)."""
    ops: list[Op] = []
    for rank, name in sorted(action.names.items()):
        key = keys.store + tk.name_key(rank)
        ops.append(Op.txn([Compare.value(key, "=", name)], [Op.delete(key)]))
    ops += [Op.delete(keys.store + tk.addr_key(name)) for name in action.addrs]
    return ops


class Cleaner:
    """Applies cleanup actions; ``step()`` does at most one write and says whether it did."""

    def __init__(
        self,
        client: Client,
        keys: c.JobKeys,
        ack_deadline: float,
        on_evicted: Callable[[Identity, float, bool], None] = lambda i, s, e: None,
    ) -> None:
        self.client = client
        self.keys = keys
        self.ack_deadline = ack_deadline
        self.on_evicted = on_evicted
        self.leader_key = keys.election
        self.leader_value = ""  # set by the daemon: this sidecar's lease id while it leads
        self._last_wait: str | None = None

    def _txn(self, compare: list[Compare], ops: list[Op]) -> TxnResult:
        # Every write also requires that this sidecar still holds the election: a cleaner
        # deposed while it ran (its lease expired in a partition) changes nothing.
        guard = Compare.value(self.leader_key, "=", self.leader_value)
        return self.client.txn([guard, *compare], ops)

    def _tk(self, key: str) -> str:
        return self.keys.store + key

    def step(self) -> bool:
        snap = read_snapshot(self.client, self.keys)
        action = plan_cleanup(snap.state, time.time(), self.ack_deadline)
        if not isinstance(action, WaitForHolder):
            self._last_wait = None
        return self.apply(snap, action)

    def apply(self, snap: Snapshot, action: Action | None) -> bool:
        match action:
            case None:
                return False
            case WaitForHolder(holder, dead):
                if holder != self._last_wait:
                    log.info("waiting for the live token holder %s before evicting %s",
                             holder, list(dead))  # fmt: skip
                self._last_wait = holder
                return False
            case DeleteStale():
                self._delete_stale(snap, action)
            case TakeToken():
                self._take_token(snap, action)
            case Publish():
                self._publish(snap, action)
            case Release():
                self._release(snap, action)
            case _:
                assert_never(action)
        return True

    def _delete_stale(self, snap: Snapshot, action: DeleteStale) -> None:
        # A live rank record appearing meanwhile would make a key live again: compare them.
        ranks = self.keys.ranks.encode()
        unchanged = Compare("mod_revision", ranks, "<", snap.revision + 1, prefix_end(ranks))
        if self._txn([unchanged], delete_stale_ops(self.keys, action)).succeeded:
            log.info("deleted stale torch keys: names %s, addrs %s",
                     sorted(action.names), list(action.addrs))  # fmt: skip

    def _take_token(self, snap: Snapshot, action: TakeToken) -> None:
        if action.unknown:
            log.warning("membership token holds an unknown value %r: taking it over",
                        action.holder)  # fmt: skip
        tkey = self._tk(tk.TOKEN_KEY)
        cmp = (
            Compare.version(tkey, "=", 0)
            if snap.token_kv is None
            else Compare.mod_revision(tkey, "=", snap.token_kv.mod_revision)
        )
        ops = [
            Op.put(tkey, tk.CLEANER_TOKEN),
            # A stale "Done" on our waiter key would make new waiters spin instead of block.
            Op.delete(self._tk(tk.waiter_key(tk.CLEANER_TOKEN))),
        ]
        if action.holder:
            ops.append(Op.put(self.keys.token_waiters + action.holder, ""))
        if self._txn([cmp], ops).succeeded:
            log.info("took the membership token (was %r)", action.holder)

    def _publish(self, snap: Snapshot, action: Publish) -> None:
        tkey, ikey = self._tk(tk.TOKEN_KEY), self._tk(tk.ALL_WORKER_INFOS_KEY)
        compare = [Compare.value(tkey, "=", tk.CLEANER_TOKEN)]
        ops: list[Op] = []
        if action.all_infos is not None:
            assert snap.infos_kv is not None
            compare.append(Compare.mod_revision(ikey, "=", snap.infos_kv.mod_revision))
            ops.append(Op.put(ikey, action.all_infos))
        now = time.time()
        for name, rank in action.evicts:
            ops.append(Op.put(self.keys.evict(name, rank), evict_value(name, rank, now)))
        if self._txn(compare, ops).succeeded:
            log.info("evicting %s from torch's group (live: %s)", list(action.evicts),
                     sorted(snap.state.live))  # fmt: skip

    def _release(self, snap: Snapshot, action: Release) -> None:
        tkey = self._tk(tk.TOKEN_KEY)
        # Exactly torch's release: token "" first, then each waiter key "Done".
        ops = [Op.put(tkey, "")]
        for holder in sorted(snap.state.waiters):
            ops.append(Op.put(self._tk(tk.waiter_key(holder)), tk.DONE))
        ops.append(Op.put(self._tk(tk.waiter_key(tk.CLEANER_TOKEN)), tk.DONE))
        ops.append(Op.delete(self.keys.token_waiters, prefix=True))
        for name, rank in action.done:
            ops.append(Op.delete(self.keys.evict(name, rank)))
            ops.append(Op.delete(f"{self.keys.evict(name, rank)}/", prefix=True))
            ops.append(Op.delete(f"{self.keys.evict_acks}{name}-{rank}/", prefix=True))
        if not self._txn([Compare.value(tkey, "=", tk.CLEANER_TOKEN)], ops).succeeded:
            return
        now = time.time()
        for ident in action.done:
            expired = ident in action.expired
            if expired:
                log.warning("evicted %s without every survivor's ack (deadline %.0fs)",
                            ident, self.ack_deadline)  # fmt: skip
            self.on_evicted(ident, now - snap.state.evicts[ident].created, expired)
        log.info("released the membership token (evicted %s)", list(action.done))
