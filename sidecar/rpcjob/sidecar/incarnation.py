"""One worker incarnation: its lease and rank, the Session's reports (JOINED publishes the
member record, LEFT is a graceful leave, a closed stream is a crash) and its end."""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from rpcjob import contract as c
from rpcjob import devices as dv
from rpcjob import torchkeys as tk
from rpcjob.etcd import Client, Compare, EtcdError, Lease, Op
from rpcjob.records import MemberRecord

from ._pb import sidecar_pb2 as _pb2
from .cleanup import Identity, torch_key
from .config import SidecarConfig
from .http import Metrics
from .leases import FIRST_RETRY_S, LeaseKeeper
from .members import MembershipView

log = logging.getLogger("rpcjob.sidecar")
T = TypeVar("T")
# The generated modules build their classes at run time: mypy sees them as Any.
pb: Any = _pb2
Report: Any = pb.WorkerReport
Event: Any = pb.MembershipEvent


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
    state: int = 0  # WorkerReport.State; 0 = Hello answered
    events: queue.Queue[Any] = field(default_factory=queue.Queue)
    session_open: bool = False
    next_id: int = 1
    evict_ids: dict[int, Identity] = field(default_factory=dict)
    ended: threading.Event = field(default_factory=threading.Event)
    closing: bool = False  # the stream-closed handler ran


