"""Applies the sidecar's membership events to the live agent.

See docs/architecture.md#membership and docs/architecture.md#device-maps.

The decisions (which event needs which agent update, acks, self-eviction) live here; the
torch calls go through ``ops``: the module ``rpcjob.devices.agent`` (which keeps this worker's
devices and the live peers' reverse maps), or a recorder in tests.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from rpcjob.sidecar._pb import sidecar_pb2 as pb

EV = pb.MembershipEvent


class Ops(Protocol):
    def evict(self, peer: str, rank: int) -> bool: ...

    def reapply(self, peer: str, rank: int, reverse_map: Mapping[str, str]) -> bool: ...


@dataclass
class MembershipApplier:
    me: tuple[str, int]
    devices: Sequence[str]
    ops: Ops
    ack: Callable[[str, int], None]  # (peer name, event id)
    on_drain: Callable[[], None]
    on_self_evicted: Callable[[], None]
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopped: bool = False

    def apply(self, ev: pb.MembershipEvent) -> None:
        kind = ev.kind
        if kind == EV.DRAIN:
            self.on_drain()
            return
        with self.lock:
            if self.stopped:
                return
            if kind == EV.SNAPSHOT:
                for m in ev.members:
                    self._joined(m)
            elif kind == EV.JOINED:
                self._joined(ev.peer)
            elif kind == EV.LEFT:
                # torch's leave ran through rpcjob.devices.agent's guard on this member: my
                # devices and the other peers' reverse maps were kept. Nothing to re-apply.
                self.ack(ev.peer.name, ev.id)
            elif kind == EV.EVICT:
                if (ev.peer.name, ev.peer.rank) == self.me:
                    self.on_self_evicted()
                    return
                self.ops.evict(ev.peer.name, ev.peer.rank)
                self.ack(ev.peer.name, ev.id)

    def _joined(self, m: pb.Member) -> None:
        # Earlier members never get a later joiner's reverse map from torch
        # (docs/architecture.md#device-maps).
        if self.devices and m.name != self.me[0] and m.reverse_map:
            self.ops.reapply(m.name, m.rank, dict(m.reverse_map))


def fatal(msg: str) -> None:
    print(f"rpcjob: {msg}", file=sys.stderr, flush=True)
