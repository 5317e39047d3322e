"""rpcjob.torchkeys: torch's key names and value formats (table-driven)."""

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


def test_worker_token_and_waiter_key() -> None:
    assert tk.worker_token("w_1", "join") == "Token_for_w_1_join"
    assert tk.waiter_key(tk.CLEANER_TOKEN) == "rpc_prefix_0/" + tk.CLEANER_TOKEN
    assert (tk.name_key(3), tk.addr_key("w_1")) == (
        "rpc_prefix_0/names/3",
        "rpc_prefix_0/addrs/w_1",
    )
