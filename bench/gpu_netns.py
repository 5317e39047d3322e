"""Pods as a Kubernetes node isolates them, for bench/gpu_bench.py: one network namespace per pod.

Each pod gets its own network namespace with an ``eth0`` (one end of a veth pair whose other end
sits on a bridge in the caller's namespace) and its own address in a private /24 that exists only
inside the namespaces this module makes. The caller's namespace holds the bridge address (``.1``),
where the benchmark's etcd or TCPStore listens, as a node's host network does for a pod.

TensorPipe sees pods as a cluster does: its shm transport includes the network namespace in its
domain descriptor, so it is never used between two pods, and TCP goes over the veth pairs. CUDA
channels depend on the GPUs the processes can open, not on the network namespace.

Processes are started with :meth:`NetnsPods.prefix` (``nsenter --net=...``). TensorPipe picks
its listening address from ``TP_SOCKET_IFNAME`` (``eth0`` here); in a real pod the hostname
resolves to the pod IP through the kubelet's /etc/hosts, which nsenter does not give.
Needs root, nsenter and pyroute2.
"""

from __future__ import annotations

import os
import shutil
from types import TracebackType
from typing import Any


class NetnsPods:
    """``n`` network namespaces on one bridge; :meth:`close` removes every one of them.

    Built with pyroute2 (netlink from Python) and entered with ``nsenter``: the GPU machines
    have no iproute2.
    """

    def __init__(self, n: int, subnet: str = "10.231.7") -> None:
        self.n, self.subnet = n, subnet
        tag = os.getpid() % 100000
        self.bridge = f"rjgb{tag}"
        self.names = [f"rjgpod{tag}-{i}" for i in range(n)]
        self._netns: list[str] = []
        self._bridge = False

    @staticmethod
    def available() -> str:
        """Why namespaces cannot be made here ("" when they can)."""
        if os.geteuid() != 0:
            return "needs root"
        if shutil.which("nsenter") is None:
            return "needs nsenter (util-linux)"
        try:
            import pyroute2  # noqa: F401
        except ImportError:
            return "needs pyroute2 (pip install 'rpcjob[dev]')"
        return ""

    @property
    def host_ip(self) -> str:
        return f"{self.subnet}.1"

    def ip(self, i: int) -> str:
        return f"{self.subnet}.{10 + i}"

    def prefix(self, i: int) -> list[str]:
        return ["nsenter", f"--net=/var/run/netns/{self.names[i]}"]

    def __enter__(self) -> NetnsPods:
        from pyroute2 import IPRoute, NetNS, netns

        try:
            with IPRoute() as ipr:
                ipr.link("add", ifname=self.bridge, kind="bridge")
                self._bridge = True
                br = ipr.link_lookup(ifname=self.bridge)[0]
                ipr.addr("add", index=br, address=self.host_ip, prefixlen=24)
                ipr.link("set", index=br, state="up")
                for i, name in enumerate(self.names):
                    netns.create(name)
                    self._netns.append(name)
                    host_end = f"rjgv{os.getpid() % 10000}-{i}"
                    peer = {"ifname": "eth0", "net_ns_fd": name}
                    ipr.link("add", ifname=host_end, kind="veth", peer=peer)
                    ipr.link("set", index=ipr.link_lookup(ifname=host_end)[0], master=br)
                    ipr.link("set", index=ipr.link_lookup(ifname=host_end)[0], state="up")
                    with NetNS(name) as ns:
                        _pod_side(ns, self.ip(i), self.host_ip)
        except Exception as e:
            self.close()
            raise RuntimeError(f"could not build pod network namespaces: {e}") from e
        return self

    def close(self) -> None:
        from pyroute2 import IPRoute, netns

        # Removing a namespace removes its veth end, and with it the peer on the bridge.
        for name in reversed(self._netns):
            netns.remove(name)
        self._netns.clear()
        if self._bridge:
            with IPRoute() as ipr:
                for idx in ipr.link_lookup(ifname=self.bridge):
                    ipr.link("del", index=idx)
            self._bridge = False

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _pod_side(ns: Any, ip: str, gateway: str) -> None:
    eth0 = ns.link_lookup(ifname="eth0")[0]
    ns.addr("add", index=eth0, address=ip, prefixlen=24)
    ns.link("set", index=eth0, state="up")
    ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
    ns.route("add", dst="default", gateway=gateway)
