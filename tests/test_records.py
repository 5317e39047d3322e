"""rpcjob.records: the one member record and the one reader of a job's members."""

from __future__ import annotations

import pytest

from rpcjob import contract
from rpcjob.etcd import KV
from rpcjob.records import InvalidRecord, MemberRecord, members_from_kvs

KEYS = contract.JobKeys("ns", "demo", "uid-1")


def kv(name: str, value: str, create: int = 5) -> KV:
    return KV(KEYS.member(name).encode(), value.encode(), create, create, 1, 0)


def test_reader_takes_the_name_from_the_key_and_skips_bad_records(
    caplog: pytest.LogCaptureFixture,
) -> None:
    good = MemberRecord("w_1", 3, "demo-w-1", "n1", "10.0.0.2", ("cuda:0",), 4, 0, "c").encode()
    got = members_from_kvs(
        [kv("w_1", good, 9), kv("w_0", '{"rank": 0, "gpus": [1]}'), kv("x_0", "[1]"),
         kv("y_0", "{not json"), kv("z_0", '{"rank": "seven"}')],
        KEYS,
    )  # fmt: skip
    assert got == (
        MemberRecord("w_0", 0, devices=("cuda:1",), joined=5),
        MemberRecord("w_1", 3, "demo-w-1", "n1", "10.0.0.2", ("cuda:0",), 4, 9, "c"),
    )
    assert [m.role for m in got] == ["w", "w"]
    skipped = [r.getMessage() for r in caplog.records]
    assert len(skipped) == 3 and all("skipping member record /rpcjob/ns/demo/uid-1/members/" in m
                                     for m in skipped)  # fmt: skip


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{", "member record is not JSON"),
        (b"[]", "member record is not a JSON object"),
        (b'{"rank": 1}', "member record {'rank': 1}: KeyError('name')"),
    ],
)
def test_decode_errors_say_what_is_wrong(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidRecord, match=message.replace("(", r"\(").replace(")", r"\)")):
        MemberRecord.decode(raw)
