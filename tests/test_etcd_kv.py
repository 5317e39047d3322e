"""rpcjob.etcd.Client KV operations and txns against a real etcd."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest

from rpcjob.etcd import (
    KV,
    Client,
    Compare,
    DeleteResult,
    EtcdError,
    Op,
    PutResult,
    RangeResult,
    TxnResult,
)
from rpcjob_operator.localexec.etcd_server import EmbeddedEtcd


@pytest.fixture
def client(etcd_endpoint: str) -> Iterator[Client]:
    with Client(etcd_endpoint) as c:
        yield c


@pytest.fixture
def p() -> str:
    """A unique key prefix per test (the etcd is shared by the session)."""
    return f"/t/{uuid.uuid4().hex}/"


def test_put_get_str_and_bytes(client: Client, p: str) -> None:
    r = client.put(p + "a", "1")
    assert isinstance(r, PutResult) and r.revision > 0 and r.prev is None
    kv = client.get(p + "a")
    assert kv == KV(
        (p + "a").encode(), b"1", create_revision=r.revision, mod_revision=r.revision,
        version=1, lease=0,
    )  # fmt: skip
    r2 = client.put((p + "a").encode(), b"\x00\xff", prev_kv=True)
    assert r2.prev is not None and r2.prev.value == b"1"
    got = client.get(p + "a")
    assert got is not None and got.value == b"\x00\xff" and got.version == 2
    assert client.get(p + "missing") is None


def test_range_options(client: Client, p: str) -> None:
    for i in range(5):
        client.put(f"{p}k{i}", str(i))
    client.put(p[:-1] + "0", "outside the prefix")
    r = client.range(p, prefix=True)
    assert isinstance(r, RangeResult)
    assert [kv.key for kv in r.kvs] == [f"{p}k{i}".encode() for i in range(5)]
    assert r.count == 5 and r.revision >= r.kvs[-1].mod_revision
    assert [kv.value for kv in client.get_prefix(p)] == [b"0", b"1", b"2", b"3", b"4"]
    only = client.range(p, prefix=True, keys_only=True)
    assert all(kv.value == b"" for kv in only.kvs) and len(only.kvs) == 5
    counted = client.range(p, prefix=True, count_only=True)
    assert counted.kvs == [] and counted.count == 5
    limited = client.range(p, prefix=True, limit=2)
    assert len(limited.kvs) == 2 and limited.count == 5
    between = client.range(f"{p}k1", range_end=f"{p}k3")
    assert [kv.value for kv in between.kvs] == [b"1", b"2"]
    # an old revision still shows the old value
    rev = client.put(f"{p}k0", "new").revision
    assert client.range(f"{p}k0", revision=rev - 1).kvs[0].value == b"0"


def test_delete(client: Client, p: str) -> None:
    client.put(p + "a", "1")
    client.put(p + "b", "2")
    client.put(p + "c", "3")
    d = client.delete(p + "a", prev_kv=True)
    assert isinstance(d, DeleteResult) and d.deleted == 1 and d.prev[0].value == b"1"
    assert client.delete(p + "a").deleted == 0
    d = client.delete(p, prefix=True)
    assert d.deleted == 2 and d.prev == []
    assert client.get_prefix(p) == []


def test_txn_compare_targets(client: Client, p: str) -> None:
    k = p + "k"
    created = client.txn([Compare.version(k, "=", 0)], [Op.put(k, "v1")], [Op.get(k)])
    assert isinstance(created, TxnResult) and created.succeeded
    assert isinstance(created.responses[0], PutResult)
    again = client.txn([Compare.version(k, "=", 0)], [Op.put(k, "v2")], [Op.get(k)])
    assert not again.succeeded
    got = again.responses[0]
    assert isinstance(got, RangeResult) and got.kvs[0].value == b"v1"
    kv = got.kvs[0]
    assert client.txn([Compare.value(k, "=", "v1")], [], []).succeeded
    assert client.txn([Compare.value(k, "!=", "v1")], [], []).succeeded is False
    assert client.txn([Compare.value(k, ">", "v0")], [], []).succeeded
    assert client.txn([Compare.value(k, "<", "v0")], [], []).succeeded is False
    assert client.txn([Compare.mod_revision(k, "=", kv.mod_revision)], [], []).succeeded
    assert client.txn([Compare.create_revision(k, "<", kv.create_revision + 1)], [], []).succeeded
    assert client.txn([Compare.lease(k, "=", 0)], [], []).succeeded
    assert client.txn([Compare.version(k, ">", 0)], [Op.delete(k)], []).succeeded
    assert client.get(k) is None


def test_nested_txn_compare_set_semantics(client: Client, p: str) -> None:
    """c10d compare_set with expected "": a missing key and an empty value are equal; the
    nested txn tells the three cases apart in one round trip."""

    def compare_set(key: str, expected: str, desired: str) -> bytes:
        inner = Op.txn([Compare.version(key, "=", 0)], [Op.put(key, desired)], [Op.get(key)])
        r = client.txn(
            [Compare.value(key, "=", expected)], [Op.put(key, desired)],
            [inner] if expected == "" else [Op.get(key)],
        )  # fmt: skip
        if r.succeeded:
            return desired.encode()
        sub = r.responses[0]
        if isinstance(sub, TxnResult):
            assert sub.revision == r.revision  # nested headers inherit the outer revision
            if sub.succeeded:
                return desired.encode()
            sub = sub.responses[0]
        assert isinstance(sub, RangeResult)
        return sub.kvs[0].value

    assert compare_set(p + "missing", "", "new") == b"new"  # missing == ""
    client.put(p + "empty", "")
    assert compare_set(p + "empty", "", "set") == b"set"  # empty == ""
    client.put(p + "x", "old")
    assert compare_set(p + "x", "", "no") == b"old"  # present, not empty: returns current
    assert compare_set(p + "x", "old", "yes") == b"yes"
    assert compare_set(p + "x", "old", "no") == b"yes"


def test_txn_error_is_translated(client: Client, p: str) -> None:
    k = p + "dup"
    with pytest.raises(EtcdError, match=r"etcd at .* refused txn: etcdserver: duplicate key"):
        client.txn([], [Op.put(k, "1"), Op.put(k, "2")])


def test_concurrent_adds_are_atomic(client: Client, p: str) -> None:
    """CAS loops from several threads sharing one client: no lost update."""
    k = p + "n"
    client.put(k, "0")

    def add(times: int) -> None:
        for _ in range(times):
            while True:
                kv = client.get(k)
                assert kv is not None
                r = client.txn(
                    [Compare.mod_revision(k, "=", kv.mod_revision)],
                    [Op.put(k, str(int(kv.value) + 1))],
                )
                if r.succeeded:
                    break

    threads = [threading.Thread(target=add, args=(10,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    kv = client.get(k)
    assert kv is not None and kv.value == b"40"


def test_status(client: Client, etcd_session: EmbeddedEtcd) -> None:
    st = client.status()
    assert st["endpoint"] == etcd_session.endpoint
    assert st["version"].startswith("3.")
    assert st["leader"] == st["member_id"] != 0
    assert st["revision"] > 0


def test_closed_client_says_so(etcd_endpoint: str) -> None:
    c = Client(etcd_endpoint)
    c.close()
    c.close()  # idempotent
    with pytest.raises(EtcdError, match="get: the etcd client is closed"):
        c.get("k")


def test_bad_arguments(etcd_endpoint: str, tmp_path: object) -> None:
    with pytest.raises(ValueError, match="timeout must be > 0"):
        Client(etcd_endpoint, timeout=0)
    with pytest.raises(EtcdError, match=r"cannot read the etcd CA .* file '/nonexistent/ca.pem'"):
        Client(etcd_endpoint, ca="/nonexistent/ca.pem")
    with pytest.raises(EtcdError, match=r"needs both cert= and key="):
        Client(etcd_endpoint, cert="/x.pem")
    with pytest.raises(EtcdError, match="etcd user 'u' given without a password"):
        Client(etcd_endpoint, user="u")
