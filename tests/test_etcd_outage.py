"""An etcd outage longer than the lease TTL ends no healthy incarnation.

etcd keeps leases across its own restart: a new leader restores every lease with its full TTL.
A sidecar whose keepalives failed for longer than the TTL therefore keeps retrying and keeps
its worker joined; when etcd answers again it refreshes the lease and carries on. Only a member
whose lease really expired (its sidecar could not refresh it within one TTL of etcd's return)
is evicted. Real etcd (stopped and started on the same port and data dir), real sidecars and
real torch workers.
"""

from __future__ import annotations

import json
import re
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from podkit import Job, Pod, wait_for
from test_membership_kit import assert_consistent, start_pods, start_worker

from rpcjob.etcd import Client
from rpcjob.sidecar.leases import LeaseKeeper
from rpcjob_operator.localexec.etcd_server import EmbeddedEtcd

TTL = 3
GAVE_UP = "lost: no refresh for its TTL"  # rpcjob.etcd's KeepAlive gave up
CARRY_ON = re.compile(r"the incarnation lease \w+ is still alive")


def _records(client: Client, job: Job) -> dict[str, tuple[int, int]]:
    """worker name -> (rank, incarnation) of the member records in etcd."""
    out = {}
    for kv in client.get_prefix(job.keys.members):
        rec = json.loads(kv.value)
        out[kv.key.decode().rsplit("/", 1)[1]] = (int(rec["rank"]), int(rec["incarnation"]))
    return out


def _log(pod: Pod) -> str:
    return pod.sidecar_log.read_text(errors="replace")


def _healthy_while_etcd_is_down(pods: list[Pod]) -> None:
    """Liveness stays 200 (a restart cannot bring etcd back) and says what is going on."""
    for p in pods:
        code, body = p.http("/healthz")
        assert code == 200 and "etcd unreachable" in body, (p.name, code, body)


def _outage(
    etcd: EmbeddedEtcd, pods: list[Pod], during: Callable[[list[Pod]], None] | None = None
) -> None:
    """Stop etcd for at least 2 x TTL, and until every sidecar in ``pods`` has seen its
    keepalive fail for a whole TTL (today's point of no return); then start it again on the
    same port and data dir."""
    marks = {p.name: _log(p).count(GAVE_UP) for p in pods}
    etcd.stop()
    t0 = time.monotonic()
    wait_for(
        lambda: (
            time.monotonic() - t0 >= 2 * TTL
            and all(_log(p).count(GAVE_UP) > marks[p.name] for p in pods)
        ),
        120,
        "every sidecar to see its keepalives fail for a whole TTL",
        interval=0.2,
    )
    if during is not None:
        during(pods)
    etcd.restart()


@pytest.mark.slow
def test_outage_longer_than_ttl_keeps_the_group(etcd: EmbeddedEtcd, tmp_path: Path) -> None:
    job = Job(etcd.endpoint, tmp_path, lease_ttl=TTL)
    client = Client(etcd.endpoint)
    try:
        workers = start_pods(job, range(3))
        before = assert_consistent(client, job, workers)
        records = _records(client, job)
        pods = [w.pod for w in workers]

        # 1. etcd down for 2 x TTL under a running group: nobody restarts, RPCs keep working.
        marks = {p.name: len(CARRY_ON.findall(_log(p))) for p in pods}
        _outage(etcd, pods, during=_healthy_while_etcd_is_down)
        wait_for(lambda: all(len(CARRY_ON.findall(_log(w.pod))) > marks[w.name] or not w.alive
                             for w in workers), 60,
                 "every sidecar to find its lease alive once etcd is back")  # fmt: skip
        assert all(w.alive for w in workers), [w.proc.all[-3:] for w in workers]
        assert all(p.sidecar is not None and p.sidecar.poll() is None for p in pods)
        assert assert_consistent(client, job, workers) == before
        assert _records(client, job) == records  # same ranks, same incarnations
        for p in pods:
            assert p.http("/healthz")[0] == 200

        # 2. The same outage while one sidecar is frozen past it: etcd restores its lease
        # with the full TTL, nobody refreshes it, so it really expires and only that member
        # is evicted.
        frozen = workers[2]
        assert frozen.pod.sidecar is not None
        frozen.pod.sidecar.send_signal(signal.SIGSTOP)
        live = workers[:2]
        try:
            _outage(etcd, [w.pod for w in live])
            expected = sorted((w.name, w.rank) for w in live)
            wait_for(lambda: all(w.view() == expected for w in live), 60,
                     "the frozen member's eviction", interval=0.2)  # fmt: skip
        finally:
            frozen.pod.sidecar.send_signal(signal.SIGCONT)
        assert all(w.alive for w in live)
        assert {n: r for n, r in _records(client, job).items()} == {
            w.name: records[w.name] for w in live
        }
        # The thawed sidecar finds its lease gone: its worker exits, a new incarnation joins.
        assert frozen.proc.p.wait(timeout=120) != 0
        assert "expired meanwhile" in _log(frozen.pod) or "is gone" in _log(frozen.pod)
        new = start_worker(frozen.pod).joined()
        assert new.rank not in (w.rank for w in workers)
        workers[2] = new
        assert_consistent(client, job, workers)
        assert _records(client, job)["worker_0"] == records["worker_0"]
    finally:
        job.close()
        client.close()


def test_lease_keeper_survives_an_outage_and_reports_a_real_expiry(
    etcd: EmbeddedEtcd,
) -> None:
    """The mechanism alone: LeaseKeeper keeps a lease through an outage of 2 x TTL, and calls
    on_gone only for a lease that etcd says is gone (here: revoked while we were cut off)."""
    with Client(etcd.endpoint) as client, Client(etcd.endpoint) as other:
        kept, doomed = client.lease_grant(TTL), client.lease_grant(TTL)
        client.put("/outage/kept", "x", lease=kept.id)
        gone: list[int] = []
        called = threading.Event()

        def on_gone(lid: int) -> None:
            gone.append(lid)
            called.set()

        keepers = [LeaseKeeper(client, lease, lambda lid=lease.id: on_gone(lid), "test")
                   for lease in (kept, doomed)]  # fmt: skip
        try:
            etcd.stop()
            t0 = time.monotonic()
            wait_for(lambda: time.monotonic() - t0 >= 2 * TTL
                     and all(k.unreachable_since is not None for k in keepers),
                     60, "both keepers to give up on their keepalive", interval=0.1)  # fmt: skip
            etcd.restart()
            other.lease_revoke(doomed.id)  # it "expired" while this client was cut off
            assert called.wait(60), "on_gone was not called for the revoked lease"
            assert gone == [doomed.id]
            wait_for(lambda: keepers[0].unreachable_since is None, 60, "the kept lease back")
            # Refreshed since: it outlives the TTL etcd restored it with (the scenario's
            # length, not a synchronisation) and its key is still there.
            t1 = time.monotonic()
            wait_for(lambda: time.monotonic() - t1 > TTL + 1, TTL + 5, "one more TTL")
            assert other.lease_ttl(kept.id) > 0
            assert other.get("/outage/kept") is not None
            assert gone == [doomed.id] and not keepers[0].gone.is_set()
        finally:
            for k in keepers:
                k.stop()
