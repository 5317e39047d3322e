"""The incarnation manager: one worker incarnation at a time. Hello starts one (once the name's
earlier identity is evicted: a lease, a fresh rank, the device plan); the Session's reports
drive it (JOINED publishes the member record, LEFT is a graceful leave, a stream closed without
LEFT is a crash); it relays the group's changes to the worker and acks evictions; and it ends
the incarnation, revoking its lease at once (docs/architecture.md#membership)."""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import assert_never

from rpcjob import devices as dv
from rpcjob import torchkeys as tk
from rpcjob.etcd import Client, Compare, EtcdError, Lease, Op
from rpcjob.records import MemberRecord

from ._pb import sidecar_pb2 as pb
from .cleaner import delete_stale_ops, read_snapshot
from .cleanup import Identity, after_leave, name_is_clean
from .config import SidecarConfig
from .http import Metrics
from .leases import LeaseKeeper, retry_etcd
from .ranks import Again, Allocated, ReserveLost, Wait, allocate_once, predecessor_leases
from .watcher import GroupState, WorkerEvent

log = logging.getLogger("rpcjob.sidecar")
Report = pb.WorkerReport
Event = pb.MembershipEvent


class HelloError(RuntimeError):
    def __init__(self, message: str, code: str = "UNAVAILABLE") -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Incarnation:
    lease: Lease
    keepalive: LeaseKeeper
    rank: int
    revision: int
    plan: dv.DevicePlan
    state: pb.WorkerReport.State.ValueType = Report.STATE_UNSPECIFIED  # Hello answered
    events: queue.Queue[pb.MembershipEvent | None] = field(default_factory=queue.Queue)
    session_open: bool = False
    next_id: int = 1
    evict_ids: dict[int, Identity] = field(default_factory=dict)
    ended: threading.Event = field(default_factory=threading.Event)
    closing: bool = False  # the stream-closed handler ran


