"""Pod networking of the process kubelet: one network namespace per pod, all on one bridge.

Every node of the test cluster lives on this host, so all pods share one Linux bridge
(``BRIDGE``) instead of one bridge per node plus routes: a pod's eth0 (one end of a veth pair)
gets its IP from its node's podCIDR with the prefix of the whole pod network (``POD_NETWORK``),
so every other pod, on any node, is on-link and no packet is forwarded by the host (no
``ip_forward`` sysctl, no iptables). Each node puts its gateway (the first address of its
podCIDR, with the podCIDR's prefix) on the bridge; a pod's default route points there, so the
pod reaches the host's own non-loopback addresses (the API server) the way a pod reaches its
node.

Only addresses inside 10.244.0.0/16, only on the bridge and veths we create. The bridge is
shared by the kubelets of one host: each removes its gateway address on stop, and the last one
(no addresses, no ports left) deletes the bridge.

With ``router`` (the e2e cluster always passes one) the bridge and the host ends of the veths
live in that cluster's router namespace instead of the host's (router.py): the router forwards
and runs kube-proxy, so Services work and clusters of one host do not share netfilter rules.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import subprocess
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from rpcjob_operator.localexec.lifeline import alive

POD_NETWORK = ipaddress.IPv4Network("10.244.0.0/16")
BRIDGE = "rpjbr0"
# Which kubelet process made which pod network (next to the cluster slot locks, apiaddr.py).
REGISTRY = Path("/run/lock" if os.path.isdir("/run/lock") else "/tmp") / "rpcjob-netns.json"
_bridge_lock = threading.Lock()


class NetworkError(RuntimeError):
    """An ``ip`` command failed; the message carries the command and its stderr."""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and r.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)}: {r.stderr.strip() or r.returncode}")
    return r


class IpPool:
    """Pod IPs of one node's podCIDR. The first host address is the node's gateway. Released
    addresses go back at the end of the queue, so a pod's address is not handed to the next
    pod at once (peers of the old pod may still dial it)."""

    def __init__(self, pod_cidr: str) -> None:
        net = ipaddress.IPv4Network(pod_cidr, strict=True)
        if not net.subnet_of(POD_NETWORK):
            raise ValueError(
                f"pod_cidr {pod_cidr!r} is outside the pod network {POD_NETWORK}; start the "
                f"controller manager with --cluster-cidr={POD_NETWORK} or pass a podCIDR inside it"
            )
        hosts = list(net.hosts())
        if len(hosts) < 2:
            raise ValueError(f"pod_cidr {pod_cidr!r} has no room for a gateway and a pod")
        self.network = net
        self.gateway = str(hosts[0])
        self._free = [str(h) for h in hosts[1:]]
        self._used: set[str] = set()
        self._lock = threading.Lock()

    def take(self) -> str:
        with self._lock:
            if not self._free:
                raise NetworkError(f"no free pod IP left in {self.network}")
            addr = self._free.pop(0)
            self._used.add(addr)
            return addr

    def release(self, addr: str) -> None:
        with self._lock:
            if addr in self._used:
                self._used.discard(addr)
                self._free.append(addr)

    @property
    def in_use(self) -> int:
        return len(self._used)


def short_name(prefix: str, key: str, length: int = 15) -> str:
    """A stable interface/namespace name of at most ``length`` characters (IFNAMSIZ - 1)."""
    digest = hashlib.sha256(key.encode()).hexdigest()
    return (prefix + digest)[:length]


def _in(router: str | None, *args: str) -> tuple[str, ...]:
    """``ip`` arguments run in ``router``'s namespace (None: the host's)."""
    return ("-n", router, *args) if router else args


def ensure_bridge(gateway: str, prefixlen: int, router: str | None = None) -> None:
    """Create the shared bridge if needed and add this node's gateway address to it, with the
    podCIDR's prefix: each node's gateway is then the primary address of its own subnet (a
    second address of one subnet would be a secondary, deleted along with the primary)."""
    with _bridge_lock:
        r = ip(*_in(router, "link", "add", BRIDGE, "type", "bridge"), check=False)
        if r.returncode != 0 and "File exists" not in r.stderr:
            raise NetworkError(f"ip link add {BRIDGE} type bridge: {r.stderr.strip()}")
        ip(*_in(router, "link", "set", BRIDGE, "up"))
        r = ip(*_in(router, "addr", "add", f"{gateway}/{prefixlen}", "dev", BRIDGE), check=False)
        if r.returncode != 0 and "File exists" not in r.stderr:
            raise NetworkError(f"ip addr add {gateway} dev {BRIDGE}: {r.stderr.strip()}")


def release_bridge(gateway: str, prefixlen: int, router: str | None = None) -> None:
    """Remove this node's gateway; delete the host's bridge once nobody uses it (a router's
    goes with the router)."""
    with _bridge_lock:
        ip(*_in(router, "addr", "del", f"{gateway}/{prefixlen}", "dev", BRIDGE), check=False)
        if router:
            return
        addrs = ip("-4", "-o", "addr", "show", "dev", BRIDGE, check=False).stdout.strip()
        ports = ip("-o", "link", "show", "master", BRIDGE, check=False).stdout.strip()
        if not addrs and not ports:
            ip("link", "del", BRIDGE, check=False)


@dataclass
class PodNet:
    """One pod's network namespace and the host end of its veth pair."""

    netns: str
    host_veth: str
    ip: str
    router: str | None = None  # the namespace of the bridge and host_veth (None: the host)

    @property
    def path(self) -> str:
        return f"/run/netns/{self.netns}"


