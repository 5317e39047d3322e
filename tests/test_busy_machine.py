"""A busy machine slows the group down; it does not restart healthy members.

On a loaded 2-core machine a process can be off the CPU for seconds: a sidecar (its keepalive
thread), or etcd itself. With ``rpcjob run``'s former 3 s lease TTL, keepalives every 1 s left a
2 s margin, so a stall that long let etcd expire a live member's lease: the group evicted it and
its pod was deleted with reason ``Restart``. The default TTL now tolerates such stalls, while a
crashed worker is still evicted at once (its sidecar revokes the lease when the worker's stream
closes; no TTL involved). Real etcd, sidecars and torch workers at ``rpcjob run``'s default TTL;
the stalls are SIGSTOP/SIGCONT of one sidecar and of etcd.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from etcd_waits import frozen
from podkit import Job, wait_for
from test_membership_kit import Worker, assert_consistent, start_pods, start_worker

from rpcjob.etcd import Client
from rpcjob_operator import cli
from rpcjob_operator.localexec.etcd_server import EmbeddedEtcd

STALL_S = 4.0  # what a loaded machine produces (and more than a 3 s TTL survives)


def run_default_ttl() -> int:
    """``rpcjob run``'s default --lease-ttl (the value this test is about)."""
    return int(next(p.default for p in cli.run.params if p.name == "lease_ttl"))


def _lease_of(client: Client, job: Job, w: Worker) -> int:
    kv = client.get(job.keys.rank(w.rank))
    assert kv is not None, f"{w.name}'s rank record {w.rank} is gone: its lease expired"
    return kv.lease


def _refreshed_since_stall(client: Client, job: Job, workers: list[Worker], ttl: int) -> bool:
    """Every member's incarnation lease is alive and was refreshed after the stall."""
    for w in workers:
        left = client.lease_ttl(_lease_of(client, job, w))
        assert left > 0, f"{w.name}'s lease expired during a {STALL_S:.0f}s stall"
        if left < ttl - ttl / 3 - 1:
            return False  # not refreshed yet since the stall
    return True


def _stall(pause: float) -> None:
    """The stall's length (the scenario itself, not a synchronisation)."""
    time.sleep(pause)


@pytest.mark.slow
def test_stalls_do_not_restart_members_and_crashes_still_evict_at_once(
    etcd: EmbeddedEtcd, tmp_path: Path
) -> None:
    ttl = run_default_ttl()
    job = Job(etcd.endpoint, tmp_path, lease_ttl=ttl)
    client = Client(etcd.endpoint)
    try:
        workers = start_pods(job, range(3))
        before = assert_consistent(client, job, workers)
        leases = {w.name: _lease_of(client, job, w) for w in workers}

        # A sidecar off the CPU for STALL_S (its keepalive thread with it).
        sidecar = workers[1].pod.sidecar
        assert sidecar is not None
        sidecar.send_signal(signal.SIGSTOP)
        try:
            _stall(STALL_S)
        finally:
            sidecar.send_signal(signal.SIGCONT)
        wait_for(lambda: _refreshed_since_stall(client, job, workers, ttl), 60,
                 "every lease refreshed after the sidecar's stall", interval=0.2)  # fmt: skip

        # etcd off the CPU for STALL_S (nothing is answered, nothing refreshed).
        with frozen(etcd.pid):
            _stall(STALL_S)
        wait_for(lambda: _refreshed_since_stall(client, job, workers, ttl), 60,
                 "every lease refreshed after etcd's stall", interval=0.2)  # fmt: skip

        assert all(w.alive for w in workers), [w.proc.all[-3:] for w in workers]
        assert assert_consistent(client, job, workers) == before  # nobody evicted or replaced
        assert {w.name: _lease_of(client, job, w) for w in workers} == leases

        # A crashed worker is still evicted at once: its sidecar revokes the lease when the
        # worker's stream closes, well before the (longer) TTL could expire it.
        victim = workers[2]
        t0 = time.monotonic()
        victim.kill()
        live = workers[:2]
        expected = sorted((w.name, w.rank) for w in live)
        wait_for(lambda: all(w.view() == expected for w in live), 60,
                 "the crashed worker's eviction", interval=0.1)  # fmt: skip
        took = time.monotonic() - t0
        assert took < ttl, f"eviction took {took:.1f}s: it waited for the lease TTL ({ttl}s)"
        assert "revoking its lease now" in victim.pod.sidecar_log.read_text()
        workers[2] = start_worker(victim.pod).joined()
        assert_consistent(client, job, workers)
    finally:
        job.close()
        client.close()
