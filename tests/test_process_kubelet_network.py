"""The e2e cluster's network, its pure parts: the per-cluster router namespace (router.py), pod
veths placed in it (netns.py), CoreDNS's configuration, the kube-dns/StorageClass objects and
the DNS answer reader (network.py). Run for real: e2e/tests/test_cluster_network.py."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

from e2e.cluster import netns, router
from e2e.cluster.apiaddr import Slot
from e2e.cluster.network import _answers, corefile, kube_proxy_args, objects


def test_each_slot_has_its_own_router_addresses_and_routes() -> None:
    a, b = Slot.of(0).router, Slot.of(3).router
    assert (a.netns, a.host_veth, a.address) == ("rpj-router-0", "rpjup0", "10.243.0.2")
    assert (b.netns, b.host_veth, b.address) == ("rpj-router-3", "rpjup3", "10.243.3.2")
    flat = [" ".join(c) for c in router.setup_commands(b)]
    assert flat[0] == "netns add rpj-router-3"
    # The host routes the slot's pods and Services through the router; the router's way out
    # is the host; the pod bridge lives inside the router.
    assert "route add 10.244.96.0/19 via 10.243.3.2 dev rpjup3" in flat
    assert "route add 10.99.0.0/16 via 10.243.3.2 dev rpjup3" in flat
    assert "-n rpj-router-3 route add default via 10.243.3.1" in flat
    assert f"-n rpj-router-3 link add {netns.BRIDGE} type bridge" in flat
    assert Slot.of(3).dns_address == "10.99.0.10" and Slot.of(3).service_ip == "10.99.0.1"
    # The API server binds the host's uplink address, never a ClusterIP (kube-proxy rejects
    # forwarded traffic still bound for a ClusterIP after DNAT).
    assert Slot.of(3).api_address == "10.243.3.1"


def test_router_processes_run_in_its_namespace_by_exec() -> None:
    argv = Slot.of(1).router.exec_argv(["kube-proxy", "--v=2"])
    assert argv == ["nsenter", "--net=/run/netns/rpj-router-1", "--", "kube-proxy", "--v=2"]


def test_pod_veth_goes_into_the_router_when_one_is_given() -> None:
    net = netns.PodNet("ns1", "v1", "10.244.2.7", "rpj-router-0")
    flat = [" ".join(c) for c in netns.pod_netns_commands(net, "10.244.2.1")]
    assert flat[1] == "-n rpj-router-0 link add v1 type veth peer name eth0 netns ns1"
    assert flat[2] == f"-n rpj-router-0 link set v1 master {netns.BRIDGE} up"
    assert flat[3] == "-n rpj-router-0 link set v1 type bridge_slave hairpin on"
    assert flat[-1] == "-n ns1 route add default via 10.244.2.1 dev eth0"


def test_corefile_serves_the_cluster_domain_from_the_api_on_the_router_address() -> None:
    conf = corefile("10.243.0.2", Path("/w/coredns.kubeconfig"))
    assert "bind 10.243.0.2" in conf
    assert "kubernetes cluster.local in-addr.arpa ip6.arpa {" in conf
    assert "kubeconfig /w/coredns.kubeconfig" in conf and "pods insecure" in conf
    assert "forward" not in conf  # nothing upstream is reachable: refuse at once


def test_kube_dns_service_points_at_coredns_and_the_default_class_is_host_path() -> None:
    objs = {o["kind"]: o for _, o in objects("10.96.0.10", "10.243.0.2")}
    svc = objs["Service"]
    assert svc["metadata"]["name"] == "kube-dns" and svc["spec"]["clusterIP"] == "10.96.0.10"
    assert "selector" not in svc["spec"]  # its endpoint is the router, not a pod
    eps = objs["EndpointSlice"]
    assert eps["metadata"]["labels"]["kubernetes.io/service-name"] == "kube-dns"
    assert eps["endpoints"][0]["addresses"] == ["10.243.0.2"]
    assert {(p["port"], p["protocol"]) for p in eps["ports"]} == {(53, "UDP"), (53, "TCP")}
    sc = objs["StorageClass"]
    assert sc["provisioner"] == "kubernetes.io/host-path"
    assert sc["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] == "true"
    assert objs["ClusterRoleBinding"]["subjects"][0]["name"] == "system:coredns"


def test_kube_proxy_runs_nftables_for_the_slots_pods_and_leaves_host_sysctls() -> None:
    args = kube_proxy_args(Path("/w/kp.kubeconfig"), "10.244.32.0/19")
    assert "--proxy-mode=nftables" in args and "--cluster-cidr=10.244.32.0/19" in args
    assert "--conntrack-max-per-core=0" in args


def _reply(qid: int, rcode: int, addrs: list[str]) -> bytes:
    head = struct.pack(">HHHHHH", qid, 0x8180 | rcode, 1, len(addrs), 0, 0)
    question = b"\x03web\x00" + struct.pack(">HH", 1, 1)
    answers = b"".join(
        b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 5, 4) + socket.inet_aton(a) for a in addrs
    )
    return head + question + answers


def test_dns_answers_are_read_and_errors_are_none() -> None:
    assert _answers(_reply(7, 0, ["10.96.0.1", "10.244.0.2"]), 7) == ["10.96.0.1", "10.244.0.2"]
    assert _answers(_reply(7, 3, []), 7) is None  # NXDOMAIN
    assert _answers(_reply(8, 0, ["10.96.0.1"]), 7) is None  # another query's reply
