"""Services, cluster DNS and storage of the e2e cluster: kube-proxy and CoreDNS in the
cluster's router namespace (router.py), the ``kube-dns`` Service, and a default StorageClass.

* **kube-proxy** (the pinned build, nftables mode) watches Services and EndpointSlices and
  programs the router, through which every pod's packets pass: a pod reaches a ClusterIP,
  including a Service whose endpoint is the pod itself (kube-proxy masquerades hairpin
  traffic). One kube-proxy serves all nodes: they share the router, as pods on one node share
  the node's network stack.
* **CoreDNS** (e2e/cluster/build.py builds the pinned release) serves ``cluster.local`` with its
  kubernetes plugin on the router's uplink address; the ``kube-dns`` Service (ClusterIP
  ``<service CIDR>.0.10``, no selector) has an EndpointSlice naming that address, so pods
  resolve through the ClusterIP as on a real cluster. The kubelets write every pod's
  resolv.conf with that nameserver (--cluster-dns). Names outside the cluster domain are
  refused at once (nothing upstream is reachable here).
* **StorageClass** ``standard`` (the default) with kube-controller-manager's built-in
  ``kubernetes.io/host-path`` provisioner (``--enable-hostpath-provisioner``): a claim gets a
  fresh directory under /tmp/hostpath_pv, which the process kubelet mounts into the pod.
"""

from __future__ import annotations

import json
import socket
import ssl
import struct
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from . import build
from .controlplane import ControlPlane, ControlPlaneError, wait_for_procs
from .procs import Proc

DOMAIN = "cluster.local"
DNS_PORT = 53
COREDNS_USER = "system:coredns"
HOSTPATH_ROOT = "/tmp/hostpath_pv"  # kube-controller-manager's host-path provisioner's root
FIELD_MANAGER = "rpcjob-e2e-cluster"


def corefile(listen: str, kubeconfig: Path) -> str:
    """CoreDNS's configuration (pure)."""
    return (
        f".:{DNS_PORT} {{\n"
        f"    bind {listen}\n"
        "    errors\n"
        f"    kubernetes {DOMAIN} in-addr.arpa ip6.arpa {{\n"
        f"        kubeconfig {kubeconfig}\n"
        "        pods insecure\n"
        "        fallthrough in-addr.arpa ip6.arpa\n"
        # Tests create and delete Services quickly: keep answers fresh.
        "        ttl 5\n"
        "    }\n"
        "}\n"
    )


def objects(dns_ip: str, dns_endpoint: str) -> list[tuple[str, dict[str, Any]]]:
    """What the API must hold for DNS and storage: (collection path, object) pairs (pure)."""
    rbac = "/apis/rbac.authorization.k8s.io/v1"
    labels = {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"}
    dns_ports = [("dns", "UDP"), ("dns-tcp", "TCP")]
    return [
        (f"{rbac}/clusterroles", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "system:coredns"},
            "rules": [
                {"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"],
                 "verbs": ["list", "watch"]},
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                 "verbs": ["list", "watch"]},
            ],
        }),
        (f"{rbac}/clusterrolebindings", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "system:coredns"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": "system:coredns"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                          "name": COREDNS_USER}],
        }),
        ("/api/v1/namespaces/kube-system/services", {
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": labels},
            "spec": {"clusterIP": dns_ip, "ports": [
                {"name": n, "port": DNS_PORT, "protocol": p} for n, p in dns_ports]},
        }),
        ("/apis/discovery.k8s.io/v1/namespaces/kube-system/endpointslices", {
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "kube-dns-coredns", "namespace": "kube-system", "labels": {
                "kubernetes.io/service-name": "kube-dns",
                "endpointslice.kubernetes.io/managed-by": FIELD_MANAGER}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [dns_endpoint], "conditions": {"ready": True}}],
            "ports": [{"name": n, "port": DNS_PORT, "protocol": p} for n, p in dns_ports],
        }),
        ("/apis/storage.k8s.io/v1/storageclasses", {
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": "standard", "annotations": {
                "storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": "kubernetes.io/host-path",
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "Immediate",
        }),
    ]  # fmt: skip


