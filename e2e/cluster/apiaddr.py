"""The API server's address: the ``kubernetes`` Service's ClusterIP, on the pod bridge.

Pods live in their own network namespaces behind the process kubelet's bridge (netns.py); their
default route is the bridge, so an address on the bridge is reachable from every pod and from
the host alike. The API server binds ``<first address of the service CIDR>:443`` there
(``10.96.0.1:443`` for the first cluster): in-cluster clients find it through
``KUBERNETES_SERVICE_HOST``/``PORT`` exactly as on a real cluster, with no kube-proxy.

Several clusters may run on one host (``pytest -n 2``): each claims a free **slot** (a lock file
held until ``release`` or the process's death) and with it its own service CIDR
(``10.<96+slot>.0.0/16``) and its own share of the pod network (``10.244.<32*slot>.0/19``: 32
nodes of /24), so neither addresses nor pod IPs collide.
"""

from __future__ import annotations

import fcntl
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .netns import BRIDGE, NetworkError, ip

API_PORT = 443
SLOTS = 8
LOCK_DIR = Path("/run/lock" if Path("/run/lock").is_dir() else "/tmp")
_held: dict[str, IO[str]] = {}


@dataclass(frozen=True)
class Slot:
    index: int

    @property
    def service_cidr(self) -> str:
        return f"10.{96 + self.index}.0.0/16"

    @property
    def api_address(self) -> str:
        """The `kubernetes` Service's ClusterIP (the service CIDR's first address)."""
        return f"10.{96 + self.index}.0.1"

    @property
    def cluster_cidr(self) -> str:
        return f"10.244.{32 * self.index}.0/19"


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
    """Take a free slot and put its API address (/32) on the pod bridge (created if missing).
    Needs root (CAP_NET_ADMIN)."""
    if os.geteuid() != 0:
        raise PermissionError(
            "the e2e cluster needs root: pods get their own network namespaces and the API "
            f"server an address on the pod bridge {BRIDGE}; run as root (CI does)"
        )
    deadline = deadline if deadline is not None else time.monotonic() + 60
    while True:
        for index in range(SLOTS):
            lock = _try_lock(index)
            if lock is not None:
                slot = Slot(index)
                _held[slot.api_address] = lock
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
        _add_address(slot.api_address)
    except BaseException:
        release(slot.api_address)
        raise
    return slot


def _add_address(address: str) -> None:
    r = ip("link", "add", BRIDGE, "type", "bridge", check=False)
    if r.returncode != 0 and "File exists" not in r.stderr:
        raise NetworkError(f"ip link add {BRIDGE} type bridge: {r.stderr.strip()}")
    ip("link", "set", BRIDGE, "up")
    r = ip("addr", "add", f"{address}/32", "dev", BRIDGE, check=False)
    if r.returncode != 0 and "File exists" not in r.stderr:
        raise NetworkError(f"ip addr add {address}/32 dev {BRIDGE}: {r.stderr.strip()}")


def release(address: str) -> None:
    """Remove ``address`` from the bridge, the bridge if nothing else uses it, and the lock."""
    ip("addr", "del", f"{address}/32", "dev", BRIDGE, check=False)
    addrs = ip("-4", "-o", "addr", "show", "dev", BRIDGE, check=False).stdout.strip()
    ports = ip("-o", "link", "show", "master", BRIDGE, check=False).stdout.strip()
    if not addrs and not ports:
        ip("link", "del", BRIDGE, check=False)
    lock = _held.pop(address, None)
    if lock is not None:
        lock.close()
