"""The sidecar daemon: wires its three named parts around one :class:`GroupState` — the
incarnation manager (incarnation.py), the membership watcher (watcher.py) and the cleaner loop
(cleaner_loop.py); see docs/architecture.md#sidecar-parts. The gRPC servicer (server.py) and
main.py only call into this. The sidecar lease (process lifetime) carries the cleaner
election; each incarnation lease carries that incarnation's rank, member record and acks.
"""

from __future__ import annotations

import time

from rpcjob import devices as dv
from rpcjob.etcd import Client

from .cleaner_loop import CleanerLoop
from .config import SidecarConfig
from .http import Metrics
from .incarnation import IncarnationManager, Report
from .introspect import Introspection
from .watcher import GroupState, MembershipWatcher


class Sidecar:
    def __init__(
        self, cfg: SidecarConfig, client: Client, node: dv.NodeGPUs, metrics: Metrics
    ) -> None:
        self.me = cfg.worker_name
        self.group = GroupState(cfg.keys)
        self.cleaner = CleanerLoop(cfg, client, metrics, self.group)
        self.incarnations = IncarnationManager(
            cfg, client, node, metrics, self.group, lambda r: self.introspection.on_reply(r)
        )
        self.watcher = MembershipWatcher(
            client, metrics, self.group, self.incarnations, self.cleaner
        )
        self.introspection = Introspection(self.incarnations)
        metrics.routes.update(self.introspection.routes())

    # --- start / stop -------------------------------------------------------------------------
    def start(self) -> None:
        self.cleaner.grant_lease()
        self.incarnations.revoke_predecessors()
        self.watcher.start()
        self.cleaner.start()

    def drain(self, grace: float) -> None:
        """SIGTERM: drain the worker, then give up the sidecar lease. The cleaner loop runs
        until then: a peer may crash while this worker leaves."""
        self.incarnations.drain(grace)
        self.cleaner.stop()

    # --- probes -------------------------------------------------------------------------------
    def healthy(self) -> tuple[bool, str]:
        """Liveness. An unreachable etcd is not a reason to restart the sidecar: that cannot
        bring etcd back, and it would end a healthy worker whose lease etcd still keeps. It
        answers at once, without an etcd round trip (a probe has a 1 s timeout, and a busy
        machine must not turn a slow etcd call into a restart)."""
        if self.watcher.failed.is_set():
            return False, "the membership watch ended"
        inc = self.incarnations.inc
        keepers = [k for k in (self.cleaner.lease_keeper, inc.keepalive if inc else None) if k]
        since = min((k.unreachable_since for k in keepers if k.unreachable_since), default=None)
        if since is not None:
            return True, (f"ok; etcd unreachable for {time.monotonic() - since:.0f}s "
                          "(retrying; the worker stays joined)")  # fmt: skip
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        inc = self.incarnations.inc
        if inc is not None and inc.state == Report.JOINED:
            return True, f"{self.me} joined with rank {inc.rank}"
        return False, f"{self.me} has not joined"
