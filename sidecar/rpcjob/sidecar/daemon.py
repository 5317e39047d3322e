"""The sidecar's state: its etcd leases, the worker's incarnations, the membership watch and the
cleaner election. The gRPC servicer (server.py) and main.py only call into this.

Two leases: the *sidecar lease* (process lifetime) carries the cleaner election, so a sidecar
whose worker is between incarnations can still clean up after it; each *incarnation lease*
carries ``ranks/<r>``, ``members/<w>`` and eviction acks, and is revoked the moment the worker's
stream closes without a graceful leave (crash detection without waiting for a TTL).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from rpcjob import devices as dv
from rpcjob import torchkeys as tk
from rpcjob.etcd import Client, Compare, EtcdError, Lease, Op, WatchEvent

from .cleaner import Cleaner, kvs_of, parse_ident, read_snapshot
from .cleanup import Identity, name_is_clean
from .config import SidecarConfig
from .http import Metrics
from .incarnation import Event, HelloError, Incarnation, IncarnationMixin, Report, pb
from .introspect import Introspection
from .leases import FIRST_RETRY_S, LeaseKeeper
from .members import MembershipView
from .ranks import RESERVE_LOST, allocate_once, predecessor_leases

log = logging.getLogger("rpcjob.sidecar")


class Sidecar(IncarnationMixin):
    def __init__(
        self, cfg: SidecarConfig, client: Client, node: dv.NodeGPUs, metrics: Metrics
    ) -> None:
        self.cfg, self.client, self.node, self.metrics = cfg, client, node, metrics
        self.keys = cfg.keys
        self.me = cfg.worker_name
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.hello_lock = threading.Lock()
        self.view = MembershipView(self.keys)
        self.evicts: set[Identity] = set()
        self.election_holder: int | None = None
        self.inc: Incarnation | None = None
        self.first_rank: tuple[int, int] | None = None  # (worker pid, its first rank)
        self.wake = threading.Event()
        self.stopping = threading.Event()  # SIGTERM: no new incarnation (still cleans)
        self.closed = threading.Event()  # drained and leases given up: background loops end
        self.failed = threading.Event()  # the membership watch ended: main exits 1
        self.lease: Lease | None = None
        self.lease_keeper: LeaseKeeper | None = None
        self.cleaner = Cleaner(
            client, self.keys, max(3.0 * cfg.lease_ttl, 10.0), on_evicted=self._on_evicted
        )
        self.introspection = Introspection(self)
        metrics.routes.update(self.introspection.routes())

    def on_report(self, inc: Incarnation, r: Any) -> None:
        if r.state == Report.INTROSPECTION:  # an answer, not a state change
            self.introspection.on_reply(r)
            return
        super().on_report(inc, r)

    # --- start / stop -------------------------------------------------------------------------
    def start(self) -> None:
        self._grant_sidecar_lease()
        self._revoke_predecessors()
        res = self.client.txn(
            [],
            [Op.get(self.keys.members, prefix=True), Op.get(self.keys.evicts, prefix=True),
             Op.get(self.keys.election)],
        )  # fmt: skip
        members, evicts, election = (kvs_of(r) for r in res.responses)
        with self.lock:
            self.view.apply([WatchEvent("PUT", kv, None) for kv in members])
            for kv in evicts:
                self._note_evict(kv.key.decode(), True)
            self.election_holder = int(election[0].value) if election else None
            self.metrics.members.set(len(self.view.members))
        # Our own keys sort before "store/"; of the store only torch's RPC keys matter (token,
        # _ALL_WORKER_INFOS: they gate Hello and wake the cleaner), not the user's traffic.
        start = res.revision + 1
        self.client.watch(self.keys.root, range_end=self.keys.store, start_revision=start,
                          callback=self._on_batch, on_error=self._on_watch_error)  # fmt: skip
        self.client.watch(self.keys.store + tk.RPC_PREFIX, prefix=True, start_revision=start,
                          callback=self._on_store_batch, on_error=self._on_watch_error)  # fmt: skip
        threading.Thread(target=self._cleaner_loop, daemon=True, name="rpcjob-cleaner").start()

    def _revoke_predecessors(self) -> None:
        """An earlier incarnation of this slot still holding a rank is dead (see
        ranks.predecessor_leases): revoke its lease now, so that the group evicts it and the
        new worker's Hello need not wait for the TTL."""
        try:
            for lease in predecessor_leases(self.client.get_prefix(self.keys.ranks), self.me):
                log.warning("revoking the lease of an earlier incarnation of %s (%x): its "
                            "pod or sidecar is gone", self.me, lease)  # fmt: skip
                self.client.lease_revoke(lease)
        except EtcdError as e:
            log.warning("could not revoke an earlier incarnation's lease (%s): it expires "
                        "within the lease TTL", e)  # fmt: skip

    def _grant_sidecar_lease(self) -> None:
        self.lease = self.client.lease_grant(self.cfg.lease_ttl)
        self.lease_keeper = LeaseKeeper(self.client, self.lease, self._sidecar_lease_gone,
                                        "sidecar")  # fmt: skip

    def _sidecar_lease_gone(self) -> None:
        # Only when etcd said the lease is gone (LeaseKeeper rides through outages): a new
        # one carries the cleaner election from now on.
        log.warning("the sidecar lease %x expired: granting a new one",
                    self.lease.id if self.lease else 0)  # fmt: skip
        delay = FIRST_RETRY_S
        while not self.closed.is_set():
            try:
                self._grant_sidecar_lease()
                return
            except EtcdError as e:
                log.warning("cannot grant a new sidecar lease yet (%s): retrying", e)
                self.closed.wait(delay)  # backoff between attempts, not synchronisation
                delay = min(delay * 2, max(self.cfg.lease_ttl / 3, FIRST_RETRY_S))

    def drain(self, grace: float) -> None:
        """SIGTERM: tell the worker to drain, wait for its graceful leave, then give up leases."""
        self.stopping.set()
        inc = self.inc
        if inc is not None and inc.session_open and inc.state in (Report.JOINING, Report.JOINED):
            log.info("draining: asking %s to leave (grace %.0fs)", self.me, grace)
            self._send(inc, Event(kind=Event.DRAIN))
            if not inc.ended.wait(grace):
                log.warning("worker did not leave within %.0fs: revoking its lease", grace)
        if inc is not None:
            self.end_incarnation(inc, "sidecar stopping")
        self.closed.set()
        if self.lease_keeper is not None:
            self.lease_keeper.stop()
        if self.lease is not None:
            try:
                self.client.lease_revoke(self.lease.id)
            except EtcdError as e:
                log.warning("could not revoke the sidecar lease (it expires in %ss): %s",
                            self.cfg.lease_ttl, e)  # fmt: skip

    # --- watch ----------------------------------------------------------------------------------
    def _on_watch_error(self, err: BaseException) -> None:
        log.error("membership watch ended (%s); exiting so that the pod restarts", err)
        self.failed.set()

    def _on_store_batch(self, batch: list[WatchEvent]) -> None:
        with self.cond:
            self.cond.notify_all()
        self.wake.set()

    def _on_batch(self, batch: list[WatchEvent]) -> None:
        acks: list[Identity] = []
        with self.lock:
            for wev in self.view.apply(batch):
                if wev.kind == "JOINED":
                    self.metrics.joins.inc()
                else:
                    self.metrics.leaves.inc()
                inc = self.inc
                if inc is not None and inc.session_open and wev.member.name != self.me:
                    kind = Event.JOINED if wev.kind == "JOINED" else Event.LEFT
                    self._send(inc, Event(kind=kind, peer=self._member_pb(wev.member, inc)))
            self.metrics.members.set(len(self.view.members))
            for ev in batch:
                key = ev.kv.key.decode()
                if key == self.keys.election:
                    self.election_holder = int(ev.kv.value) if ev.type == "PUT" else None
                    self.metrics.leader.set(self._is_leader())
                elif key.startswith(self.keys.evicts):
                    ident = self._note_evict(key, ev.type == "PUT")
                    if ident is not None and self._forward_evict(ident):
                        acks.append(ident)
            self.cond.notify_all()
        self.wake.set()
        for ident in acks:
            self._ack(ident)

    def _note_evict(self, key: str, put: bool) -> Identity | None:
        tail = key[len(self.keys.evicts) :]
        if "/" in tail:
            return None
        ident = parse_ident(tail)
        if put:
            self.evicts.add(ident)
            return ident
        self.evicts.discard(ident)
        return None

    def _forward_evict(self, ident: Identity) -> bool:
        """Send an EVICT to the worker; True when the sidecar acks on its behalf.

        Only a JOINED (or leaving) worker's agent can hold the dead peer, so only its ack is
        awaited. A joining worker may be blocked on the token the cleaner holds until the
        acks are in: it gets the EVICT (applied once its agent exists, harmless if the peer
        is unknown) but the sidecar acks for it, since its join reads the cleaned state.
        """
        inc = self.inc
        if inc is None:
            return False  # no live incarnation: nobody to wait for
        if not inc.session_open or inc.state not in (Report.JOINING, Report.JOINED,
                                                     Report.LEAVING):  # fmt: skip
            return True
        peer = pb.Member(name=ident[0], rank=ident[1])
        eid = self._send(inc, Event(kind=Event.EVICT, peer=peer))
        if inc.state == Report.JOINING:
            return True
        inc.evict_ids[eid] = ident
        return False

    def _ack(self, ident: Identity, inc: Incarnation | None = None) -> None:
        inc = inc or self.inc
        if inc is None or inc.ended.is_set():
            return
        try:
            self.client.put(self.keys.evict_ack(ident[0], ident[1], inc.rank), str(inc.revision),
                            lease=inc.lease.id)  # fmt: skip
        except EtcdError as e:
            log.warning("could not ack the eviction of %s: %s", ident, e)

    # --- cleaner election -------------------------------------------------------------------------
    def _is_leader(self) -> bool:
        return self.lease is not None and self.election_holder == self.lease.id

    def _cleaner_loop(self) -> None:
        # Runs through a drain too: a peer may crash while this worker leaves.
        while not self.closed.is_set():
            # Watch events wake the loop; the timeout re-plans for ack deadlines (often while
            # an eviction is pending, rarely otherwise).
            self.wake.wait(0.5 if self.evicts else 5.0)
            self.wake.clear()
            try:
                if self.election_holder is None and self.lease is not None:
                    self.client.txn(
                        [Compare.version(self.keys.election, "=", 0)],
                        [Op.put(self.keys.election, str(self.lease.id), lease=self.lease.id)],
                    )
                self.cleaner.leader_value = str(self.lease.id) if self.lease else ""
                for _ in range(50):
                    if not self._is_leader() or not self.cleaner.step():
                        break
            except EtcdError as e:
                log.warning("cleaner step failed (retrying): %s", e)

    def _on_evicted(self, ident: Identity, latency: float, expired: bool) -> None:
        self.metrics.evictions.inc()
        self.metrics.eviction_latency.observe(latency)
        if expired:
            self.metrics.evictions_unacked.inc()

    # --- incarnations ---------------------------------------------------------------------------
    def hello(
        self, timeout: float, pid: int = 0, fresh_rank: bool = False
    ) -> tuple[Incarnation, Any]:
        deadline = time.monotonic() + timeout
        # A worker process retrying its join keeps its first rank as its dist-autograd worker
        # id (torch cannot change it in-process): keep that rank reserved while it lives.
        first = self.first_rank
        reserve = first[1] if fresh_rank and first is not None and first[0] == pid else None
        with self.hello_lock:
            if self.stopping.is_set():
                raise HelloError("the sidecar is stopping (SIGTERM): not starting a worker")
            if self.inc is not None:
                self.end_incarnation(self.inc, "the worker said Hello again")
            self._wait_until(
                deadline,
                self._name_clean,
                f"the previous incarnation of {self.me} is still being evicted",
            )
            lease = self.client.lease_grant(self.cfg.lease_ttl)
            try:
                rank, rev = self._allocate(lease, deadline, reserve)
            except BaseException:
                self.client.lease_revoke(lease.id)
                raise
            ka = LeaseKeeper(self.client, lease, lambda: self._incarnation_lost(lease),
                             "incarnation")  # fmt: skip
            inc = Incarnation(lease, ka, rank, rev, self._plan())
            with self.lock:
                self.inc = inc
                pending = sorted(self.evicts)
            for ident in pending:
                self._ack(ident, inc)  # not joined yet: nothing to evict from its agent
            if reserve is None:
                self.first_rank = (pid, rank)
            self.metrics.incarnations.inc()
            self.metrics.rank.set(rank)
            log.info("incarnation %d of %s: rank %d", rev, self.me, rank)
            return inc, self._identity(inc)

    def _name_clean(self) -> bool:
        return name_is_clean(read_snapshot(self.client, self.keys).state, self.me)

    def _wait_until(self, deadline: float, check: Callable[[], bool], what: str) -> None:
        logged = False
        while not check():
            if time.monotonic() > deadline:
                raise HelloError(f"timed out: {what}")
            if not logged:
                log.info("waiting: %s", what)
                logged = True
            with self.cond:
                self.cond.wait(min(1.0, max(0.0, deadline - time.monotonic())))

    def _allocate(self, lease: Lease, deadline: float, reserve: int | None) -> tuple[int, int]:
        record = {"pod": self.cfg.pod_name, "node": self.cfg.node_name, "ip": self.cfg.pod_ip}
        last = ""
        while True:
            got = allocate_once(self.client, self.keys, lease.id, self.me, record,
                                self.cfg.rank_space, reserve)  # fmt: skip
            if isinstance(got, tuple):
                return got
            if got.startswith(RESERVE_LOST):
                raise HelloError(got, "FAILED_PRECONDITION")
            if got in ("stamped", "raced"):
                continue
            if got != last:
                log.warning("%s", got)
                last = got
            if time.monotonic() > deadline:
                raise HelloError(got, "RESOURCE_EXHAUSTED")
            with self.cond:
                self.cond.wait(min(1.0, max(0.0, deadline - time.monotonic())))

    def _plan(self) -> dv.DevicePlan:
        peers = [dv.Peer(m.name, m.node, m.clique, m.devices) for m in self.view.members.values()]
        return dv.plan_devices(
            worker=self.me, node=self.node, requested_gpus=self.cfg.gpus, slots=self.cfg.slots,
            peers=peers, device_maps=self.cfg.device_maps,
        )  # fmt: skip

    # --- probes -------------------------------------------------------------------------------
    def healthy(self) -> tuple[bool, str]:
        """Liveness. An unreachable etcd is not a reason to restart the sidecar: that cannot
        bring etcd back, and it would end a healthy worker whose lease etcd still keeps. It
        answers at once, without an etcd round trip (a probe has a 1 s timeout, and a busy
        machine must not turn a slow etcd call into a restart)."""
        if self.failed.is_set():
            return False, "the membership watch ended"
        inc = self.inc
        keepers = [k for k in (self.lease_keeper, inc.keepalive if inc else None) if k]
        since = min((k.unreachable_since for k in keepers if k.unreachable_since), default=None)
        if since is not None:
            return True, (f"ok; etcd unreachable for {time.monotonic() - since:.0f}s "
                          "(retrying; the worker stays joined)")  # fmt: skip
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        inc = self.inc
        if inc is not None and inc.state == Report.JOINED:
            return True, f"{self.me} joined with rank {inc.rank}"
        return False, f"{self.me} has not joined"
