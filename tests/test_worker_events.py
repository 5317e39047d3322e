"""rpcjob.worker.events: which membership event leads to which agent update and ack."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from rpcjob.sidecar._pb import sidecar_pb2 as pb
from rpcjob.worker.events import MembershipApplier

EV = pb.MembershipEvent


class Recorder:
    """Records the agent updates the applier decides on (the torch side is tested with real
    agents in test_membership_*.py)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def evict(self, name: str, rank: int) -> bool:
        self.calls.append(("evict", name, rank))
        return True

    def reapply(self, name: str, rank: int, reverse_map: Mapping[str, str]) -> bool:
        self.calls.append(("joined", name, rank, dict(reverse_map)))
        return True


def member(name: str, rank: int, rev: dict[str, str] | None = None) -> Any:
    return pb.Member(name=name, rank=rank, reverse_map=rev or {})


GPU_MAP = {"cuda:0": "cuda:0"}


@pytest.mark.parametrize(
    ("devices", "event", "calls", "acks"),
    [
        # CPU slot: joins need no device re-application
        ((), EV(id=1, kind=EV.JOINED, peer=member("w_1", 1, GPU_MAP)), [], []),
        # GPU slot: a later joiner's reverse map is applied (torch never sends it)
        (("cuda:0",), EV(id=1, kind=EV.JOINED, peer=member("w_1", 1, GPU_MAP)),
         [("joined", "w_1", 1, GPU_MAP)], []),
        # a CPU peer has no reverse map: nothing to apply
        (("cuda:0",), EV(id=1, kind=EV.JOINED, peer=member("w_1", 1)), [], []),
        # SNAPSHOT: every GPU peer, never myself
        (("cuda:0",), EV(id=1, kind=EV.SNAPSHOT,
                         members=[member("w_0", 0, GPU_MAP), member("w_1", 1, GPU_MAP)]),
         [("joined", "w_1", 1, GPU_MAP)], []),
        # crash: evict and ack with the event id
        ((), EV(id=7, kind=EV.EVICT, peer=member("w_2", 5)), [("evict", "w_2", 5)],
         [("w_2", 7)]),
        # graceful leave: the guard kept my state; only the ack
        (("cuda:0",), EV(id=8, kind=EV.LEFT, peer=member("w_2", 5)), [], [("w_2", 8)]),
    ],
)  # fmt: skip
def test_event_to_agent_update(
    devices: tuple[str, ...], event: Any, calls: list[Any], acks: list[Any]
) -> None:
    rec, got_acks = Recorder(), []
    applier = MembershipApplier(
        me=("w_0", 0), devices=devices, ops=rec, ack=lambda n, i: got_acks.append((n, i)),
        on_drain=lambda: got_acks.append(("drain", -1)),
        on_self_evicted=lambda: got_acks.append(("self", -1)),
    )  # fmt: skip
    applier.apply(event)
    assert rec.calls == calls
    assert got_acks == acks


def test_drain_self_eviction_and_stop() -> None:
    rec, seen = Recorder(), []
    applier = MembershipApplier(
        me=("w_0", 0), devices=(), ops=rec, ack=lambda n, i: seen.append(("ack", n)),
        on_drain=lambda: seen.append(("drain", "")),
        on_self_evicted=lambda: seen.append(("self", "")),
    )  # fmt: skip
    applier.apply(EV(id=1, kind=EV.DRAIN))
    # the group evicted THIS incarnation (its lease was lost): the worker must exit
    applier.apply(EV(id=2, kind=EV.EVICT, peer=member("w_0", 0)))
    # an earlier incarnation of my name is a peer like any other
    applier.apply(EV(id=3, kind=EV.EVICT, peer=member("w_0", 9)))
    assert seen == [("drain", ""), ("self", ""), ("ack", "w_0")]
    assert rec.calls == [("evict", "w_0", 9)]
    applier.stopped = True  # after shutdown() began, events are ignored
    applier.apply(EV(id=4, kind=EV.EVICT, peer=member("w_3", 3)))
    assert rec.calls == [("evict", "w_0", 9)]