def kube_proxy_args(kubeconfig: Path, cluster_cidr: str) -> list[str]:
    return [
        f"--kubeconfig={kubeconfig}",
        "--proxy-mode=nftables",
        f"--cluster-cidr={cluster_cidr}",
        # Every node shares the router; kube-proxy needs one Node's name for its topology.
        "--hostname-override=node-0",
        # NodePorts only on the Node's own (loopback) address, not every address of the router.
        "--nodeport-addresses=primary",
        # nf_conntrack_max is host-wide (not writable from a namespace): leave the sysctls be.
        "--conntrack-max-per-core=0",
        "--conntrack-tcp-timeout-established=0",
        "--conntrack-tcp-timeout-close-wait=0",
        # Both are inside the router's namespace: no port is taken on the host.
        "--metrics-bind-address=127.0.0.1:10249",
        "--healthz-bind-address=127.0.0.1:10256",
    ]


class ClusterNetwork:
    def __init__(self, control: ControlPlane) -> None:
        assert control.slot is not None, "start the control plane first"
        self.control = control
        self.slot = control.slot
        self.procs: dict[str, Proc] = {}

    @property
    def dns_address(self) -> str:
        return self.slot.dns_address

    def start(self) -> ClusterNetwork:
        """Create the API objects and start kube-proxy and CoreDNS (``wait_ready`` waits)."""
        try:
            for path, obj in objects(self.dns_address, self.slot.router.address):
                self._create(path, obj)
            self._spawn("kube-proxy", kube_proxy_args(
                self.control.kubeconfig_for("kube-proxy", "system:kube-proxy", []),
                self.slot.cluster_cidr))  # fmt: skip
            conf = self.control.work_dir / "Corefile"
            conf.write_text(corefile(self.slot.router.address, self.control.kubeconfig_for(
                "coredns", COREDNS_USER, [])))  # fmt: skip
            self._spawn("coredns", [f"-conf={conf}"])
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, deadline: float) -> None:
        """Until the kube-dns ClusterIP answers for the ``kubernetes`` Service: that proves
        kube-proxy's rules and CoreDNS's API watch alike. kube-proxy waits (up to 30 s) for
        its Node before it programs anything: call this once the nodes are registered."""
        name = f"kubernetes.default.svc.{DOMAIN}"
        want = [self.slot.service_ip]
        what = f"{name} through the kube-dns ClusterIP {self.dns_address}"
        self._wait(lambda: resolve_a(self.dns_address, name) == want, deadline, what)

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            proc.stop()
        self.procs.clear()

    def _spawn(self, name: str, args: list[str]) -> None:
        log = self.control.work_dir / "logs" / f"{name}.log"
        argv = self.slot.router.exec_argv([str(build.binary(name)), *args])
        self.procs[name] = Proc.spawn(name, argv, log)

    def _create(self, path: str, obj: dict[str, Any]) -> None:
        req = urllib.request.Request(
            self.control.server + path + f"?fieldManager={FIELD_MANAGER}",
            data=json.dumps(obj).encode(), method="POST",
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(req, context=self._ssl(), timeout=10):
                pass
        except urllib.error.HTTPError as exc:
            if exc.code != 409:  # already there (a restarted cluster keeps its etcd data)
                raise ControlPlaneError(f"POST {path}: {exc.code} {exc.read()[:500]!r}") from exc

    def _ssl(self) -> ssl.SSLContext:
        return self.control._ssl()

    def _wait(self, ready: Any, deadline: float, what: str) -> None:
        wait_for_procs(self.procs, ready, deadline, what)


def resolve_a(server: str, name: str, timeout: float = 1.0) -> list[str] | None:
    """The A records ``server`` answers for ``name`` (one UDP query), None on no answer."""
    qid = int(time.monotonic() * 1000) & 0xFFFF
    query = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    query += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    query += struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(query, (server, DNS_PORT))
            data = s.recv(4096)
        except OSError:
            return None
    return _answers(data, qid)


def _answers(data: bytes, qid: int) -> list[str] | None:
    rid, flags, qd, an = struct.unpack(">HHHH", data[:8])
    if rid != qid or flags & 0x000F:  # another reply, or an error rcode
        return None
    pos = 12
    for _ in range(qd):
        pos = _skip_name(data, pos) + 4
    out = []
    for _ in range(an):
        pos = _skip_name(data, pos)
        rtype, _cls, _ttl, rdlen = struct.unpack(">HHIH", data[pos : pos + 10])
        pos += 10
        if rtype == 1 and rdlen == 4:
            out.append(socket.inet_ntoa(data[pos : pos + 4]))
        pos += rdlen
    return out


def _skip_name(data: bytes, pos: int) -> int:
    while True:
        n = data[pos]
        if n == 0:
            return pos + 1
        if n & 0xC0 == 0xC0:  # a compression pointer ends the name
            return pos + 2
        pos += n + 1
