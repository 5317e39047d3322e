"""rpcjob-sidecar against real etcd, with real processes: each pod is a sidecar process plus a
fake worker process (tests/fake_worker.py) that speaks the gRPC protocol and writes torch's
store keys the way torch 2.13 does. The full torch scenarios live in test_membership_*.py."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ETCD_TEST_ROOT_PASSWORD
from etcd_tls import TLSMaterial
from podkit import FakeWorker, Job, Pod, wait_for

from rpcjob import contract as c
from rpcjob import torchkeys as tk
from rpcjob.etcd import Client
from rpcjob_operator.localexec.etcd_server import EmbeddedEtcd

# Groups of sidecar processes that wait out lease TTLs and ack deadlines: minutes in all.
pytestmark = pytest.mark.slow


@pytest.fixture
def client(etcd_endpoint: str) -> Iterator[Client]:
    with Client(etcd_endpoint) as c:
        yield c


@pytest.fixture
def job(etcd_endpoint: str, tmp_path: Path) -> Iterator[Job]:
    j = Job(etcd_endpoint, tmp_path, lease_ttl=3)
    yield j
    j.close()


def joined(w: FakeWorker, name: str, timeout: float = 30) -> dict:  # type: ignore[type-arg]
    return w.wait_for(lambda e: e["kind"] == "JOINED" and e["peer"]["name"] == name, timeout,
                      f"JOINED {name}")  # fmt: skip


def evicted(w: FakeWorker, name: str, rank: int, timeout: float = 30) -> dict:  # type: ignore[type-arg]
    return w.wait_for(
        lambda e: e["kind"] == "EVICT" and (e["peer"]["name"], e["peer"]["rank"]) == (name, rank),
        timeout, f"EVICT {name}-{rank}",
    )  # fmt: skip


def store(c: Client, job: Job, key: str) -> str | None:
    kv = c.get(job.keys.store + key)
    return None if kv is None else kv.value.decode()


def start(job: Job, index: int, **env: str) -> tuple[Pod, FakeWorker, int]:
    pod = job.pod("worker", index)
    w = pod.fake_worker(**env)
    return pod, w, int(w.identity()["rank"])


def start_pair(job: Job) -> tuple[tuple[Pod, FakeWorker, int], tuple[Pod, FakeWorker, int]]:
    """Slots 0 and 1, once worker_0 has seen worker_1 join."""
    first, second = start(job, 0), start(job, 1)
    joined(first[1], "worker_1")
    return first, second


def test_member_lifecycle_snapshot_join_leave(job: Job, client: Client) -> None:
    a, wa, ra = start(job, 0)
    wait_for(lambda: a.http("/readyz")[0] == 200, 30, "A ready")
    rec = json.loads(client.get(job.keys.member("worker_0")).value)  # type: ignore[union-attr]
    assert rec["rank"] == ra and rec["ip"] == a.ip and rec["pod"] == "job-worker-0"
    _b, wb, rb = start(job, 1)
    assert rb != ra
    snap = wb.wait_for(lambda e: e["kind"] == "SNAPSHOT", 30)
    assert [m["name"] for m in snap["members"]] == ["worker_0"]
    joined(wa, "worker_1")
    wb.send("leave")
    wa.wait_for(lambda e: e["kind"] == "LEFT" and e["peer"]["name"] == "worker_1", 30)
    assert wb.proc.wait(30) == 0
    assert client.get(job.keys.member("worker_1")) is None
    assert client.get(job.keys.rank(rb)) is None
    assert client.get(job.keys.left_marker("worker_1")) is None
    assert store(client, job, tk.ALL_WORKER_INFOS_KEY) == f"worker_0-{ra},"
    assert store(client, job, tk.name_key(rb)) is None  # torch leaves it; the sidecar does not
    assert not any(e["kind"] == "EVICT" for e in wa.events())


def test_leave_whose_left_report_is_lost_is_still_a_leave(job: Job, client: Client) -> None:
    (_, wa, _), (_, wb, rb) = start_pair(job)
    wb.send("leave-exit")  # torch's leave completed; the process exits before LEFT is sent
    wa.wait_for(lambda e: e["kind"] == "LEFT" and e["peer"]["name"] == "worker_1", 30)
    wait_for(lambda: client.get(job.keys.rank(rb)) is None, 30, "rank released")
    assert not any(e["kind"] == "EVICT" for e in wa.events())


def _rejoins_with_a_fresh_rank(pod: Pod, survivor: FakeWorker, used: tuple[int, ...]) -> None:
    """The slot's replacement worker keeps the name, gets a fresh rank, and the survivor sees
    it join."""
    rank = int(pod.fake_worker().identity()["rank"])
    assert rank not in used
    survivor.wait_for(lambda e: e["kind"] == "JOINED" and e["peer"]["rank"] == rank, 30)


def test_worker_crash_revokes_lease_at_once(etcd_endpoint: str, tmp_path: Path) -> None:
    # A 30 s TTL: the eviction must not wait for it (the sidecar sees the stream close).
    job = Job(etcd_endpoint, tmp_path, lease_ttl=30)
    try:
        (_, wa, ra), (b, wb, rb) = start_pair(job)
        t0 = time.monotonic()
        wb.kill()
        evicted(wa, "worker_1", rb, timeout=20)
        assert time.monotonic() - t0 < 10, "eviction waited for the lease TTL"
        _rejoins_with_a_fresh_rank(b, wa, (ra, rb))
    finally:
        job.close()


def test_sidecar_sigkill_evicts_within_ttl_plus_1s(job: Job, client: Client) -> None:
    (_, wa, _), (b, wb, rb) = start_pair(job)
    t0 = time.monotonic()
    b.kill_sidecar()
    wb.kill()  # the worker dies with its pod
    evicted(wa, "worker_1", rb, timeout=job.lease_ttl + 30)
    took = time.monotonic() - t0
    assert took <= job.lease_ttl + 1, f"eviction took {took:.2f}s > TTL {job.lease_ttl} + 1 s"


def test_slot_replacement_evicts_its_dead_predecessor_without_the_ttl(
    etcd_endpoint: str, tmp_path: Path
) -> None:
    """The pod whose sidecar died is replaced: the new sidecar of that slot revokes the dead
    incarnation's lease when it starts, so neither the group's eviction nor the new worker's
    join waits for the (here 60 s) TTL."""
    job = Job(etcd_endpoint, tmp_path, lease_ttl=60)
    try:
        (_, wa, ra), (b, wb, rb) = start_pair(job)
        b.kill_sidecar()
        wb.kill()  # the worker dies with its sidecar
        b2 = job.pod("worker", 1)  # the slot's replacement pod
        evicted(wa, "worker_1", rb, timeout=30)
        assert "revoking the lease of an earlier incarnation" in b2.sidecar_log.read_text()
        _rejoins_with_a_fresh_rank(b2, wa, (ra, rb))
    finally:
        job.close()


def test_torch_store_cleanup_edits_exactly_the_dead_keys(job: Job, client: Client) -> None:
    _, wa, ra = start(job, 0)
    _, wb, rb = start(job, 1)
    _, wc, rc = start(job, 2)
    joined(wa, "worker_2")
    wb.kill()
    evicted(wa, "worker_1", rb)
    evicted(wc, "worker_1", rb)
    wait_for(lambda: not client.get_prefix(job.keys.evicts), 30, "eviction released")
    assert store(client, job, tk.ALL_WORKER_INFOS_KEY) == f"worker_0-{ra},worker_2-{rc},"
    assert store(client, job, tk.name_key(rb)) is None
    assert store(client, job, tk.addr_key("worker_1")) is None
    assert store(client, job, tk.name_key(ra)) == "worker_0"
    assert store(client, job, tk.addr_key("worker_2")) is not None
    assert store(client, job, tk.TOKEN_KEY) == ""
    assert store(client, job, tk.waiter_key(tk.CLEANER_TOKEN)) == tk.DONE
    assert not client.get_prefix(job.keys.evict_acks)


def test_joiner_dying_inside_critical_section(job: Job, client: Client) -> None:
    _, wa, ra = start(job, 0)
    b = job.pod("worker", 1)
    wb = b.fake_worker(RPCJOB_TEST_HOOK="die-in-critical-section")
    rb = int(wb.identity()["rank"])
    wb.proc.wait(30)  # killed itself holding Token_for_worker_1_join
    evicted(wa, "worker_1", rb)  # it had listed itself in _ALL_WORKER_INFOS
    wait_for(lambda: store(client, job, tk.TOKEN_KEY) == "", 30, "token released")
    assert store(client, job, tk.waiter_key(tk.worker_token("worker_1", "join"))) == tk.DONE
    assert store(client, job, tk.ALL_WORKER_INFOS_KEY) == f"worker_0-{ra},"
    w2 = b.fake_worker()  # the next join succeeds
    joined(wa, "worker_1")
    assert int(w2.identity()["rank"]) not in (ra, rb)


def test_exactly_one_cleaner_and_failover(job: Job, client: Client) -> None:
    pods = [start(job, i) for i in range(3)]
    joined(pods[0][1], "worker_2")
    leader = client.get(job.keys.election)
    assert leader is not None and len(client.get_prefix(job.keys.election)) == 1
    holder = next(p for p, _, _ in pods if "rpcjob_cleaner_leader 1.0" in p.http("/metrics")[1])
    assert sum("rpcjob_cleaner_leader 1.0" in p.http("/metrics")[1] for p, _, _ in pods) == 1
    holder.kill_all()  # the cleaner itself dies: another sidecar must clean up after it
    rest = [(p, w) for p, w, _ in pods if p is not holder]
    dead_rank = next(r for p, _, r in pods if p is holder)
    for _, w in rest:
        evicted(w, holder.name, dead_rank, timeout=job.lease_ttl + 30)

    # (the dead cleaner may have published the eviction itself before it died: its
    # successor, elected once its lease expires, finishes it)
    def successor() -> bool:
        new = client.get(job.keys.election)
        return new is not None and new.value != leader.value

    wait_for(successor, job.lease_ttl + 30, "a new cleaner")
    wait_for(lambda: not client.get_prefix(job.keys.evicts), 30, "eviction finished")
    assert client.get(job.keys.store + tk.TOKEN_KEY).value == b""  # type: ignore[union-attr]


def test_a_draining_cleaner_still_evicts(job: Job, client: Client) -> None:
    pods = [start(job, i, FAKE_IGNORE_DRAIN="1") for i in range(3)]
    joined(pods[0][1], "worker_2")
    leader = next(p for p in pods if "rpcjob_cleaner_leader 1.0" in p[0].http("/metrics")[1])
    others = [p for p in pods if p is not leader]
    leader[0].sidecar.send_signal(15)  # type: ignore[union-attr]  # drains for up to 20 s
    wait_for(lambda: "draining" in leader[0].sidecar_log.read_text(), 30, "leader draining")
    t0 = time.monotonic()
    others[1][1].kill()
    evicted(others[0][1], others[1][0].name, others[1][2], timeout=15)
    assert time.monotonic() - t0 < 10, "the eviction waited for the cleaner's drain to end"
    assert leader[0].sidecar.wait(60) == 0  # type: ignore[union-attr]


def test_rank_space_exhaustion_waits_then_reuses_safely(etcd_endpoint: str, tmp_path: Path) -> None:
    job = Job(etcd_endpoint, tmp_path, lease_ttl=3, rank_space=2)
    client = Client(etcd_endpoint)
    try:
        _, wa, ra = start(job, 0)
        _, wb, rb = start(job, 1)
        assert {ra, rb} == {0, 1}
        wb.send("leave")
        assert wb.proc.wait(30) == 0
        # rank rb ended while worker_0 (allocated before) is live: it may know rb, so a new
        # incarnation must not get it yet, and the space (2) is exhausted
        c = job.pod("worker", 2)
        wc = c.fake_worker()
        wait_for(lambda: "rank space exhausted" in c.sidecar_log.read_text(), 30, "exhaustion")
        assert not [e for e in wc.events() if e["kind"] == "IDENTITY"]
        wa.send("leave")
        rc = int(wc.identity()["rank"])  # now every live member postdates the retirements
        assert rc in (0, 1)
        retired = json.loads(client.get(job.keys.retired_rank(rb)).value)  # type: ignore[union-attr]
        assert retired["retired"] > 0 or rc == rb
    finally:
        client.close()
        job.close()


def test_join_failed_and_rehello_get_fresh_ranks(job: Job, client: Client) -> None:
    _, wa, ra = start(job, 0)
    b = job.pod("worker", 1)
    wb = b.fake_worker(join=False)
    r1 = int(wb.identity()["rank"])
    wb.send("failed")
    wait_for(lambda: client.get(job.keys.rank(r1)) is None, 10, "failed incarnation's rank gone")
    wb.send("rehello")
    wait_for(lambda: len([e for e in wb.events() if e["kind"] == "IDENTITY"]) == 2, 30, "Hello 2")
    r2 = int([e for e in wb.events() if e["kind"] == "IDENTITY"][1]["rank"])
    assert r2 not in (ra, r1)
    joined(wa, "worker_1")


def test_sigterm_drains_worker_and_exits_0(job: Job, client: Client) -> None:
    (_, wa, _), (b, wb, _) = start_pair(job)
    assert b.stop_sidecar() == 0
    assert any(e["kind"] == "DRAIN" for e in wb.events())
    wa.wait_for(lambda e: e["kind"] == "LEFT" and e["peer"]["name"] == "worker_1", 30)
    assert not any(e["kind"] == "EVICT" for e in wa.events())
    assert wb.proc.wait(30) == 0


def test_health_ready_and_metrics(job: Job) -> None:
    a = job.pod("worker", 0)
    assert a.http("/healthz")[0] == 200
    wa = a.fake_worker(join=False)
    wa.identity()
    code, body = a.http("/readyz")
    assert code == 503 and "not joined" in body
    wa.send("join")
    wait_for(lambda: a.http("/readyz")[0] == 200, 30, "ready after JOINED")
    _, _wb, _ = start(job, 1)
    joined(wa, "worker_1")
    wa.send("metrics rpc_calls 7")
    wait_for(lambda: 'rpcjob_agent_metric{name="rpc_calls"} 7.0' in a.http("/metrics")[1], 30,
             "agent metric exported")  # fmt: skip
    m = a.http("/metrics")[1]
    assert "rpcjob_members 2.0" in m and "rpcjob_member_joins_total 2.0" in m
    assert a.http("/nope")[0] == 404


def test_etcd_restart_evicts_no_live_member(etcd: EmbeddedEtcd, tmp_path: Path) -> None:
    # The cluster minimum TTL (docs/architecture.md#etcd-client): etcd keeps leases across a
    # restart, but after it the keepalives must get through within one TTL, and 3 s is too
    # tight on 2 busy cores.
    job = Job(etcd.endpoint, tmp_path, lease_ttl=10)
    try:
        (_, wa, _), (_, wb, _) = start_pair(job)
        etcd.restart()
        _, wc, _ = start(job, 2)  # the watch and leases came back: a new join is seen
        joined(wa, "worker_2")
        joined(wb, "worker_2")
        with Client(etcd.endpoint) as c:
            assert {kv.key.decode().rsplit("/", 1)[1] for kv in c.get_prefix(job.keys.members)} \
                == {"worker_0", "worker_1", "worker_2"}  # fmt: skip
        assert not any(e["kind"] == "EVICT" for w in (wa, wb, wc) for e in w.events())
    finally:
        job.close()


def test_tls_and_auth_etcd(
    etcd_tls_auth: EmbeddedEtcd, etcd_tls_material: TLSMaterial, tmp_path: Path
) -> None:
    m = etcd_tls_material
    env = {
        c.ENV_ETCD_CA: m.ca, c.ENV_ETCD_CERT: m.client_cert, c.ENV_ETCD_KEY: m.client_key,
        c.ENV_ETCD_USER: "root", c.ENV_ETCD_PASSWORD: ETCD_TEST_ROOT_PASSWORD,
    }  # fmt: skip
    job = Job(etcd_tls_auth.endpoint, tmp_path, lease_ttl=3, env=env)
    try:
        (a, wa, _), (b, wb, rb) = start_pair(job)
        wb.kill()
        evicted(wa, "worker_1", rb)
        for p in (a, b):
            assert ETCD_TEST_ROOT_PASSWORD not in p.sidecar_log.read_text()
    finally:
        job.close()


def test_no_leaked_keys_or_leases_after_the_group_ends(job: Job, client: Client) -> None:
    pods = [start(job, i) for i in range(3)]
    joined(pods[0][1], "worker_2")
    pods[1][1].kill()  # one crash on the way
    evicted(pods[0][1], "worker_1", pods[1][2])
    for p, _, _ in pods:
        assert p.stop_sidecar() == 0
    left = [kv for kv in client.get_prefix(job.keys.root)]
    assert [kv.key for kv in left if kv.lease] == []
    kinds = {kv.key.decode()[len(job.keys.root) :].split("/", 1)[0] for kv in left}
    # what stays until the job's prefix is deleted: torch's store and the retired-rank ledger
    assert kinds <= {"store", "ranks-retired"}
    assert store(client, job, tk.ALL_WORKER_INFOS_KEY) == ""


def test_concurrent_joins_then_many_crashes_at_once(job: Job, client: Client) -> None:
    n = 10
    pods = [job.pod("worker", i, start=False) for i in range(n)]
    for p in pods:
        p.start_sidecar(wait=False)
    for p in pods:
        wait_for(p._sidecar_up, 120, f"sidecar {p.name}")
    workers = [p.fake_worker() for p in pods]  # Hello and join all at once
    ranks = [int(w.identity(120)["rank"]) for w in workers]
    assert sorted(ranks) == list(range(n))  # unique, dense
    wait_for(lambda: len(client.get_prefix(job.keys.members)) == n, 120, "all members")
    dead = list(range(0, n, 2))
    for i in dead:
        workers[i].kill()
    for i in range(1, n, 2):
        for d in dead:
            evicted(workers[i], f"worker_{d}", ranks[d], timeout=60)
    wait_for(lambda: not client.get_prefix(job.keys.evicts), 60, "evictions released")
    infos = tk.parse_worker_infos(store(client, job, tk.ALL_WORKER_INFOS_KEY) or "")
    assert sorted(infos) == sorted((f"worker_{i}", ranks[i]) for i in range(1, n, 2))
    assert store(client, job, tk.TOKEN_KEY) == ""


def test_a_second_crash_does_not_wedge_an_eviction(job: Job, client: Client) -> None:
    _, wa, _ = start(job, 0)
    _, hung, rh = start(job, 1, FAKE_NO_ACK="1")  # receives EVICTs, never acks
    _, wc, rc = start(job, 2)
    joined(wa, "worker_2")
    wc.kill()
    evicted(wa, "worker_2", rc)
    evicted(hung, "worker_2", rc)
    # the cleaner holds the token, waiting for the hung survivor's ack ...
    assert client.get_prefix(job.keys.evicts)
    assert store(client, job, tk.TOKEN_KEY) == tk.CLEANER_TOKEN
    t0 = time.monotonic()
    hung.kill()  # ... which crashes too: it is no longer awaited, and is evicted in turn
    evicted(wa, "worker_1", rh)
    wait_for(lambda: not client.get_prefix(job.keys.evicts), 30, "both evictions released")
    assert time.monotonic() - t0 < 10  # not the ack deadline (max(3 x TTL, 10 s))
    assert store(client, job, tk.TOKEN_KEY) == ""


def test_a_hung_survivor_is_released_at_the_ack_deadline(job: Job, client: Client) -> None:
    a, wa, _ = start(job, 0)
    _, hung, _ = start(job, 1, FAKE_NO_ACK="1")
    _, wc, rc = start(job, 2)
    joined(wa, "worker_2")
    wc.kill()
    evicted(hung, "worker_2", rc)
    t0 = time.monotonic()
    wait_for(lambda: not client.get_prefix(job.keys.evicts), 60, "release at the deadline")
    assert time.monotonic() - t0 > 5  # it did wait for the hung survivor
    assert store(client, job, tk.TOKEN_KEY) == ""
    leader = next(p for p in job.pods if "rpcjob_cleaner_leader 1.0" in p.http("/metrics")[1])
    assert "rpcjob_evictions_unacked_total 1.0" in leader.http("/metrics")[1]
    assert a.http("/healthz")[0] == 200
