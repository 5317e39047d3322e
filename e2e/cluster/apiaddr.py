"""The API server's address: the ``kubernetes`` Service's ClusterIP, on the pod bridge.

Pods live in their own network namespaces behind the process kubelet's bridge (netns.py); their
default route is the bridge, so an address on the bridge is reachable from every pod and from
the host alike. The API server binds ``10.96.0.1:443`` there: in-cluster clients find it
through ``KUBERNETES_SERVICE_HOST``/``PORT`` exactly as on a real cluster, with no kube-proxy.

The pod network and this address are host-wide, so one e2e cluster runs per host at a time:
``claim`` takes a lock file held until ``release`` (or the process's death).
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import IO

from .netns import BRIDGE, NetworkError, ip

API_ADDRESS = "10.96.0.1"
API_PORT = 443
LOCK = Path("/run/lock" if Path("/run/lock").is_dir() else "/tmp") / "rpcjob-e2e-cluster.lock"
_held: dict[str, IO[str]] = {}


class ClusterBusy(RuntimeError):
    """Another e2e cluster holds the host's pod network."""


def _lock(deadline: float) -> IO[str]:
    f = open(LOCK, "a+")  # noqa: SIM115 (held open until release)
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                f.seek(0)
                holder = f.read().strip() or "?"
                f.close()
                raise ClusterBusy(
                    f"another e2e cluster runs on this host (pid {holder}, lock {LOCK}); stop it "
                    "('python -m e2e.cluster down --kubeconfig FILE' or Ctrl-C) and retry"
                ) from None
            time.sleep(0.5)
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f


def claim(address: str = API_ADDRESS, deadline: float | None = None) -> None:
    """Take the host's cluster lock and put ``address``/32 on the pod bridge (created if
    missing). Needs root (CAP_NET_ADMIN)."""
    if os.geteuid() != 0:
        raise PermissionError(
            "the e2e cluster needs root: pods get their own network namespaces and the API "
            f"server an address ({address}) on the pod bridge {BRIDGE}; run as root (CI does)"
        )
    _held[address] = _lock(deadline if deadline is not None else time.monotonic() + 60)
    try:
        r = ip("link", "add", BRIDGE, "type", "bridge", check=False)
        if r.returncode != 0 and "File exists" not in r.stderr:
            raise NetworkError(f"ip link add {BRIDGE} type bridge: {r.stderr.strip()}")
        ip("link", "set", BRIDGE, "up")
        r = ip("addr", "add", f"{address}/32", "dev", BRIDGE, check=False)
        if r.returncode != 0 and "File exists" not in r.stderr:
            raise NetworkError(f"ip addr add {address}/32 dev {BRIDGE}: {r.stderr.strip()}")
    except BaseException:
        release(address)
        raise


def release(address: str = API_ADDRESS) -> None:
    """Remove ``address`` from the bridge, the bridge if nothing else uses it, and the lock."""
    ip("addr", "del", f"{address}/32", "dev", BRIDGE, check=False)
    addrs = ip("-4", "-o", "addr", "show", "dev", BRIDGE, check=False).stdout.strip()
    ports = ip("-o", "link", "show", "master", BRIDGE, check=False).stdout.strip()
    if not addrs and not ports:
        ip("link", "del", BRIDGE, check=False)
    lock = _held.pop(address, None)
    if lock is not None:
        lock.close()