def pod_netns_commands(net: PodNet, gateway: str) -> Sequence[Sequence[str]]:
    """The ``ip`` commands that build a pod's network, in order (pure, for the tests)."""
    prefix = POD_NETWORK.prefixlen
    r = net.router
    return [
        ("netns", "add", net.netns),
        _in(
            r,
            "link",
            "add",
            net.host_veth,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            net.netns,
        ),
        _in(r, "link", "set", net.host_veth, "master", BRIDGE, "up"),
        # Hairpin (the kubelet's --hairpin-mode=hairpin-veth): a pod dialling a Service whose
        # endpoint is itself gets its packet back through the port it came in on (bridged
        # frames pass netfilter, so the DNATed packet is bridged, not routed).
        _in(r, "link", "set", net.host_veth, "type", "bridge_slave", "hairpin", "on"),
        ("-n", net.netns, "link", "set", "lo", "up"),
        ("-n", net.netns, "addr", "add", f"{net.ip}/{prefix}", "dev", "eth0"),
        ("-n", net.netns, "link", "set", "eth0", "up"),
        ("-n", net.netns, "route", "add", "default", "via", gateway, "dev", "eth0"),
    ]


def create_pod_net(
    uid: str, pod_ip: str, gateway: str, registry: Path = REGISTRY, router: str | None = None
) -> PodNet:
    net = PodNet(short_name("rpj-", uid, 14), short_name("rpv", uid), pod_ip, router)
    delete_pod_net(net, registry)  # a leftover of a kubelet that died with this pod (same uid)
    with _registry(registry) as table:
        table[net.netns] = [str(os.getpid()), net.host_veth, net.ip, router or ""]
    try:
        for cmd in pod_netns_commands(net, gateway):
            ip(*cmd)
    except NetworkError:
        delete_pod_net(net, registry)
        raise
    return net


def delete_pod_net(net: PodNet, registry: Path = REGISTRY) -> None:
    """Deleting the host end of the veth deletes its peer; the netns goes with its last user."""
    ip(*_in(net.router, "link", "del", net.host_veth), check=False)
    with contextlib.suppress(OSError):
        ip("netns", "del", net.netns, check=False)
    with _registry(registry) as table:
        table.pop(net.netns, None)


def reap_orphans(registry: Path = REGISTRY) -> list[str]:
    """Delete the pod networks whose kubelet process died without stopping (SIGKILL, a killed
    test run): its pods died with it (pdeathsig), their namespaces and veths did not."""
    with _registry(registry) as table:
        dead = {n: v for n, v in table.items() if not alive(int(v[0]))}
    for name, (_pid, veth, addr, *router) in dead.items():
        delete_pod_net(PodNet(name, veth, addr, (router or [""])[0] or None), registry)
    return sorted(dead)


@contextlib.contextmanager
def _registry(path: Path) -> Iterator[dict[str, list[str]]]:
    """The pod networks of this host's kubelets (name -> [kubelet pid, veth, IP, router]),
    under a lock."""
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            table: dict[str, list[str]] = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            table = {}
        yield table
        if not table:
            path.unlink(missing_ok=True)
            return
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(table, sort_keys=True))
        tmp.replace(path)
