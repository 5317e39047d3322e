"""Membership under stress: 16 concurrent joins, rank reuse in a small rank space, etcd restart,
etcd unreachable (clear error). Real etcd, sidecars and torch workers."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from podkit import Job, wait_for
from test_membership_kit import assert_consistent, start_pods, start_worker

from rpcjob import contract
from rpcjob.etcd import Client
from rpcjob.worker.join import transport_options
from rpcjob_operator.localexec.etcd_server import EmbeddedEtcd


@pytest.mark.slow
def test_16_concurrent_joins(etcd_endpoint: str, tmp_path: Path) -> None:
    job = Job(etcd_endpoint, tmp_path, lease_ttl=5)
    client = Client(etcd_endpoint)
    try:
        workers = start_pods(job, range(16))
        members = assert_consistent(client, job, workers, timeout=120)
        assert sorted(r for _, r in members) == list(range(16))
    finally:
        job.close()
        client.close()


@pytest.mark.slow
def test_small_rank_space_reuses_ranks_safely(etcd_endpoint: str, tmp_path: Path) -> None:
    """Rank space 2: a rank comes back only once no live member can hold a stale pipe to it."""
    job = Job(etcd_endpoint, tmp_path, lease_ttl=3, rank_space=2)
    client = Client(etcd_endpoint)
    try:
        a, b = start_pods(job, range(2))
        assert sorted([a.rank, b.rank]) == [0, 1]
        old_b = b.rank
        b.kill()  # b's rank is retired; a knew it, so it must not come back while a lives
        assert_consistent(client, job, [a])
        b2 = start_worker(b.pod)
        a.leave()  # now nobody knows the old incarnation: the space frees up
        b2.joined()
        assert b2.rank in (0, 1)
        a2 = start_worker(a.pod).joined()
        assert sorted([a2.rank, b2.rank]) == [0, 1]
        assert_consistent(client, job, [a2, b2])
        assert old_b in (a2.rank, b2.rank)  # a rank was reused, and RPCs work both ways
    finally:
        job.close()
        client.close()


@pytest.mark.slow
def test_etcd_restart_evicts_nobody_then_unreachable_is_clear(
    etcd: EmbeddedEtcd, tmp_path: Path
) -> None:
    # The cluster minimum lease TTL (docs/architecture.md#etcd-client).
    job = Job(etcd.endpoint, tmp_path, lease_ttl=10)
    client = Client(etcd.endpoint)
    try:
        workers = start_pods(job, range(3))
        before = assert_consistent(client, job, workers)
        spare = job.pod("worker", 3)

        etcd.restart()
        assert all(w.alive for w in workers)
        assert assert_consistent(client, job, workers) == before  # nobody was evicted
        workers.append(start_worker(spare).joined())  # the group still accepts joins
        assert_consistent(client, job, workers)

        # etcd gone for good: a worker asking its (running) sidecar gets a clear error
        workers[-1].leave()
        etcd.stop()
        joiner = start_worker(spare)
        line = joiner.proc.expect("JOINFAIL", timeout=240)
        assert "SidecarError" in line and "etcd" in line, line
        assert etcd.endpoint in line, line
    finally:
        job.close()
        client.close()


def _thread_names(pid: int) -> set[str]:
    names = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            names.add(Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip())
        except FileNotFoundError:
            continue  # the thread ended meanwhile
    return names


@pytest.mark.slow
@pytest.mark.parametrize(("transport", "spins"), [(None, False), ("tcp", False), ("shm", True)])
def test_transport_decides_the_busy_polling_shm_reactor(
    etcd_endpoint: str, tmp_path: Path, transport: str | None, spins: bool
) -> None:
    """spec.rpc.transport (env RPCJOB_RPC_TRANSPORT): TensorPipe's shm reactor thread, which
    busy-polls a core per idle worker, runs only when asked for ("shm"); the default is TCP."""
    env = {} if transport is None else {contract.ENV_RPC_TRANSPORT: transport}
    job = Job(etcd_endpoint, tmp_path, env=env)
    client = Client(etcd_endpoint)
    try:
        workers = start_pods(job, range(2))
        assert workers[0].ping([workers[1].name]) == []
        assert workers[1].ping([workers[0].name]) == []
        for w in workers:
            names = _thread_names(w.proc.p.pid)
            assert ("TP_SHM_reactor" in names) == spins, sorted(names)
            assert "TP_UV_loop" in names, sorted(names)  # TCP is always there
    finally:
        job.close()
        client.close()


def test_transport_options() -> None:
    assert transport_options("shm", ["cuda:0"]) == {}  # TensorPipe's own defaults
    assert transport_options("tcp", []) == {"_transports": ["uv"], "_channels": ["cma", "basic"]}
    # where GPUs are mapped, CUDA tensors keep their channels (device maps unchanged)
    assert transport_options("tcp", ["cuda:0"])["_channels"] == [
        "cuda_ipc",
        "cuda_basic",
        "cma",
        "basic",
    ]
    with pytest.raises(ValueError, match=r"RPCJOB_RPC_TRANSPORT='ibv': use tcp or shm"):
        transport_options("ibv", [])


@pytest.mark.slow
def test_a_bad_transport_fails_the_worker_with_the_field_to_fix(
    etcd_endpoint: str, tmp_path: Path
) -> None:
    job = Job(etcd_endpoint, tmp_path, env={contract.ENV_RPC_TRANSPORT: "fast"})
    try:
        pod = job.pod("worker", 0)
        line = start_worker(pod).proc.expect("JOINFAIL", timeout=240)
        assert "use tcp or shm" in line and "spec.rpc.transport" in line, line
    finally:
        job.close()


@pytest.mark.slow
def test_a_retried_join_keeps_its_first_rank_reserved_as_its_dist_autograd_id(
    etcd_endpoint: str, tmp_path: Path
) -> None:
    """torch sets a process's dist-autograd worker id once (its first rank); a join retried with
    a fresh rank keeps that id, so the sidecar keeps the first rank reserved while the process
    lives: no other incarnation can get it and mint the same context ids."""
    job = Job(etcd_endpoint, tmp_path, lease_ttl=5)
    client = Client(etcd_endpoint)
    try:
        (a,) = start_pods(job, [0])
        pod = job.pod("worker", 1)
        b = start_worker(pod, {contract.ENV_TEST_HOOK: "fail-first-join"}).joined()
        log = pod.sidecar_log.read_text()
        ranks = [int(r) for r in re.findall(r"incarnation \d+ of worker_1: rank (\d+)", log)]
        assert len(ranks) >= 2 and ranks[-1] == b.rank != ranks[0], log[-3000:]
        first = ranks[0]
        assert b.autograd_id() == first
        held = client.get(job.keys.rank(first))
        assert held is not None, f"rank {first} (worker_1's dist-autograd id) is not reserved"
        rec = json.loads(held.value)
        assert (rec["worker"], rec["reserved_by"]) == ("", "worker_1"), rec
        assert_consistent(client, job, [a, b])  # the reservation is no member and evicts nobody
        c = start_worker(job.pod("worker", 2)).joined()
        assert c.rank not in (first, b.rank, a.rank)
        b.leave()  # the process ends: its reservation goes with its lease
        wait_for(lambda: client.get(job.keys.rank(first)) is None, 60, "the reservation to end")
        assert_consistent(client, job, [a, c])
    finally:
        job.close()
        client.close()
