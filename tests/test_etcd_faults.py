"""Faults: dead endpoints, etcd down or frozen, restarts, txn outcome-unknown rule."""

from __future__ import annotations

import time

import pytest
from etcd_waits import Collector, frozen

from rpcjob.etcd import Client, Compare, EtcdTimeout, EtcdUnavailable, Op
from rpcjob_operator.localexec.etcd_server import EmbeddedEtcd, free_port


def test_failover_skips_a_dead_endpoint(etcd_session: EmbeddedEtcd) -> None:
    dead = f"127.0.0.1:{free_port()}"
    with Client([dead, etcd_session.endpoint], timeout=5) as c:
        assert c.put("/faults/failover", "1").revision > 0
        kv = c.get("/faults/failover")
        assert kv is not None and kv.value == b"1"
        assert c.status()["endpoint"] == etcd_session.endpoint
        got = Collector()
        assert c.watch("/faults/failover", callback=got).created.wait(10)
        c.put("/faults/failover", "2")
        assert got.wait_for(1)[0].kv.value == b"2"
    # The live endpoint first, the dead one second, as a comma-separated string.
    with Client(f"{etcd_session.endpoint},{dead}") as c:
        assert c.get("/faults/failover") is not None


def test_all_endpoints_dead_fails_within_timeout_naming_them() -> None:
    a, b = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    with Client([a, b], timeout=1) as c:
        t0 = time.monotonic()
        with pytest.raises(EtcdUnavailable) as info:
            c.get("k")
        assert time.monotonic() - t0 < 2.5
    msg = str(info.value)
    assert f"etcd unreachable at every endpoint ({a}, {b}" in msg
    assert "RPCJOB_ETCD_ENDPOINTS" in msg
    assert isinstance(info.value.__cause__, Exception)  # raised from the gRPC error


def test_etcd_down_fails_within_timeout_then_usable_right_after_restart(
    etcd: EmbeddedEtcd,
) -> None:
    with Client(etcd.endpoint, timeout=1) as c:
        c.put("k", "before")
        etcd.stop()
        t0 = time.monotonic()
        with pytest.raises(EtcdUnavailable, match=f"etcd at {etcd.endpoint} unreachable"):
            c.get("k")
        assert time.monotonic() - t0 < 2.5
        with pytest.raises(EtcdUnavailable):  # a txn that never reached etcd: plain unavailable
            c.txn([], [Op.put("k", "x")])
        etcd.restart()
        # No blacklisting and no reconnect backoff to wait out: the next call works.
        kv = c.get("k", timeout=1)
        assert kv is not None and kv.value == b"before"
        assert c.txn([Compare.value("k", "=", "before")], [Op.put("k", "after")]).succeeded


def test_txn_not_retried_after_deadline(etcd: EmbeddedEtcd) -> None:
    """A txn that timed out may still apply: the client must not send it again."""
    with Client(etcd.endpoint, timeout=5) as c:
        c.put("n", "0")
        with frozen(etcd.pid):
            with pytest.raises(EtcdTimeout, match=f"get on etcd at {etcd.endpoint} timed out"):
                c.get("n", timeout=0.5)  # etcd is frozen for sure now
            with pytest.raises(EtcdTimeout) as info:
                c.txn([], [Op.put("n", "1")], timeout=0.5)
        assert "outcome is unknown" in str(info.value)
        assert etcd.endpoint in str(info.value)
        # Thawed, etcd applied the txn once or (its stream cancelled) not at all; never twice.
        kv = c.get("n")
        assert kv is not None and kv.version in (1, 2)