class IncarnationMixin:
    """Incarnation handling of :class:`rpcjob.sidecar.daemon.Sidecar` (state lives there)."""

    cfg: SidecarConfig
    client: Client
    keys: c.JobKeys
    me: str
    node: dv.NodeGPUs
    metrics: Metrics
    lock: threading.RLock
    cond: threading.Condition
    view: MembershipView
    evicts: set[Identity]
    inc: Incarnation | None

    def _ack(self, ident: Identity, inc: Incarnation | None = None) -> None:
        raise NotImplementedError

    def _identity(self, inc: Incarnation) -> Any:
        cfg, plan = self.cfg, inc.plan
        return pb.Identity(
            namespace=cfg.namespace, job_name=cfg.job_name, job_uid=cfg.job_uid, role=cfg.role,
            index=cfg.index, worker_name=self.me, rank=inc.rank, incarnation=inc.revision,
            etcd_endpoints=list(cfg.etcd.endpoints), store_prefix=self.keys.store,
            etcd_ca=cfg.etcd.ca, etcd_cert=cfg.etcd.cert, etcd_key=cfg.etcd.key,
            etcd_user=cfg.etcd.user, etcd_password=cfg.etcd.password,
            rpc_timeout=cfg.rpc_timeout, num_worker_threads=cfg.rpc_threads,
            devices=list(plan.devices),
            device_maps={n: pb.DeviceMap(map=dict(m)) for n, m in plan.device_maps.items()},
            warnings=list(plan.warnings), pod_ip=cfg.pod_ip,
        )  # fmt: skip

    def _member_pb(self, m: MemberRecord, inc: Incarnation) -> Any:
        rev = inc.plan.reverse_map(dv.Peer(m.name, m.node, m.clique, m.devices))
        return pb.Member(name=m.name, rank=m.rank, pod=m.pod, node=m.node, ip=m.ip,
                         devices=list(m.devices), incarnation=m.incarnation,
                         reverse_map=rev)  # fmt: skip

    def _send(self, inc: Incarnation, ev: Any) -> int:
        with self.lock:
            ev.id = inc.next_id
            inc.next_id += 1
            inc.events.put(ev)
            return int(ev.id)

    def open_session(self, inc: Incarnation) -> None:
        with self.lock:
            inc.session_open = True
            members = [self._member_pb(m, inc) for n, m in sorted(self.view.members.items())
                       if n != self.me]  # fmt: skip
            self._send(inc, Event(kind=Event.SNAPSHOT, members=members))

    def on_report(self, inc: Incarnation, r: Any) -> None:
        if inc.ended.is_set():
            return
        if r.state == Report.METRICS:
            for k, v in r.metrics.items():
                self.metrics.agent.labels(k).set(v)
            return
        if r.state == Report.EVICTED:
            with self.lock:
                ident = inc.evict_ids.pop(r.event_id, None)
            if ident is not None:
                self._ack(ident, inc)
            return
        with self.lock:
            inc.state = r.state
        if r.state == Report.JOINING:
            with self.lock:
                pending = [i for i in self.evicts]
            for ident in pending:
                self._ack(ident, inc)  # a joiner reads the cleaned _ALL_WORKER_INFOS
        elif r.state == Report.JOINED:
            self._publish_member(inc)
        elif r.state == Report.LEFT:
            self._leave(inc)
        elif r.state == Report.JOIN_FAILED:
            log.warning("%s failed to join: %s", self.me, r.detail)
            self.end_incarnation(inc, "join failed")

    def _publish_member(self, inc: Incarnation) -> None:
        rec = MemberRecord(self.me, inc.rank, self.cfg.pod_name, self.cfg.node_name,
                           self.cfg.pod_ip, tuple(inc.plan.devices), inc.revision,
                           clique=self.node.clique)  # fmt: skip
        res = self._retry(
            inc,
            "publish the member record",
            lambda: self.client.txn(
                [Compare.lease(self.keys.rank(inc.rank), "=", inc.lease.id)],
                [Op.put(self.keys.member(self.me), rec.encode(), lease=inc.lease.id)],
            ),
        )
        if res is None or not res.succeeded:
            self.end_incarnation(inc, "its rank record is gone (lease lost)")
            return
        self.metrics.worker_joined.set(1)
        log.info("%s joined with rank %d", self.me, inc.rank)

    def _leave(self, inc: Incarnation) -> None:
        """A graceful leave, in one txn: watchers see the left marker and the member record's
        deletion at the same revision (a LEFT, not a crash)."""
        names_key = torch_key(self.keys, tk.name_key(inc.rank))
        res = self._retry(
            inc,
            "record the graceful leave",
            lambda: self.client.txn(
                [Compare.lease(self.keys.rank(inc.rank), "=", inc.lease.id)],
                [
                    Op.put(self.keys.left_marker(self.me),
                           json.dumps({"incarnation": inc.revision})),
                    Op.delete(self.keys.member(self.me)),
                    Op.delete(self.keys.rank(inc.rank)),
                    # torch leaves these behind on a graceful leave (rpcjob.torchkeys)
                    Op.txn([Compare.value(names_key, "=", self.me)], [Op.delete(names_key)]),
                    Op.delete(torch_key(self.keys, tk.addr_key(self.me))),
                ],
            ),
        )  # fmt: skip
        # (not succeeded: the lease was lost meanwhile, or a retried txn had applied already)
        self._retry(
            None,
            "delete the left marker",
            lambda: self.client.delete(self.keys.left_marker(self.me)),
        )
        log.info("%s left gracefully", self.me)
        self.end_incarnation(inc, "left" if res is not None else "left (etcd unreachable)")

    def _retry(self, inc: Incarnation | None, what: str, call: Callable[[], T]) -> T | None:
        """Ride through an etcd outage: retry while the incarnation lives (its LeaseKeeper
        ends it only when etcd says the lease is gone); None once it ended. Without an
        incarnation, give up after one lease TTL."""
        deadline = time.monotonic() + self.cfg.lease_ttl
        delay = FIRST_RETRY_S
        while True:
            try:
                return call()
            except EtcdError as e:
                over = inc.ended.is_set() if inc is not None else time.monotonic() > deadline
                if over:
                    log.error("could not %s: %s", what, e)
                    return None
                log.warning("could not %s yet (%s): retrying", what, e)
                if inc is not None:
                    inc.ended.wait(delay)  # backoff between attempts, not synchronisation
                else:
                    time.sleep(delay)
                delay = min(delay * 2, max(self.cfg.lease_ttl / 3, FIRST_RETRY_S))

    def _incarnation_lost(self, lease: Lease) -> None:
        inc = self.inc
        if inc is None or inc.lease.id != lease.id:
            return
        log.error("the lease of incarnation %d expired: the group has evicted it",
                  inc.revision)  # fmt: skip
        self.end_incarnation(inc, "lease lost", revoke=False)

    def end_if_no_session(self, inc: Incarnation) -> None:
        if not inc.session_open:
            self.end_incarnation(inc, "the worker never opened its Session after Hello")

    def on_stream_closed(self, inc: Incarnation) -> None:
        with self.lock:
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
        self.end_incarnation(inc, "worker gone")

    def _left_torch(self, inc: Incarnation) -> bool:
        try:
            kv = self.client.get(torch_key(self.keys, tk.ALL_WORKER_INFOS_KEY))
            infos = tk.parse_worker_infos(kv.value.decode() if kv else "")
        except (EtcdError, ValueError):
            return False
        return (self.me, inc.rank) not in infos

    def end_incarnation(self, inc: Incarnation, why: str, revoke: bool = True) -> None:
        with self.lock:
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
