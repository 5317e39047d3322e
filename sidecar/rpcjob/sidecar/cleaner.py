"""The elected cleaner: reads one etcd snapshot, asks :func:`cleanup.plan_cleanup` what to do,
and applies one step as a guarded txn (every write compares what the plan was made from, so a
raced or deposed cleaner changes nothing)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from rpcjob import contract as c
from rpcjob import torchkeys as tk
from rpcjob.etcd import KV, Client, Compare, Op, RangeResult, TxnResult
from rpcjob.etcd._convert import prefix_end

from .cleanup import (
    CleanupPlan,
    EvictRequest,
    Identity,
    LiveRank,
    StoreState,
    plan_cleanup,
    torch_key,
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
    token_kv: KV | None
    infos_kv: KV | None
    name_kvs: dict[int, KV]
    addr_kvs: dict[str, KV]


def kvs_of(r: object) -> list[KV]:
    """The key-values of one range op's result inside a txn."""
    assert isinstance(r, RangeResult)
    return r.kvs


def read_snapshot(client: Client, keys: c.JobKeys) -> Snapshot:
    tkey = torch_key(keys, tk.TOKEN_KEY)
    ikey = torch_key(keys, tk.ALL_WORKER_INFOS_KEY)
    names_prefix = torch_key(keys, tk.RPC_PREFIX + "names/")
    addrs_prefix = torch_key(keys, tk.RPC_PREFIX + "addrs/")
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
    live: dict[int, LiveRank] = {}
    for kv in ranks:
        r = int(kv.key.decode().rsplit("/", 1)[1])
        worker = str(json.loads(kv.value)["worker"])
        if worker:  # "": a rank reserved as a process's dist-autograd id (ranks.RESERVE_LOST)
            live[r] = LiveRank(r, worker, kv.create_revision)
    name_kvs: dict[int, KV] = {}
    for kv in names:
        tail = kv.key.decode()[len(names_prefix) :]
        if tail.isdigit():
            name_kvs[int(tail)] = kv
    addr_kvs = {kv.key.decode()[len(addrs_prefix) :]: kv for kv in addrs}
    state = StoreState(
        live=live,
        token=token[0].value.decode() if token else None,
        all_infos=infos[0].value.decode() if infos else None,
        names={r: kv.value.decode() for r, kv in name_kvs.items()},
        addrs=set(addr_kvs),
    )
    for kv in evicts:
        d = json.loads(kv.value)
        ident = (str(d["name"]), int(d["rank"]))
        state.evicts[ident] = EvictRequest(ident[0], ident[1], float(d["created"]))
    for kv in acks:
        ident_s, _, acker = kv.key.decode()[len(keys.evict_acks) :].partition("/")
        state.acks.setdefault(parse_ident(ident_s), set()).add(int(acker))
    state.waiters = {kv.key.decode()[len(keys.token_waiters) :] for kv in waiters}
    return Snapshot(
        state,
        res.revision,
        token[0] if token else None,
        infos[0] if infos else None,
        name_kvs,
        addr_kvs,
    )


