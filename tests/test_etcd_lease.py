"""Leases and the keepalive thread of rpcjob.etcd.Client against a real etcd."""

from __future__ import annotations

import threading
import time
import uuid

from rpcjob.etcd import Client, EtcdError, EtcdUnavailable, Lease
from rpcjob_operator.localexec.etcd_server import EmbeddedEtcd


def test_lease_grant_ttl_keepalive_revoke(etcd_endpoint: str) -> None:
    k = f"/lease/{uuid.uuid4().hex}"
    with Client(etcd_endpoint) as c:
        lease = c.lease_grant(30)
        assert isinstance(lease, Lease) and lease.id != 0 and lease.ttl == 30
        c.put(k, "v", lease=lease.id)
        kv = c.get(k)
        assert kv is not None and kv.lease == lease.id
        assert 0 < c.lease_ttl(lease.id) <= 30
        assert c.lease_keepalive_once(lease.id) == 30
        chosen = c.lease_grant(30, lease_id=lease.id + 1)
        assert chosen.id == lease.id + 1
        c.lease_revoke(lease.id)
        assert c.get(k) is None  # revoking deletes the lease's keys
        assert c.lease_ttl(lease.id) == -1
        assert c.lease_keepalive_once(lease.id) == 0
        c.lease_revoke(lease.id)  # unknown lease: no error
        c.lease_revoke(chosen.id)


def test_keepalive_keeps_lease_past_its_ttl(etcd_endpoint: str) -> None:
    with Client(etcd_endpoint) as c:
        lease = c.lease_grant(2)
        ka = c.keepalive(lease)
        try:
            # Not a sleep-as-sync: "lost" must stay unset for longer than the TTL.
            assert not ka.lost.wait(1.5 * lease.ttl + 0.5)
            assert c.lease_ttl(lease.id) > 0
        finally:
            ka.stop()
            c.lease_revoke(lease.id)
        assert not ka.alive


def test_keepalive_reports_revoke_once(etcd_endpoint: str) -> None:
    calls: list[BaseException | None] = []
    done = threading.Event()

    def on_lost(err: BaseException | None) -> None:
        calls.append(err)
        done.set()

    with Client(etcd_endpoint) as c, Client(etcd_endpoint) as other:
        lease = c.lease_grant(3)
        ka = c.keepalive(lease, on_lost=on_lost)
        other.lease_revoke(lease.id)
        assert done.wait(10), "on_lost did not fire after the lease was revoked"
        assert ka.lost.is_set()
        assert calls == [None]  # etcd said the lease is gone (not an error)
        assert isinstance(ka.error, EtcdError) and "expired or was revoked" in str(ka.error)
        deadline = time.monotonic() + 5
        while ka.alive and time.monotonic() < deadline:
            ka.lost.wait(0.05)
        assert not ka.alive
        assert calls == [None]


def test_keepalive_reports_unreachable_etcd_after_ttl(etcd: EmbeddedEtcd) -> None:
    lost = threading.Event()
    errors: list[BaseException | None] = []

    def on_lost(err: BaseException | None) -> None:
        errors.append(err)
        lost.set()

    with Client(etcd.endpoint, timeout=1) as c:
        lease = c.lease_grant(2)
        ka = c.keepalive(lease, on_lost=on_lost)
        etcd.stop()
        t0 = time.monotonic()
        assert lost.wait(15), "on_lost did not fire with etcd down"
        assert time.monotonic() - t0 < lease.ttl + 3
        assert len(errors) == 1 and isinstance(errors[0], EtcdUnavailable)
        assert etcd.endpoint in str(errors[0])
        assert ka.lost.is_set()
