"""Table-driven tests of the sidecar's pure decisions: rank choice, crash cleanup plan, the
name gate, member-event classification."""

from __future__ import annotations

import json

import pytest

from rpcjob import contract as c
from rpcjob import torchkeys as tk
from rpcjob.etcd import KV, WatchEvent
from rpcjob.records import MemberRecord
from rpcjob.sidecar.cleanup import (
    Action,
    DeleteStale,
    EvictRequest,
    Publish,
    Release,
    StoreState,
    TakeToken,
    WaitForHolder,
    after_leave,
    name_is_clean,
    plan_cleanup,
)
from rpcjob.sidecar.ranks import (
    RankChoice,
    choose_rank,
    describe_exhaustion,
    predecessor_leases,
    to_stamp,
)
from rpcjob.sidecar.watcher import GroupState

# --- ranks ------------------------------------------------------------------------------------
# retired: rank -> (retired revision (0 = in use / not stamped), mod revision of the key)
RANK_CASES = [
    ("empty space starts at 0", 4, {}, {}, RankChoice(0, 0)),
    ("lowest free", 4, {0: 5, 1: 6}, {0: (0, 5), 1: (0, 6)}, RankChoice(2, 0)),
    ("never-used above a held one", 4, {0: 5}, {0: (0, 5)}, RankChoice(1, 0)),
    # rank 0 retired at rev 10; the live member (allocated at rev 5) may know it: skip it
    ("retired rank known by a live member", 2, {1: 5}, {0: (10, 11), 1: (0, 5)}, None),
    # every live member was allocated after the retirement: reuse it
    ("retired rank safe to reuse", 2, {1: 12}, {0: (10, 11), 1: (0, 12)}, RankChoice(0, 11)),
    ("no live members: any retired rank is safe", 1, {}, {0: (10, 11)}, RankChoice(0, 11)),
    ("unstamped retired rank is never chosen", 1, {}, {0: (0, 3)}, None),
    ("all held", 2, {0: 1, 1: 2}, {0: (0, 1), 1: (0, 2)}, None),
]


@pytest.mark.parametrize(("why", "space", "held", "retired", "want"), RANK_CASES,
                         ids=[c[0] for c in RANK_CASES])  # fmt: skip
def test_choose_rank(
    why: str,
    space: int,
    held: dict[int, int],
    retired: dict[int, tuple[int, int]],
    want: RankChoice | None,
) -> None:
    assert choose_rank(space, held, retired, held.values()) == want


def test_to_stamp_only_ended_unstamped() -> None:
    retired = {0: (0, 1), 1: (0, 2), 2: (7, 8)}
    assert to_stamp({1: 2}, retired) == [0]


def _rank_kv(rank: int, lease: int, value: object) -> KV:
    raw = value if isinstance(value, str) else json.dumps(value)
    return KV(f"/x/ranks/{rank}".encode(), raw.encode(), 1, 1, 1, lease)


def test_predecessor_leases_are_this_workers_rank_and_reserved_records() -> None:
    kvs = [
        _rank_kv(0, 10, {"worker": "worker_1", "rank": 0}),  # a dead incarnation of ours
        _rank_kv(1, 11, {"worker": "worker_2", "rank": 1}),  # another slot's
        _rank_kv(2, 12, {"worker": "", "reserved_by": "worker_1", "rank": 2}),  # our reserve
        _rank_kv(3, 10, {"worker": "worker_1", "rank": 3}),  # same lease: listed once
        _rank_kv(4, 0, {"worker": "worker_1", "rank": 4}),  # no lease: nothing to revoke
        _rank_kv(5, 15, "not json"),
    ]
    assert predecessor_leases(kvs, "worker_1") == [10, 12]
    assert predecessor_leases(kvs, "worker_9") == []


def test_exhaustion_message_names_the_setting() -> None:
    msg = describe_exhaustion(2, {1: 5}, {0: (10, 11), 1: (0, 5)})
    assert c.ENV_RANK_SPACE in msg and "[1]" in msg and "[0]" in msg and "raise" in msg