class IncarnationManager:
    def __init__(
        self,
        cfg: SidecarConfig,
        client: Client,
        node: dv.NodeGPUs,
        metrics: Metrics,
        group: GroupState,
        on_introspection: Callable[[pb.WorkerReport], None],
    ) -> None:
        self.cfg, self.client, self.node, self.metrics = cfg, client, node, metrics
        self.group, self.cond = group, group.cond
        self.keys, self.me = cfg.keys, cfg.worker_name
        self._on_introspection = on_introspection
        self.inc: Incarnation | None = None
        self.first_rank: tuple[int, int] | None = None  # (worker pid, its first rank)
        self.hello_lock = threading.Lock()
        self.stopping = threading.Event()  # SIGTERM: no new incarnation

    def revoke_predecessors(self) -> None:
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

    # --- Hello ------------------------------------------------------------------------------------
    def hello(
        self, timeout: float, pid: int = 0, fresh_rank: bool = False
    ) -> tuple[Incarnation, pb.Identity]:
        deadline = time.monotonic() + timeout
        # A worker process retrying its join keeps its first rank as its dist-autograd worker
        # id (torch cannot change it in-process): keep that rank reserved while it lives.
        first = self.first_rank
        reserve = first[1] if fresh_rank and first is not None and first[0] == pid else None
        with self.hello_lock:
            if self.stopping.is_set():
                raise HelloError("the sidecar is stopping (SIGTERM): not starting a worker")
            if self.inc is not None:
                self.end(self.inc, "the worker said Hello again")
            self._wait_name_clean(deadline)
            lease = self.client.lease_grant(self.cfg.lease_ttl)
            try:
                got = self._allocate(lease, deadline, reserve)
            except BaseException:
                self.client.lease_revoke(lease.id)
                raise
            ka = LeaseKeeper(self.client, lease, lambda: self._lost(lease), "incarnation")
            inc = Incarnation(lease, ka, got.rank, got.revision, self._plan())
            with self.cond:
                self.inc = inc
                pending = sorted(self.group.evicts)
            for ident in pending:
                self.ack(ident, inc)  # not joined yet: nothing to evict from its agent
            if reserve is None:
                self.first_rank = (pid, got.rank)
            self.metrics.incarnations.inc()
            self.metrics.rank.set(got.rank)
            log.info("incarnation %d of %s: rank %d", got.revision, self.me, got.rank)
            return inc, _identity(self.cfg, got.rank, got.revision, inc.plan)

    def _wait_name_clean(self, deadline: float) -> None:
        what = f"the previous incarnation of {self.me} is still being evicted"
        logged = False
        while not name_is_clean(read_snapshot(self.client, self.keys).state, self.me):
            if time.monotonic() > deadline:
                raise HelloError(f"timed out: {what}")
            if not logged:
                log.info("waiting: %s", what)
                logged = True
            self._wait_for_change(deadline)

    def _wait_for_change(self, deadline: float) -> None:
        with self.cond:  # the watcher notifies on every batch; the timeout re-checks
            self.cond.wait(min(1.0, max(0.0, deadline - time.monotonic())))

    def _allocate(self, lease: Lease, deadline: float, reserve: int | None) -> Allocated:
        record = {"pod": self.cfg.pod_name, "node": self.cfg.node_name, "ip": self.cfg.pod_ip}
        last = ""
        while True:
            got = allocate_once(self.client, self.keys, lease.id, self.me, record,
                                self.cfg.rank_space, reserve)  # fmt: skip
            match got:
                case Allocated():
                    return got
                case ReserveLost(why):
                    raise HelloError(why, "FAILED_PRECONDITION")
                case Again():
                    continue
                case Wait(why):
                    if why != last:
                        log.warning("%s", why)
                        last = why
                    if time.monotonic() > deadline:
                        raise HelloError(why, "RESOURCE_EXHAUSTED")
                    self._wait_for_change(deadline)
                case _:
                    assert_never(got)

    def _plan(self) -> dv.DevicePlan:
        peers = [dv.Peer(m.name, m.node, m.clique, m.devices)
                 for m in self.group.members.values()]  # fmt: skip
        return dv.plan_devices(
            worker=self.me, node=self.node, requested_gpus=self.cfg.gpus, slots=self.cfg.slots,
            peers=peers, device_maps=self.cfg.device_maps,
        )  # fmt: skip

    # --- events to the worker ---------------------------------------------------------------------
    def send(self, inc: Incarnation, ev: pb.MembershipEvent) -> int:
        with self.cond:
            ev.id = inc.next_id
            inc.next_id += 1
            inc.events.put(ev)
            return int(ev.id)

    def open_session(self, inc: Incarnation) -> None:
        with self.cond:
            inc.session_open = True
            peers = sorted(self.group.members.items())
            members = [_member(m, inc.plan) for n, m in peers if n != self.me]
            self.send(inc, Event(kind=Event.SNAPSHOT, members=members))

    def on_member_event(self, wev: WorkerEvent) -> None:
        """A peer joined or left gracefully (the watcher calls this under ``cond``)."""
        inc = self.inc
        if inc is not None and inc.session_open and wev.member.name != self.me:
            kind = Event.JOINED if wev.kind == "JOINED" else Event.LEFT
            self.send(inc, Event(kind=kind, peer=_member(wev.member, inc.plan)))

    def forward_evict(self, ident: Identity) -> bool:
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
        eid = self.send(inc, Event(kind=Event.EVICT, peer=pb.Member(name=ident[0], rank=ident[1])))
        if inc.state == Report.JOINING:
            return True
        inc.evict_ids[eid] = ident
        return False

    def ack(self, ident: Identity, inc: Incarnation | None = None) -> None:
        inc = inc or self.inc
        if inc is None or inc.ended.is_set():
            return
        try:
            self.client.put(self.keys.evict_ack(ident[0], ident[1], inc.rank), str(inc.revision),
                            lease=inc.lease.id)  # fmt: skip
        except EtcdError as e:
            log.warning("could not ack the eviction of %s: %s", ident, e)

    # --- the worker's reports ---------------------------------------------------------------------
    def on_report(self, inc: Incarnation, r: pb.WorkerReport) -> None:
        if r.state == Report.INTROSPECTION:  # an answer, not a state change
            self._on_introspection(r)
            return
        if inc.ended.is_set():
            return
        if r.state == Report.METRICS:
            for k, v in r.metrics.items():
                self.metrics.agent.labels(k).set(v)
            return
        if r.state == Report.EVICTED:
            with self.cond:
                ident = inc.evict_ids.pop(r.event_id, None)
            if ident is not None:
                self.ack(ident, inc)
            return
        with self.cond:
            inc.state = r.state
        if r.state == Report.JOINING:
            with self.cond:
                pending = list(self.group.evicts)
            for ident in pending:
                self.ack(ident, inc)  # a joiner reads the cleaned _ALL_WORKER_INFOS
        elif r.state == Report.JOINED:
            self._publish_member(inc)
        elif r.state == Report.LEFT:
            self._leave(inc)
        elif r.state == Report.JOIN_FAILED:
            log.warning("%s failed to join: %s", self.me, r.detail)
            self.end(inc, "join failed")

    def _publish_member(self, inc: Incarnation) -> None:
        rec = MemberRecord(self.me, inc.rank, self.cfg.pod_name, self.cfg.node_name,
                           self.cfg.pod_ip, tuple(inc.plan.devices), inc.revision,
                           clique=self.node.clique)  # fmt: skip
        res = retry_etcd(
            "publish the member record",
            lambda: self.client.txn(
                [Compare.lease(self.keys.rank(inc.rank), "=", inc.lease.id)],
                [Op.put(self.keys.member(self.me), rec.encode(), lease=inc.lease.id)],
            ),
            self.cfg.lease_ttl,
            inc.ended,
        )
        if res is None or not res.succeeded:
            self.end(inc, "its rank record is gone (lease lost)")
            return
        self.metrics.worker_joined.set(1)
        log.info("%s joined with rank %d", self.me, inc.rank)

    def _leave(self, inc: Incarnation) -> None:
        """A graceful leave, in one txn: watchers see the left marker and the member record's
        deletion at the same revision (a LEFT, not a crash)."""
        marker = json.dumps({"incarnation": inc.revision})
        res = retry_etcd(
            "record the graceful leave",
            lambda: self.client.txn(
                [Compare.lease(self.keys.rank(inc.rank), "=", inc.lease.id)],
                [Op.put(self.keys.left_marker(self.me), marker),
                 Op.delete(self.keys.member(self.me)), Op.delete(self.keys.rank(inc.rank)),
                 *delete_stale_ops(self.keys, after_leave(self.me, inc.rank))],
            ),
            self.cfg.lease_ttl,
            inc.ended,
        )  # fmt: skip
        # (not succeeded: the lease was lost meanwhile, or a retried txn had applied already)
        retry_etcd("delete the left marker",
                   lambda: self.client.delete(self.keys.left_marker(self.me)),
                   self.cfg.lease_ttl, None)  # fmt: skip
        log.info("%s left gracefully", self.me)
        self.end(inc, "left" if res is not None else "left (etcd unreachable)")

    # --- the end of an incarnation ----------------------------------------------------------------
    def _lost(self, lease: Lease) -> None:
        inc = self.inc
        if inc is None or inc.lease.id != lease.id:
            return
        log.error("the lease of incarnation %d expired: the group has evicted it",
                  inc.revision)  # fmt: skip
        self.end(inc, "lease lost", revoke=False)

    def end_if_no_session(self, inc: Incarnation) -> None:
        if not inc.session_open:
            self.end(inc, "the worker never opened its Session after Hello")

    def on_stream_closed(self, inc: Incarnation) -> None:
        with self.cond:
            if inc.ended.is_set() or inc.closing or inc.state == Report.LEFT:
                return  # (a LEFT report is being applied by _leave)
            inc.closing = True
        if inc.state == Report.LEAVING and self._left_torch(inc):
            # The worker exited right after torch's graceful leave and its LEFT report was
            # lost with it. Torch drops a name from _ALL_WORKER_INFOS only at the very end of
            # a graceful leave, so this is a leave, not a crash: peers must see LEFT.
            log.info("%s closed its session after leaving torch's group: a graceful leave",
                     self.me)  # fmt: skip
            self._leave(inc)
            return
        log.warning("%s's session closed without a graceful leave: revoking its lease now",
                    self.me)  # fmt: skip
        self.end(inc, "worker gone")

    def _left_torch(self, inc: Incarnation) -> bool:
        try:
            kv = self.client.get(self.keys.store + tk.ALL_WORKER_INFOS_KEY)
            infos = tk.parse_worker_infos(kv.value.decode() if kv else "")
        except (EtcdError, ValueError):
            return False
        return (self.me, inc.rank) not in infos

    def drain(self, grace: float) -> None:
        """SIGTERM: no new incarnation; tell the worker to drain and wait for its leave."""
        self.stopping.set()
        inc = self.inc
        if inc is not None and inc.session_open and inc.state in (Report.JOINING, Report.JOINED):
            log.info("draining: asking %s to leave (grace %.0fs)", self.me, grace)
            self.send(inc, Event(kind=Event.DRAIN))
            if not inc.ended.wait(grace):
                log.warning("worker did not leave within %.0fs: revoking its lease", grace)
        if inc is not None:
            self.end(inc, "sidecar stopping")

    def end(self, inc: Incarnation, why: str, revoke: bool = True) -> None:
        with self.cond:
            if inc.ended.is_set():
                return
            inc.ended.set()
            if self.inc is inc:
                self.inc = None
            inc.events.put(None)
            self.metrics.worker_joined.set(0)
            self.metrics.rank.set(-1)
            self.cond.notify_all()
        inc.keepalive.stop()
        if revoke:
            try:
                self.client.lease_revoke(inc.lease.id)
            except EtcdError as e:
                log.warning("could not revoke lease of incarnation %d (%s): it expires in %ss",
                            inc.revision, e, self.cfg.lease_ttl)  # fmt: skip
        log.info("incarnation %d of %s ended: %s", inc.revision, self.me, why)


