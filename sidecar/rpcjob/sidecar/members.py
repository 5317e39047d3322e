"""The membership events a sidecar streams to its worker, decided from etcd watch batches of
member records (pure; the daemon applies them). The record itself is :mod:`rpcjob.records`."""

from __future__ import annotations

from dataclasses import dataclass, field

from rpcjob import contract as c
from rpcjob.etcd import WatchEvent
from rpcjob.records import MemberRecord


@dataclass(frozen=True)
class WorkerEvent:
    kind: str  # "JOINED" | "LEFT" (EVICT comes from evict requests, DRAIN from SIGTERM)
    member: MemberRecord


@dataclass
class MembershipView:
    """The live members as this sidecar has seen them (snapshot + watch)."""

    keys: c.JobKeys
    members: dict[str, MemberRecord] = field(default_factory=dict)

    def apply(self, batch: list[WatchEvent]) -> list[WorkerEvent]:
        """Apply one watch batch; return the events for the worker, in order.

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
