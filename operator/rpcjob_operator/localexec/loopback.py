"""Loopback addresses for local pods: each pod its own 127.x.y.z, as each pod has its own IP.

Several local clusters or ``rpcjob run`` jobs may share one machine, so a pool starts in a
random /24 of 127.0.0.0/8 and skips any address whose sidecar port is taken (as the sidecar
would bind it: ports.bindable). Addresses are never reused within a pool: old peers may
still dial them.
"""

from __future__ import annotations

import random
import threading

from rpcjob import contract
from rpcjob_operator.localexec.ports import bindable


class LoopbackPool:
    def __init__(self, seed: int | None = None) -> None:
        rng = random.Random(seed)
        # 127.0.0.x is where everything else on the machine listens: stay out of it.
        self._base = (rng.randint(1, 254) << 16) | (rng.randint(0, 255) << 8)
        self._n = 1
        self._lock = threading.Lock()

    def _addr(self, n: int) -> str:
        v = self._base + n
        return f"127.{(v >> 16) & 255}.{(v >> 8) & 255}.{v & 255}"

    def take(self) -> str:
        with self._lock:
            while True:
                self._n += 1
                if self._n & 255 in (0, 255):
                    continue
                if self._n > 1 << 16:
                    raise RuntimeError("no free loopback address left for local pods")
                ip = self._addr(self._n)
                if bindable(ip, contract.SIDECAR_HTTP_PORT):
                    return ip