def _identity(cfg: SidecarConfig, rank: int, revision: int, plan: dv.DevicePlan) -> pb.Identity:
    """Hello's answer: who the worker is for this incarnation and how to reach etcd."""
    return pb.Identity(
        namespace=cfg.namespace, job_name=cfg.job_name, job_uid=cfg.job_uid, role=cfg.role,
        index=cfg.index, worker_name=cfg.worker_name, rank=rank, incarnation=revision,
        etcd_endpoints=list(cfg.etcd.endpoints), store_prefix=cfg.keys.store,
        etcd_ca=cfg.etcd.ca, etcd_cert=cfg.etcd.cert, etcd_key=cfg.etcd.key,
        etcd_user=cfg.etcd.user, etcd_password=cfg.etcd.password,
        rpc_timeout=cfg.rpc_timeout, num_worker_threads=cfg.rpc_threads,
        devices=list(plan.devices),
        device_maps={n: pb.DeviceMap(map=dict(m)) for n, m in plan.device_maps.items()},
        warnings=list(plan.warnings), pod_ip=cfg.pod_ip,
    )  # fmt: skip


def _member(m: MemberRecord, plan: dv.DevicePlan) -> pb.Member:
    """A peer as the worker sees it, with the reverse map it needs for that peer."""
    rev = plan.reverse_map(dv.Peer(m.name, m.node, m.clique, m.devices))
    return pb.Member(name=m.name, rank=m.rank, pod=m.pod, node=m.node, ip=m.ip,
                     devices=list(m.devices), incarnation=m.incarnation,
                     reverse_map=rev)  # fmt: skip
