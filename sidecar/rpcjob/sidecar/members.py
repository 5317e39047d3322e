"""Member records (``members/<worker>``) and the membership events a sidecar streams to its
worker, decided from etcd watch batches (pure; the daemon applies them)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from rpcjob import contract as c
from rpcjob.etcd import WatchEvent


@dataclass(frozen=True)
class MemberRecord:
    name: str
    rank: int
    pod: str
    node: str
    ip: str
    devices: tuple[str, ...] = ()
    incarnation: int = 0  # etcd revision of the rank allocation
    joined: int = 0  # etcd revision of the member record (0 until written)
    clique: str = ""

    def encode(self) -> str:
        d = asdict(self)
        d["devices"] = list(self.devices)
        return json.dumps(d, sort_keys=True)

    @classmethod
    def decode(cls, raw: bytes, joined: int = 0) -> MemberRecord:
        d = json.loads(raw)
        return cls(
            name=str(d["name"]),
            rank=int(d["rank"]),
            pod=str(d.get("pod", "")),
            node=str(d.get("node", "")),
            ip=str(d.get("ip", "")),
            devices=tuple(d.get("devices", ())),
            incarnation=int(d.get("incarnation", 0)),
            joined=joined or int(d.get("joined", 0)),
            clique=str(d.get("clique", "")),
        )


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
