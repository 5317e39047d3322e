"""The cleaner loop: this sidecar's own lease, the cleaner election it carries, and the thread
that runs the cleanup executor (:class:`cleaner.Cleaner`) while this sidecar is elected.

The *sidecar lease* lives as long as the process (the incarnation leases come and go), so a
sidecar whose worker is between incarnations still cleans up after it
(docs/architecture.md#recovery)."""

from __future__ import annotations

import logging
import threading

from rpcjob.etcd import Client, Compare, EtcdError, Lease, Op

from .cleaner import Cleaner
from .cleanup import Identity
from .config import SidecarConfig
from .http import Metrics
from .leases import LeaseKeeper, retry_etcd
from .watcher import GroupState

log = logging.getLogger("rpcjob.sidecar")


class CleanerLoop:
    def __init__(
        self, cfg: SidecarConfig, client: Client, metrics: Metrics, group: GroupState
    ) -> None:
        self.cfg, self.client, self.metrics, self.group = cfg, client, metrics, group
        self.keys = group.keys
        self.lease: Lease | None = None
        self.lease_keeper: LeaseKeeper | None = None
        self._wake = threading.Event()
        self.closed = threading.Event()  # drained and the lease given up: the loop ends
        self.cleaner = Cleaner(
            client, self.keys, max(3.0 * cfg.lease_ttl, 10.0), on_evicted=self._on_evicted
        )

    # --- the sidecar lease ----------------------------------------------------------------------
    def grant_lease(self) -> None:
        self.lease = self.client.lease_grant(self.cfg.lease_ttl)
        self.lease_keeper = LeaseKeeper(self.client, self.lease, self._lease_gone, "sidecar")

    def _lease_gone(self) -> None:
        # Only when etcd said the lease is gone (LeaseKeeper rides through outages): a new
        # one carries the cleaner election from now on.
        log.warning("the sidecar lease %x expired: granting a new one",
                    self.lease.id if self.lease else 0)  # fmt: skip
        retry_etcd("grant a new sidecar lease", self.grant_lease, self.cfg.lease_ttl, self.closed)

    def stop(self) -> None:
        """After the drain: end the loop and give up the lease (and with it the election)."""
        self.closed.set()
        if self.lease_keeper is not None:
            self.lease_keeper.stop()
        if self.lease is not None:
            try:
                self.client.lease_revoke(self.lease.id)
            except EtcdError as e:
                log.warning("could not revoke the sidecar lease (it expires in %ss): %s",
                            self.cfg.lease_ttl, e)  # fmt: skip

    # --- the election and the loop ----------------------------------------------------------------
    def is_leader(self) -> bool:
        return self.lease is not None and self.group.election_holder == self.lease.id

    def election_changed(self) -> None:
        self.metrics.leader.set(self.is_leader())

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        threading.Thread(target=self._run, daemon=True, name="rpcjob-cleaner").start()

    def _run(self) -> None:
        # Runs through a drain too: a peer may crash while this worker leaves.
        while not self.closed.is_set():
            # Watch events wake the loop; the timeout re-plans for ack deadlines (often while
            # an eviction is pending, rarely otherwise).
            self._wake.wait(0.5 if self.group.evicts else 5.0)
            self._wake.clear()
            try:
                self._campaign()
                for _ in range(50):
                    if not self.is_leader() or not self.cleaner.step():
                        break
            except EtcdError as e:
                log.warning("cleaner step failed (retrying): %s", e)

    def _campaign(self) -> None:
        lease = self.lease
        if self.group.election_holder is None and lease is not None:
            self.client.txn(
                [Compare.version(self.keys.election, "=", 0)],
                [Op.put(self.keys.election, str(lease.id), lease=lease.id)],
            )
        self.cleaner.leader_value = str(lease.id) if lease else ""

    def _on_evicted(self, ident: Identity, latency: float, expired: bool) -> None:
        self.metrics.evictions.inc()
        self.metrics.eviction_latency.observe(latency)
        if expired:
            self.metrics.evictions_unacked.inc()
