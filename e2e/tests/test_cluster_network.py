"""Services, cluster DNS and storage of the e2e cluster (e2e/cluster/network.py, router.py):
pods resolve Service names (ClusterIP and headless, the pods' own resolv.conf naming the
kube-dns ClusterIP) and connect through ClusterIPs across nodes, a pod reaches itself through a
Service (hairpin), the host reaches a ClusterIP, kube-proxy's rules live in the cluster's own
router namespace (not the host's), and a claim of the default StorageClass is provisioned and
mounted. On this process's private cluster (e2e/backends/private.py), in one namespace for the
module (its two web servers serve two tests), deleted with its pods at the module's end.

Skips only when the pinned binaries are not built or not root.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from e2e.backends import private
from e2e.cluster import build
from e2e.cluster.cluster import E2ECluster, unavailable
from e2e.cluster.network import HOSTPATH_ROOT

pytestmark = pytest.mark.slow  # the private control plane and its nodes

SERVE = (
    "import http.server, socket, threading\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        body = socket.gethostname().encode()\n"
    "        self.send_response(200); self.end_headers(); self.wfile.write(body)\n"
    "srv = http.server.ThreadingHTTPServer(('0.0.0.0', 8080), H)\n"
    "threading.Thread(target=srv.serve_forever, daemon=True).start()\n"
)
# Polls until the Service answers (endpoints reach kube-proxy a moment after the pod is ready):
# the condition is the pod's own, with a deadline; the test waits on the pod's exit.
CLIENT = (
    "import json, socket, time, urllib.request\n"
    "def get(url):\n"
    "    deadline = time.monotonic() + 120\n"
    "    while True:\n"
    "        try:\n"
    "            return urllib.request.urlopen(url, timeout=3).read().decode()\n"
    "        except OSError as exc:\n"
    "            if time.monotonic() > deadline: return 'error: %s' % exc\n"
    "            time.sleep(0.5)\n"
    "def tcp(host, port):\n"
    "    try:\n"
    "        socket.create_connection((host, port), timeout=10).close()\n"
    "        return 'ok'\n"
    "    except OSError as exc:\n"
    "        return 'error: %s' % exc\n"
    "def addrs(name):\n"
    "    try:\n"
    "        return sorted({a[4][0] for a in socket.getaddrinfo(name, 80, socket.AF_INET)})\n"
    "    except OSError as exc:\n"
    "        return 'error: %s' % exc\n"
    # Ready pods reach DNS through the EndpointSlice controller and CoreDNS's watch (and its
    # cache): wait for the whole set rather than take the first answer.
    "def all_addrs(name, n):\n"
    "    deadline = time.monotonic() + 90\n"
    "    while True:\n"
    "        got = addrs(name)\n"
    "        if len(got) == n and not isinstance(got, str) or time.monotonic() > deadline:\n"
    "            return got\n"
    "        time.sleep(0.5)\n"
)


@dataclass
class Net:
    """The private cluster as this module sees it: the cluster and the module's namespace."""

    k8s: E2ECluster
    ns: str

    @property
    def kubeconfig(self) -> str:
        return str(self.k8s.kubeconfig)

    @property
    def control(self) -> Any:
        return self.k8s.control

    @property
    def net(self) -> Any:
        return self.k8s.net


@pytest.fixture(scope="module")
def k8s() -> Iterator[Net]:
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    cluster = private.get()
    assert cluster.k8s is not None
    with cluster.namespace("net") as ns:
        yield Net(cluster.k8s, ns)


def kubectl(
    cluster: Net, *args: str, check: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return build.kubectl(cluster.kubeconfig, *args, check=check, stdin=stdin)


def apply(cluster: Net, *objs: dict[str, Any]) -> None:
    items = {"kind": "List", "apiVersion": "v1", "items": list(objs)}
    kubectl(cluster, "apply", "-n", cluster.ns, "-f", "-", stdin=json.dumps(items))


def pod(name: str, node: str, script: str, labels: dict[str, str], **spec: Any) -> dict[str, Any]:
    container = {"name": "main", "image": "python:3.11", "command": ["python", "-c", script]}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [container],
            **spec,
        },
    }


def service(name: str, selector: dict[str, str], headless: bool = False) -> dict[str, Any]:
    port = {"port": 8080 if headless else 80, "targetPort": 8080}
    spec: dict[str, Any] = {"selector": selector, "ports": [port]}
    if headless:
        spec["clusterIP"] = "None"
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": spec}  # fmt: skip


def finished(cluster: Net, name: str) -> dict[str, Any]:
    """Wait for the pod to succeed; its last log line as JSON."""
    phase = "--for=jsonpath={.status.phase}=Succeeded"
    proc = kubectl(
        cluster, "wait", "-n", cluster.ns, phase, f"pod/{name}", "--timeout=240s", check=False
    )
    out = kubectl(cluster, "logs", "-n", cluster.ns, name).stdout
    assert proc.returncode == 0, f"pod {name} did not succeed: {proc.stderr}\nlogs:\n{out}"
    return dict(json.loads(out.strip().splitlines()[-1]))


def pod_ip(cluster: Net, name: str) -> str:
    out = kubectl(
        cluster, "get", "pod", "-n", cluster.ns, name, "-o", "jsonpath={.status.podIP}"
    ).stdout
    return out.strip()


