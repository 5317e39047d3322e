"""One network namespace per cluster ("router"): its pod bridge, kube-proxy and cluster DNS.

kube-proxy programs one nftables table (``ip kube-proxy``) and fixed iptables chain names in the
network namespace it runs in, so two clusters' kube-proxies in one namespace would overwrite
each other's rules. Each cluster (slot, apiaddr.py) therefore gets its own namespace
``rpj-router-<slot>`` that plays the part of the node's network stack:

* the pod bridge ``rpjbr0`` lives there (pods' veths are its ports, netns.py), with every node's
  gateway address; the router forwards (``ip_forward`` is set in that namespace only) and calls
  netfilter for bridged frames (``bridge-nf-call-iptables``, also per namespace), so conntrack
  sees a Service reply that goes from pod to pod over the bridge and undoes the DNAT;
* kube-proxy and CoreDNS run inside it (network.py); CoreDNS listens on the router's uplink
  address, the ``kube-dns`` Service's endpoint;
* a veth pair links it to the host: the host end ``rpjup<slot>`` carries the transit address and
  the API server's address (the ``kubernetes`` Service's ClusterIP), the host routes the slot's
  pod network and service CIDR through the router, and the router's default route is the host.

The host itself forwards nothing and no host-wide sysctl or firewall rule changes. Addresses:
``10.243.<slot>.0/30`` (transit), ``10.244.<32*slot>.0/19`` (pods), ``10.<96+slot>.0.0/16``
(Services). Stopping a cluster deletes its router, which deletes every veth inside it.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

from .netns import BRIDGE, NetworkError, ip

PREFIX = "rpj-router-"
UPLINK = "uplink"  # the router's end of the veth pair (the host's: rpjup<slot>)
SYSCTLS = {
    "net/ipv4/ip_forward": "1",
    "net/bridge/bridge-nf-call-iptables": "1",
    "net/bridge/bridge-nf-call-ip6tables": "1",
}


@dataclass(frozen=True)
class Router:
    """A slot's router namespace and the two ends of its uplink (the layout is above)."""

    netns: str
    host_veth: str  # the host's end of the uplink (the router's end is UPLINK)
    host_address: str  # on host_veth: the API server binds it (apiaddr.py)
    address: str  # the router's uplink address: where CoreDNS listens (the kube-dns endpoint)
    pod_network: str  # the slot's share of the pod network (routed from the host)
    service_cidr: str

    @classmethod
    def of(cls, slot: int, pod_network: str, service_cidr: str) -> Router:
        transit = f"10.243.{slot}"  # a /30: the host's end is .1, the router's .2
        return cls(
            f"{PREFIX}{slot}",
            f"rpjup{slot}",
            f"{transit}.1",
            f"{transit}.2",
            pod_network,
            service_cidr,
        )

    def exec_argv(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the router's network namespace (nsenter execs it: same pid)."""
        return ["nsenter", f"--net=/run/netns/{self.netns}", "--", *argv]


def setup_commands(r: Router) -> list[tuple[str, ...]]:
    """The ``ip`` commands that build a router, in order (pure, for the tests)."""
    n = r.netns
    return [
        ("netns", "add", n),
        ("link", "add", r.host_veth, "type", "veth", "peer", "name", UPLINK, "netns", n),
        ("addr", "add", f"{r.host_address}/30", "dev", r.host_veth),
        ("link", "set", r.host_veth, "up"),
        ("-n", n, "link", "set", "lo", "up"),
        ("-n", n, "addr", "add", f"{r.address}/30", "dev", UPLINK),
        ("-n", n, "link", "set", UPLINK, "up"),
        ("-n", n, "route", "add", "default", "via", r.host_address),
        ("-n", n, "link", "add", BRIDGE, "type", "bridge"),
        ("-n", n, "link", "set", BRIDGE, "up"),
        ("route", "add", r.pod_network, "via", r.address, "dev", r.host_veth),
        ("route", "add", r.service_cidr, "via", r.address, "dev", r.host_veth),
    ]


def create(r: Router) -> None:
    """Build the router (after removing a leftover of a cluster of this slot that died)."""
    delete(r)
    try:
        for cmd in setup_commands(r):
            ip(*cmd)
        for key, value in SYSCTLS.items():
            _sysctl(r, key, value)
    except BaseException:
        delete(r)
        raise


def delete(r: Router) -> None:
    """Deleting the namespace deletes the bridge and every veth in it (and their peers); the
    host's routes through the uplink go with the host end."""
    ip("link", "del", r.host_veth, check=False)
    ip("netns", "del", r.netns, check=False)


def _sysctl(r: Router, key: str, value: str) -> None:
    # /proc/sys/net shows the namespace of the process that opens it: write from inside.
    path = f"/proc/sys/{key}"
    proc = subprocess.run(
        r.exec_argv(["sh", "-c", f"echo {value} > {path}"]), capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise NetworkError(
            f"setting {key}={value} in network namespace {r.netns} failed: {proc.stderr.strip()} "
            "(bridge-nf-call-iptables needs the br_netfilter module: modprobe br_netfilter)"
        )
