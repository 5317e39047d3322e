"""rpcjob.torchkeys: the pure store-edit decisions (table-driven)."""

from __future__ import annotations

import pytest

from rpcjob import torchkeys as tk


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("", []),
        ("w_0-0,", [("w_0", 0)]),
        ("w_0-0,w_1-1,worker_12-7,", [("w_0", 0), ("w_1", 1), ("worker_12", 7)]),
        ("a-3,b-30000", [("a", 3), ("b", 30000)]),
    ],
)
def test_parse_format_roundtrip(value: str, parsed: list[tuple[str, int]]) -> None:
    assert tk.parse_worker_infos(value) == parsed
    assert tk.parse_worker_infos(tk.format_worker_infos(parsed)) == parsed


@pytest.mark.parametrize("value", ["w0,", "w_0-x,", "-3,"])
def test_parse_malformed_names_the_key(value: str) -> None:
    with pytest.raises(tk.MalformedWorkerInfos, match="_ALL_WORKER_INFOS entry"):
        tk.parse_worker_infos(value)


@pytest.mark.parametrize(
    ("token", "holder"),
    [
        ("", None),
        ("Token_for_w_1_join", ("w_1", "join")),
        ("Token_for_ps_server_3_leave", ("ps_server_3", "leave")),
        (tk.CLEANER_TOKEN, None),
        ("garbage", None),
        ("Token_for_w_1_maybe", None),
    ],
)
def test_token_holder(token: str, holder: tuple[str, str] | None) -> None:
    assert tk.token_holder(token) == holder


@pytest.mark.parametrize(
    ("token", "dead", "action", "expected"),
    [
        ("", {"w_1"}, tk.TokenAction.TAKE_FREE, ""),
        ("Token_for_w_1_join", {"w_1"}, tk.TokenAction.TAKE_OVER, "Token_for_w_1_join"),
        ("Token_for_w_1_leave", {"w_1"}, tk.TokenAction.TAKE_OVER, "Token_for_w_1_leave"),
        ("Token_for_w_2_join", {"w_1"}, tk.TokenAction.WAIT, "rpc_prefix_0/Token_for_w_2_join"),
        ("weird", set(), tk.TokenAction.TAKE_OVER, "weird"),
        (tk.CLEANER_TOKEN, set(), tk.TokenAction.ALREADY_HELD, tk.CLEANER_TOKEN),
    ],
)
def test_decide_token(token: str, dead: set[str], action: tk.TokenAction, expected: str) -> None:
    d = tk.decide_token(token, dead)
    assert (d.action, d.expected) == (action, expected)


@pytest.mark.parametrize(
    ("dead", "infos", "owner", "sets", "delete"),
    [
        # the common crash
        (
            ("w_1", 1),
            "w_0-0,w_1-1,w_2-2,",
            "w_1",
            {tk.ALL_WORKER_INFOS_KEY: "w_0-0,w_2-2,"},
            ("rpc_prefix_0/names/1", "rpc_prefix_0/addrs/w_1"),
        ),
        # the first member
        (
            ("w_0", 0),
            "w_0-0,w_2-2,",
            "w_0",
            {tk.ALL_WORKER_INFOS_KEY: "w_2-2,"},
            ("rpc_prefix_0/names/0", "rpc_prefix_0/addrs/w_0"),
        ),
        # died before registering in the list; names/<rank> missing
        (("w_9", 9), "w_0-0,", None, {}, ("rpc_prefix_0/names/9", "rpc_prefix_0/addrs/w_9")),
        # a replacement with the same name already joined under rank 5: keep its address
        (
            ("w_1", 1),
            "w_0-0,w_1-1,w_1-5,",
            "w_1",
            {tk.ALL_WORKER_INFOS_KEY: "w_0-0,w_1-5,"},
            ("rpc_prefix_0/names/1",),
        ),
        # another name owns the rank now: keep names/<rank>
        (("w_1", 1), "w_0-0,w_3-1,", "w_3", {}, ("rpc_prefix_0/addrs/w_1",)),
        # idempotent: already clean
        (("w_1", 1), "w_0-0,", None, {}, ("rpc_prefix_0/names/1", "rpc_prefix_0/addrs/w_1")),
    ],
)
def test_plan_eviction(
    dead: tuple[str, int],
    infos: str,
    owner: str | None,
    sets: dict[str, str],
    delete: tuple[str, ...],
) -> None:
    plan = tk.plan_eviction(dead[0], dead[1], infos, owner)
    assert plan.set == sets
    assert plan.delete == delete


@pytest.mark.parametrize(
    ("infos", "owner", "delete"),
    [
        ("w_0-0,", "w_1", ("rpc_prefix_0/names/1", "rpc_prefix_0/addrs/w_1")),
        ("w_0-0,w_1-4,", "w_1", ("rpc_prefix_0/names/1",)),  # rejoined as rank 4
        ("w_0-0,", None, ("rpc_prefix_0/addrs/w_1",)),
        ("w_0-0,", "w_7", ("rpc_prefix_0/addrs/w_1",)),
    ],
)
def test_plan_after_leave(infos: str, owner: str | None, delete: tuple[str, ...]) -> None:
    assert tk.plan_after_leave("w_1", 1, infos, owner) == tk.KeyPlan({}, delete)


def test_release_matches_torch_order() -> None:
    assert tk.release_steps() == [
        (tk.TOKEN_KEY, ""),
        ("rpc_prefix_0/" + tk.CLEANER_TOKEN, "Done"),
    ]
    assert tk.worker_token("w_1", "join") == "Token_for_w_1_join"
