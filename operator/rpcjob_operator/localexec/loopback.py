"""Loopback addresses for local pods: each pod its own 127.x.y.z, as each pod has its own IP.

Several local clusters or ``rpcjob run`` jobs may share one machine, so a pool starts in a
random /24 of 127.0.0.0/8 and skips any address whose ports are already taken (the sidecar
binds its HTTP port on the pod IP). Addresses are never reused within a pool: old peers may
still dial them.
"""

from __future__ import annotations

import random
import socket
import threading
from collections.abc import Sequence

from rpcjob import contract


def _bindable(ip: str, ports: Sequence[int]) -> bool:
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((ip, port))
            except OSError:
                return False
    return True


class LoopbackPool:
    def __init__(
        self, ports: Sequence[int] = (contract.SIDECAR_HTTP_PORT,), seed: int | None = None
    ) -> None:
        rng = random.Random(seed)
        # 127.0.0.x is where everything else on the machine listens: stay out of it.
        self._base = (rng.randint(1, 254) << 16) | (rng.randint(0, 255) << 8)
        self._n = 1
        self._ports = tuple(ports)
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
                if _bindable(ip, self._ports):
                    return ip