# --- crash cleanup ---------------------------------------------------------------------------
def live(*ranks: tuple[int, str]) -> dict[int, str]:
    return dict(ranks)


CLEANER = tk.CLEANER_TOKEN
A_JOIN = tk.worker_token("a_0", "join")
B_JOIN = tk.worker_token("b_1", "join")
B_REQ = {("b_1", 1): EvictRequest("b_1", 1, created=100)}
A0, D3 = live((0, "a_0")), live((0, "a_0"), (3, "d_3"))

# (why, state, now, the next action); ack deadline 10 s
CLEANUP_CASES: list[tuple[str, StoreState, float, Action | None]] = [
    ("nothing to do when torch matches etcd",
     StoreState(live((0, "a_0"), (1, "b_1")), token="", all_infos="a_0-0,b_1-1,",
                names={0: "a_0", 1: "b_1"}, addrs={"a_0", "b_1"}), 100, None),
    ("a dead member: take the free token first",
     StoreState(A0, token="", all_infos="a_0-0,b_1-1,"), 100, TakeToken("")),
    ("a missing token is taken like a free one",
     StoreState(A0, token=None, all_infos="a_0-0,b_1-1,"), 100, TakeToken("")),
    ("token held: rewrite the list and request the acks in one step",
     StoreState(A0, token=CLEANER, all_infos="a_0-0,b_1-1,c_2-2,"), 100,
     Publish("a_0-0,", (("b_1", 1), ("c_2", 2)))),
    ("a dead member already requested: only the list is rewritten",
     StoreState(A0, token=CLEANER, all_infos="a_0-0,b_1-1,", evicts=B_REQ), 100,
     Publish("a_0-0,", ())),
    ("waiting for an ack",
     StoreState(D3, token=CLEANER, all_infos="a_0-0,d_3-3,", evicts=B_REQ,
                acks={("b_1", 1): {0}}), 101, None),
    ("every live incarnation acked: release",
     StoreState(D3, token=CLEANER, all_infos="a_0-0,d_3-3,", evicts=B_REQ,
                acks={("b_1", 1): {0, 3}}), 101, Release((("b_1", 1),), ())),
    ("a survivor that died is no longer awaited",
     StoreState(A0, token=CLEANER, all_infos="a_0-0,", evicts=B_REQ, acks={("b_1", 1): {0}}),
     101, Release((("b_1", 1),), ())),
    ("no ack before the deadline", StoreState(A0, token=CLEANER, all_infos="a_0-0,",
                                              evicts=B_REQ), 109, None),
    ("no ack at the deadline: released all the same",
     StoreState(A0, token=CLEANER, all_infos="a_0-0,", evicts=B_REQ), 111,
     Release((("b_1", 1),), (("b_1", 1),))),
    ("a live holder is waited for",
     StoreState(live((0, "a_0"), (1, "b_1")), token=B_JOIN, all_infos="a_0-0,c_2-2,"), 100,
     WaitForHolder(B_JOIN, (("c_2", 2),))),
    # b_1 died holding its join token before it wrote a member record: its rank record is
    # gone, so the token is taken over although _ALL_WORKER_INFOS does not list it yet (its
    # stale names/1 goes first, without the token)
    ("a joiner dead inside the critical section: its keys first",
     StoreState(A0, token=B_JOIN, all_infos="a_0-0,", names={1: "b_1"}), 100,
     DeleteStale({1: "b_1"})),
    ("a joiner dead inside the critical section: then its token",
     StoreState(A0, token=B_JOIN, all_infos="a_0-0,"), 100, TakeToken(B_JOIN)),
    ("an unknown token value is taken over (with a warning)",
     StoreState(A0, token="garbage", all_infos="a_0-0,"), 100, TakeToken("garbage", True)),
    ("a held token with nothing left is released",
     StoreState(A0, token=CLEANER, all_infos="a_0-0,"), 100, Release()),
    ("stale names and addrs go, live ones stay",
     StoreState(live((0, "a_0"), (2, "b_1")), token="", all_infos="a_0-0,",
                names={0: "a_0", 1: "b_1", 2: "b_1"}, addrs={"a_0", "b_1", "c_9"}), 100,
     DeleteStale({1: "b_1"}, ("c_9",))),
    ("a rank reserved as a dist-autograd id is not live (its keys go)",
     StoreState(A0, token="", all_infos="a_0-0,", names={5: "b_1"}, addrs={"b_1"}), 100,
     DeleteStale({5: "b_1"}, ("b_1",))),
]  # fmt: skip


