"""Where each e2e cluster lives on the host: its slot, addresses and router namespace.

Each cluster claims a free **slot** (a lock file held until ``release`` or the process's
death) and with it its own service CIDR (``10.<96+slot>.0.0/16``), its own share of the pod
network (``10.244.<32*slot>.0/19``: 32 nodes of /24) and its own router namespace
(router.py: pod bridge, kube-proxy, cluster DNS), so several clusters share one host
(``pytest -n 2``, or other test runs) without colliding in addresses or in netfilter rules.

The API server binds ``api_address:443``: the host end of the router's uplink
(``10.243.<slot>.1``), which the host's kubectl, controllers and kubelets reach as a local
address and pods reach through their router. Pods use the ``kubernetes`` Service's ClusterIP
(``service_ip``, ``10.<96+slot>.0.1``) as on a real cluster (``KUBERNETES_SERVICE_HOST``);
kube-proxy DNATs it to the API server's address. (The API server may not bind the ClusterIP
itself: kube-proxy rejects forwarded traffic whose destination, after DNAT, is still a
ClusterIP.) Other host services the pods must reach (a test's etcd) bind ``api_address`` too.
"""

from __future__ import annotations

import fcntl
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from . import router as _router

API_PORT = 443
SLOTS = 8
LOCK_DIR = Path("/run/lock" if Path("/run/lock").is_dir() else "/tmp")
_held: dict[str, tuple[IO[str], Slot]] = {}


@dataclass(frozen=True)
class Slot:
    """One cluster's share of the host's addresses (the layout is above)."""

    index: int
    service_cidr: str
    service_ip: str  # the ``kubernetes`` Service's ClusterIP: the service CIDR's first address
    dns_address: str  # the ``kube-dns`` Service's ClusterIP: the tenth, as kubeadm picks
    cluster_cidr: str  # the slot's share of the pod network
    router: _router.Router

    @classmethod
    def of(cls, index: int) -> Slot:
        services, pods = f"10.{96 + index}.0", f"10.244.{32 * index}.0/19"
        cidr = f"{services}.0/16"
        router = _router.Router.of(index, pods, cidr)
        return cls(index, cidr, f"{services}.1", f"{services}.10", pods, router)

    @property
    def api_address(self) -> str:
        """The host's address on the router uplink: the API server binds it; pods reach it."""
        return self.router.host_address


class ClusterBusy(RuntimeError):
    """Every slot is taken by another e2e cluster."""


def _try_lock(index: int) -> IO[str] | None:
    f = open(LOCK_DIR / f"rpcjob-e2e-cluster-{index}.lock", "a+")  # noqa: SIM115 (held)
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f


def claim(deadline: float | None = None) -> Slot:
    """Take a free slot and build its router (the uplink's host end carries the API address).
    Needs root (CAP_NET_ADMIN)."""
    if os.geteuid() != 0:
        raise PermissionError(
            "the e2e cluster needs root: pods get their own network namespaces and the cluster "
            "a router namespace with kube-proxy; run as root (CI does)"
        )
    deadline = deadline if deadline is not None else time.monotonic() + 60
    while True:
        for index in range(SLOTS):
            lock = _try_lock(index)
            if lock is not None:
                slot = Slot.of(index)
                _held[slot.api_address] = (lock, slot)
                break
        else:
            if time.monotonic() > deadline:
                raise ClusterBusy(
                    f"all {SLOTS} e2e cluster slots of this host are taken (lock files "
                    f"{LOCK_DIR}/rpcjob-e2e-cluster-*.lock name their pids); stop a cluster "
                    "('python -m e2e.cluster down --kubeconfig FILE' or Ctrl-C) and retry"
                )
            time.sleep(0.5)
            continue
        break
    try:
        # The slot's lock is ours: a router of this slot left behind is a dead cluster's.
        _router.create(slot.router)
    except BaseException:
        release(slot.api_address)
        raise
    return slot


def release(address: str) -> None:
    """Delete the slot's router (its bridge, veths and the API address go with it), then
    give the slot back."""
    held = _held.pop(address, None)
    if held is not None:
        lock, slot = held
        _router.delete(slot.router)
        lock.close()
