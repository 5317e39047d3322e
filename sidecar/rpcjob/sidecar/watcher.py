"""The membership watcher: one snapshot, then two etcd watches, turned into what this sidecar
knows of the group (:class:`GroupState`): the members, the pending eviction requests and the
cleaner election's holder. It forwards member changes and eviction requests to the
incarnation manager and wakes the cleaner loop (docs/architecture.md#membership)."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rpcjob import contract as c
from rpcjob import torchkeys as tk
from rpcjob.etcd import Client, Op, WatchEvent
from rpcjob.records import MemberRecord

from .cleaner import kvs_of, parse_ident
from .cleanup import Identity
from .http import Metrics

if TYPE_CHECKING:
    from .cleaner_loop import CleanerLoop
    from .incarnation import IncarnationManager

log = logging.getLogger("rpcjob.sidecar")


@dataclass(frozen=True)
class WorkerEvent:
    kind: str  # "JOINED" | "LEFT" (EVICT comes from evict requests, DRAIN from SIGTERM)
    member: MemberRecord


@dataclass
class GroupState:
    """What the watches have shown of the group. Read and written under ``cond``, which also
    wakes whoever waits for the group to change (a Hello waiting for a clean name or a rank)."""

    keys: c.JobKeys
    cond: threading.Condition = field(
        default_factory=lambda: threading.Condition(threading.RLock())
    )
    members: dict[str, MemberRecord] = field(default_factory=dict)
    evicts: set[Identity] = field(default_factory=set)
    election_holder: int | None = None

    def apply(self, batch: list[WatchEvent]) -> list[WorkerEvent]:
        """Apply one watch batch to ``members``; return the events for the worker, in order.

        A graceful leave is one txn that writes ``left/<w>`` and deletes ``members/<w>`` at the
        same revision, so both arrive in one batch: a delete without that marker is a crash,
        which the elected cleaner turns into an EVICT (not decided here).
        """
        left_at: dict[str, int] = {}
        for ev in batch:
            key = ev.kv.key.decode()
            if ev.type == "PUT" and key.startswith(self.keys.left):
                left_at[key[len(self.keys.left) :]] = ev.kv.mod_revision
        out: list[WorkerEvent] = []
        for ev in batch:
            key = ev.kv.key.decode()
            if not key.startswith(self.keys.members):
                continue
            name = key[len(self.keys.members) :]
            if ev.type == "PUT":
                rec = MemberRecord.decode(ev.kv.value, ev.kv.create_revision)
                old = self.members.get(name)
                self.members[name] = rec
                if old is None or old.incarnation != rec.incarnation:
                    out.append(WorkerEvent("JOINED", rec))
            else:
                gone = self.members.pop(name, None)
                if gone is not None and left_at.get(name) == ev.kv.mod_revision:
                    out.append(WorkerEvent("LEFT", gone))
        return out


class MembershipWatcher:
    def __init__(
        self,
        client: Client,
        metrics: Metrics,
        group: GroupState,
        incarnations: IncarnationManager,
        cleaner: CleanerLoop,
    ) -> None:
        self.client, self.metrics, self.group = client, metrics, group
        self.keys = group.keys
        self.incarnations, self.cleaner = incarnations, cleaner
        self.failed = threading.Event()  # a watch ended: main exits 1 and the pod restarts us

    def start(self) -> None:
        keys = self.keys
        res = self.client.txn(
            [],
            [Op.get(keys.members, prefix=True), Op.get(keys.evicts, prefix=True),
             Op.get(keys.election)],
        )  # fmt: skip
        members, evicts, election = (kvs_of(r) for r in res.responses)
        with self.group.cond:
            self.group.apply([WatchEvent("PUT", kv, None) for kv in members])
            for kv in evicts:
                self._note_evict(kv.key.decode(), True)
            self.group.election_holder = int(election[0].value) if election else None
            self.metrics.members.set(len(self.group.members))
        # Our own keys sort before "store/"; of the store only torch's RPC keys matter (token,
        # _ALL_WORKER_INFOS: they gate Hello and wake the cleaner), not the user's traffic.
        start = res.revision + 1
        self.client.watch(keys.root, range_end=keys.store, start_revision=start,
                          callback=self._on_batch, on_error=self._on_error)  # fmt: skip
        self.client.watch(keys.store + tk.RPC_PREFIX, prefix=True, start_revision=start,
                          callback=self._on_store_batch, on_error=self._on_error)  # fmt: skip

    def _on_error(self, err: BaseException) -> None:
        log.error("membership watch ended (%s); exiting so that the pod restarts", err)
        self.failed.set()

    def _on_store_batch(self, batch: list[WatchEvent]) -> None:
        with self.group.cond:
            self.group.cond.notify_all()
        self.cleaner.wake()

    def _on_batch(self, batch: list[WatchEvent]) -> None:
        acks: list[Identity] = []
        with self.group.cond:
            for wev in self.group.apply(batch):
                (self.metrics.joins if wev.kind == "JOINED" else self.metrics.leaves).inc()
                self.incarnations.on_member_event(wev)
            self.metrics.members.set(len(self.group.members))
            for ev in batch:
                key = ev.kv.key.decode()
                if key == self.keys.election:
                    self.group.election_holder = int(ev.kv.value) if ev.type == "PUT" else None
                    self.cleaner.election_changed()
                elif key.startswith(self.keys.evicts):
                    ident = self._note_evict(key, ev.type == "PUT")
                    if ident is not None and self.incarnations.forward_evict(ident):
                        acks.append(ident)
            self.group.cond.notify_all()
        self.cleaner.wake()
        for ident in acks:
            self.incarnations.ack(ident)

    def _note_evict(self, key: str, put: bool) -> Identity | None:
        tail = key[len(self.keys.evicts) :]
        if "/" in tail:
            return None
        ident = parse_ident(tail)
        if put:
            self.group.evicts.add(ident)
            return ident
        self.group.evicts.discard(ident)
        return None