class Cleaner:
    """Applies cleanup plans; ``step()`` does at most one write and says whether it did."""

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
        return torch_key(self.keys, key)

    def step(self) -> bool:
        snap = read_snapshot(self.client, self.keys)
        plan = plan_cleanup(snap.state, time.time(), self.ack_deadline)
        if plan.unknown_token:
            log.warning("membership token holds an unknown value %r: taking it over",
                        plan.unknown_token)  # fmt: skip
        if plan.delete_names or plan.delete_addrs:
            return self._delete_stale(snap, plan)
        if plan.wait_for:
            if plan.wait_for != self._last_wait:
                log.info("waiting for the live token holder %s before evicting %s",
                         plan.wait_for, plan.dead)  # fmt: skip
            self._last_wait = plan.wait_for
            return False
        self._last_wait = None
        if plan.take_token is not None:
            return self._take_token(snap, plan.take_token)
        if plan.new_all_infos is not None or plan.new_evicts:
            return self._publish(snap, plan)
        if plan.release:
            return self._release(snap, plan)
        return False

    def _delete_stale(self, snap: Snapshot, plan: CleanupPlan) -> bool:
        compare: list[Compare] = []
        ops: list[Op] = []
        for r in plan.delete_names:
            kv = snap.name_kvs[r]
            compare.append(Compare.mod_revision(kv.key, "=", kv.mod_revision))
            ops.append(Op.delete(kv.key))
        for name in plan.delete_addrs:
            kv = snap.addr_kvs[name]
            compare.append(Compare.mod_revision(kv.key, "=", kv.mod_revision))
            ops.append(Op.delete(kv.key))
        # A live rank record appearing meanwhile would make a key live again: compare them.
        compare.append(
            Compare("mod_revision", self.keys.ranks.encode(), "<", snap.revision + 1,
                    prefix_end(self.keys.ranks.encode()))
        )  # fmt: skip
        res = self._txn(compare, ops)
        if res.succeeded:
            log.info("deleted stale torch keys: names %s, addrs %s",
                     sorted(plan.delete_names), plan.delete_addrs)  # fmt: skip
        return True

    def _take_token(self, snap: Snapshot, holder: str) -> bool:
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
        if holder:
            ops.append(Op.put(self.keys.token_waiters + holder, ""))
        res = self._txn([cmp], ops)
        if res.succeeded:
            log.info("took the membership token (was %r)", holder)
        return True

    def _publish(self, snap: Snapshot, plan: CleanupPlan) -> bool:
        tkey, ikey = self._tk(tk.TOKEN_KEY), self._tk(tk.ALL_WORKER_INFOS_KEY)
        compare = [Compare.value(tkey, "=", tk.CLEANER_TOKEN)]
        ops: list[Op] = []
        if plan.new_all_infos is not None:
            assert snap.infos_kv is not None
            compare.append(Compare.mod_revision(ikey, "=", snap.infos_kv.mod_revision))
            ops.append(Op.put(ikey, plan.new_all_infos))
        now = time.time()
        for name, rank in plan.new_evicts:
            ops.append(Op.put(self.keys.evict(name, rank), evict_value(name, rank, now)))
        res = self._txn(compare, ops)
        if res.succeeded:
            log.info("evicting %s from torch's group (live: %s)", plan.new_evicts,
                     sorted(snap.state.live))  # fmt: skip
        return True

    def _release(self, snap: Snapshot, plan: CleanupPlan) -> bool:
        tkey = self._tk(tk.TOKEN_KEY)
        # Exactly torch's release: token "" first, then each waiter key "Done".
        ops = [Op.put(tkey, "")]
        for holder in sorted(snap.state.waiters):
            ops.append(Op.put(self._tk(tk.waiter_key(holder)), tk.DONE))
        ops.append(Op.put(self._tk(tk.waiter_key(tk.CLEANER_TOKEN)), tk.DONE))
        ops.append(Op.delete(self.keys.token_waiters, prefix=True))
        for name, rank in plan.done:
            ops.append(Op.delete(self.keys.evict(name, rank)))
            ops.append(Op.delete(f"{self.keys.evict(name, rank)}/", prefix=True))
            ops.append(Op.delete(f"{self.keys.evict_acks}{name}-{rank}/", prefix=True))
        res = self._txn([Compare.value(tkey, "=", tk.CLEANER_TOKEN)], ops)
        if res.succeeded:
            now = time.time()
            for ident in plan.done:
                req = snap.state.evicts[ident]
                expired = ident in plan.expired
                if expired:
                    log.warning("evicted %s without every survivor's ack (deadline %.0fs)",
                                ident, self.ack_deadline)  # fmt: skip
                self.on_evicted(ident, now - req.created, expired)
            log.info("released the membership token (evicted %s)", plan.done)
        return True