@pytest.mark.parametrize(("why", "state", "now", "want"), CLEANUP_CASES,
                         ids=[c[0] for c in CLEANUP_CASES])  # fmt: skip
def test_plan_cleanup(why: str, state: StoreState, now: float, want: Action | None) -> None:
    assert plan_cleanup(state, now, ack_deadline=10) == want


def test_a_graceful_leave_deletes_the_keys_torch_leaves_behind() -> None:
    assert after_leave("b_1", 4) == DeleteStale({4: "b_1"}, ("b_1",))
    # the same rule as a crash: the cleaner would delete exactly these once rank 4 is gone
    state = StoreState(A0, names={4: "b_1"}, addrs={"b_1"})
    assert plan_cleanup(state, 0, 10) == after_leave("b_1", 4)


NAME_GATE = [
    ("clean", StoreState({}, token="", all_infos="a_0-0,"), True),
    ("old identity still listed", StoreState({}, token="", all_infos="b_1-4,"), False),
    ("old incarnation holds the token", StoreState({}, token=B_JOIN, all_infos=""), False),
    ("eviction pending", StoreState({}, evicts={("b_1", 4): EvictRequest("b_1", 4, 0)}), False),
    ("another name holds the token", StoreState({}, token=A_JOIN), True),
]


@pytest.mark.parametrize(("why", "state", "clean"), NAME_GATE, ids=[g[0] for g in NAME_GATE])
def test_name_gate(why: str, state: StoreState, clean: bool) -> None:
    assert name_is_clean(state, "b_1") is clean


# --- member events ---------------------------------------------------------------------------
KEYS = c.JobKeys("ns", "j", "u")


def kv(key: str, value: str = "", rev: int = 1, create: int = 1) -> KV:
    return KV(key.encode(), value.encode(), create, rev, 1, 0)


def rec(name: str, rank: int, inc: int) -> str:
    return MemberRecord(name, rank, "p", "n", "1.2.3.4", (), inc).encode()


def test_member_events_joined_left_and_crash() -> None:
    view = GroupState(KEYS)
    out = view.apply([WatchEvent("PUT", kv(KEYS.member("a_0"), rec("a_0", 0, 5), 6, 6), None)])
    assert [(e.kind, e.member.name) for e in out] == [("JOINED", "a_0")]
    # an update of the same incarnation is not a new join
    assert (
        view.apply([WatchEvent("PUT", kv(KEYS.member("a_0"), rec("a_0", 0, 5), 7, 6), None)]) == []
    )
    # graceful: the left marker and the delete share one revision
    left = [WatchEvent("PUT", kv(KEYS.left_marker("a_0"), json.dumps({"incarnation": 5}), 9), None),
            WatchEvent("DELETE", kv(KEYS.member("a_0"), "", 9), None)]  # fmt: skip
    assert [e.kind for e in view.apply(left)] == ["LEFT"]
    # a crash (no marker) is not a LEFT: the cleaner's EVICT covers it
    view.apply([WatchEvent("PUT", kv(KEYS.member("b_1"), rec("b_1", 1, 10), 11, 11), None)])
    assert view.apply([WatchEvent("DELETE", kv(KEYS.member("b_1"), "", 12), None)]) == []
    assert view.members == {}


def test_member_record_roundtrip() -> None:
    r = MemberRecord("w_1", 3, "pod", "node", "10.0.0.1", ("cuda:0",), 42, 0, "clq")
    assert MemberRecord.decode(r.encode().encode(), joined=50) == MemberRecord(
        "w_1", 3, "pod", "node", "10.0.0.1", ("cuda:0",), 42, 50, "clq"
    )
