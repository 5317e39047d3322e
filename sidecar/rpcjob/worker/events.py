"""Applies the sidecar's membership events to the live agent (DESIGN §4-5).

A pure-ish state holder: which peers are live and their reverse maps (needed on every
eviction, because torch's ``is_join=False`` update drops every reverse map not passed in).
The torch calls go through :mod:`rpcjob.worker.agent_ops`; tests can pass other ops.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from rpcjob.sidecar._pb import sidecar_pb2 as _pb2

pb: Any = _pb2  # generated code is untyped

log = logging.getLogger("rpcjob.worker")

EV = pb.MembershipEvent


class Ops(Protocol):
    def evict(
        self,
        name: str,
        rank: int,
        my_devices: Sequence[str],
        keep: Mapping[str, Mapping[str, str]],
    ) -> None: ...

    def reapply(
        self, me: tuple[str, int], my_devices: Sequence[str], maps: Mapping[str, Mapping[str, str]]
    ) -> None: ...


@dataclass
class Peer:
    name: str
    rank: int
    reverse_map: dict[str, str]


@dataclass
class MembershipApplier:
    me: tuple[str, int]
    devices: Sequence[str]
    ops: Ops
    ack: Callable[[str, int], None]  # (peer name, event id)
    on_drain: Callable[[], None]
    on_self_evicted: Callable[[], None]
    peers: dict[str, Peer] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopped: bool = False

    def reverse_maps(self, exclude: str = "") -> dict[str, dict[str, str]]:
        return {n: p.reverse_map for n, p in self.peers.items() if n != exclude and p.reverse_map}

    def apply(self, ev: Any) -> None:
        kind = ev.kind
        if kind == EV.DRAIN:
            self.on_drain()
            return
        with self.lock:
            if self.stopped:
                return
            if kind == EV.SNAPSHOT:
                for m in ev.members:
                    if m.name != self.me[0]:
                        self.peers[m.name] = Peer(m.name, m.rank, dict(m.reverse_map))
                self._reapply()
            elif kind == EV.JOINED:
                m = ev.peer
                if m.name != self.me[0]:
                    self.peers[m.name] = Peer(m.name, m.rank, dict(m.reverse_map))
                    self._reapply()
            elif kind == EV.LEFT:
                self.peers.pop(ev.peer.name, None)
                # torch's graceful leave wiped my devices and reverse maps: put them back
                self._reapply()
                self.ack(ev.peer.name, ev.id)
            elif kind == EV.EVICT:
                self._evict(ev.peer.name, ev.peer.rank, ev.id)

    def _evict(self, name: str, rank: int, event_id: int) -> None:
        if (name, rank) == self.me:
            self.on_self_evicted()
            return
        current = self.peers.get(name)
        if current is not None and current.rank == rank:
            del self.peers[name]
        self.ops.evict(name, rank, self.devices, self.reverse_maps())
        self.ack(name, event_id)

    def _reapply(self) -> None:
        if self.devices:
            self.ops.reapply(self.me, self.devices, self.reverse_maps())


class TorchOps:
    """The real agent calls."""

    def evict(
        self,
        name: str,
        rank: int,
        my_devices: Sequence[str],
        keep: Mapping[str, Mapping[str, str]],
    ) -> None:
        from rpcjob.worker import agent_ops

        agent_ops.evict(name, rank, my_devices, keep)

    def reapply(
        self, me: tuple[str, int], my_devices: Sequence[str], maps: Mapping[str, Mapping[str, str]]
    ) -> None:
        from rpcjob.worker import agent_ops

        agent_ops.reapply_all(me, my_devices, maps)


def fatal(msg: str) -> None:
    print(f"rpcjob: {msg}", file=sys.stderr, flush=True)