@pytest.fixture(scope="module")
def web(k8s: Net) -> dict[str, str]:
    """Two servers (one per node) behind a ClusterIP Service and a headless one."""
    serve = SERVE + "import time\nwhile True: time.sleep(3600)\n"
    probe = {"httpGet": {"port": 8080, "path": "/"}, "periodSeconds": 1}
    servers = []
    for i in range(2):
        spec = {"hostname": f"web-{i}", "subdomain": "web-headless", "restartPolicy": "Always"}
        servers.append(pod(f"web-{i}", f"node-{i}", serve, {"app": "web"}, **spec))
    for s in servers:
        s["spec"]["containers"][0]["readinessProbe"] = probe
    apply(k8s, *servers, service("web", {"app": "web"}),
          service("web-headless", {"app": "web"}, headless=True))  # fmt: skip
    kubectl(k8s, "wait", "-n", k8s.ns, "--for=condition=Ready", "pod/web-0", "pod/web-1",
            "--timeout=240s")  # fmt: skip
    return {f"web-{i}": pod_ip(k8s, f"web-{i}") for i in range(2)}


def test_kube_proxy_rules_live_in_the_clusters_router_not_the_host(k8s: Net) -> None:
    assert k8s.control is not None and k8s.control.slot is not None and k8s.net is not None
    slot = k8s.control.slot
    argv = slot.router.exec_argv(["nft", "list", "table", "ip", "kube-proxy"])
    inside = subprocess.run(argv, capture_output=True, text=True)
    assert inside.returncode == 0, inside.stderr
    assert k8s.net.dns_address in inside.stdout and slot.service_ip in inside.stdout
    host = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True)
    assert k8s.net.dns_address not in host.stdout


def test_pod_resolves_services_and_connects_through_cluster_ip(
    k8s: Net, web: dict[str, str]
) -> None:
    script = CLIENT + (
        "print(json.dumps({\n"
        "  'resolv': open('/etc/resolv.conf').read(),\n"
        "  'hosts': open('/etc/hosts').read(),\n"
        "  'web': addrs('web'),\n"
        f"  'web_fqdn': addrs('web.{k8s.ns}.svc.cluster.local'),\n"
        "  'headless': all_addrs('web-headless', 2),\n"
        "  'web_0': addrs('web-0.web-headless'),\n"
        "  'api': addrs('kubernetes.default'),\n"
        "  'api_tcp': tcp('kubernetes.default', 443),\n"
        "  'get': sorted({get('http://web/') for _ in range(6)}),\n"
        "  'by_name': get('http://web-1.web-headless:8080/'),\n"
        "}))\n"
    )
    apply(k8s, pod("client", "node-1", script, {"app": "client"}))
    got = finished(k8s, "client")
    assert k8s.net is not None and k8s.control is not None and k8s.control.slot is not None
    svc = kubectl(k8s, "get", "svc", "-n", k8s.ns, "web", "-o", "jsonpath={.spec.clusterIP}").stdout
    assert got["resolv"].splitlines() == [
        f"search {k8s.ns}.svc.cluster.local svc.cluster.local cluster.local",
        f"nameserver {k8s.net.dns_address}",
        "options ndots:5",
    ]
    assert "\tclient" in got["hosts"]
    assert got["web"] == got["web_fqdn"] == [svc.strip()]
    assert got["headless"] == sorted(web.values())
    assert got["web_0"] == [web["web-0"]]
    assert got["api"] == [k8s.control.slot.service_ip]
    assert got["api_tcp"] == "ok"  # the API server through the kubernetes ClusterIP
    # Answers come from the servers through the ClusterIP (either one), and by pod DNS name.
    assert got["get"] and set(got["get"]) <= {"web-0", "web-1"}, got["get"]
    assert got["by_name"] == "web-1"


def test_pod_reaches_itself_through_a_service(k8s: Net) -> None:
    """Hairpin: the Service's only endpoint is the pod that dials it. (The pod is not named
    like the Service: its own name resolves to its own IP through /etc/hosts.)"""
    script = SERVE + CLIENT + "print(json.dumps({'self': get('http://hairpin/')}))\n"
    apply(k8s, service("hairpin", {"app": "hairpin"}),
          pod("hairpin-pod", "node-0", script, {"app": "hairpin"}))  # fmt: skip
    assert finished(k8s, "hairpin-pod") == {"self": "hairpin-pod"}


def test_host_reaches_a_cluster_ip(k8s: Net, web: dict[str, str]) -> None:
    svc = kubectl(k8s, "get", "svc", "-n", k8s.ns, "web", "-o", "jsonpath={.spec.clusterIP}").stdout
    with urllib.request.urlopen(f"http://{svc.strip()}/", timeout=10) as r:
        assert r.read().decode() in web


def test_claim_of_the_default_storage_class_is_provisioned_and_mounted(k8s: Net) -> None:
    claim = {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Mi"}}},
    }  # fmt: skip
    script = "import json\nopen('/data/hello', 'w').write('hi')\nprint(json.dumps({}))\n"
    volume = {"name": "data", "persistentVolumeClaim": {"claimName": "data"}}
    writer = pod("writer", "node-0", script, {"app": "writer"}, volumes=[volume])
    writer["spec"]["containers"][0]["volumeMounts"] = [{"name": "data", "mountPath": "/data"}]
    apply(k8s, claim, writer)
    finished(k8s, "writer")
    pvc = json.loads(kubectl(k8s, "get", "pvc", "-n", k8s.ns, "data", "-o", "json").stdout)
    assert pvc["spec"]["storageClassName"] == "standard" and pvc["status"]["phase"] == "Bound"
    pv = json.loads(kubectl(k8s, "get", "pv", pvc["spec"]["volumeName"], "-o", "json").stdout)
    path = pv["spec"]["hostPath"]["path"]
    assert path.startswith(HOSTPATH_ROOT + "/")
    with open(os.path.join(path, "hello")) as f:
        assert f.read() == "hi"
