"""The process kubelet (e2e/cluster/kubelet.py) against the real control plane: pods get their own
network namespaces and IPs, reach each other by pod IP, read the API with their projected
service-account token, and ``kubectl logs`` (the pinned kubectl, through the API server to the
kubelet API) honours --tail, --timestamps, --previous, --since-time and -f.

On this process's private cluster (e2e/backends/private.py: no operator runs there during these
tests), each test in a namespace of its own; a node with GPUs joins it for the module. Skips
only when the pinned binaries are not built or not root.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import select
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from e2e.backends import private
from e2e.cluster import build
from e2e.cluster.cluster import unavailable
from rpcjob import contract
from rpcjob_operator.model import Slot
from rpcjob_operator.render import OperatorDefaults, render_pod
from rpcjob_operator.spec import parse_job

from .jobs import ELASTIC_APP

pytestmark = pytest.mark.slow  # the private control plane and its nodes

GPUS = 2
RBAC_LABEL = "rpcjob.dev/e2e-test-namespace"  # on the cluster-scoped objects a test makes
SERVE = (
    "import http.server, socket\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        body = socket.gethostname().encode()\n"
    "        self.send_response(200); self.end_headers(); self.wfile.write(body)\n"
    "http.server.HTTPServer(('0.0.0.0', 8080), H).serve_forever()\n"
)


@dataclass
class K8s:
    """The private cluster as one test sees it: its namespace, node-0 and node-1, the GPU node."""

    cluster: private.PrivateCluster
    ns: str
    gpu_node: Any  # the GPU node's kubelet

    @property
    def kubeconfig(self) -> str:
        return self.cluster.kubeconfig

    def node(self, name: str) -> Any:
        return next(k for k in self.cluster.kubelets() if k.name == name)


@pytest.fixture(scope="module")
def gpu_node() -> Iterator[Any]:
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    with private.get().extra_node("gpu", gpus=GPUS) as kubelet:
        yield kubelet


@pytest.fixture
def k8s(gpu_node: Any) -> Iterator[K8s]:
    cluster = private.get()
    with cluster.namespace("kt") as ns:
        k = K8s(cluster, ns, gpu_node)
        try:
            yield k
        finally:
            made = [e.net.netns for n in cluster.kubelets() for e in list(n.pods.values())
                    if e.net and e.pod["metadata"]["namespace"] == ns]  # fmt: skip
            cluster.kubectl("delete", "clusterrole,clusterrolebinding", "-l", f"{RBAC_LABEL}={ns}")
        # (the namespace goes here, its pods waited for)
    # Deleting the pods removed their network namespaces (and with them their veths).
    left = subprocess.run(["ip", "netns"], capture_output=True, text=True).stdout
    assert not [n for n in made if n in left], left


def kubectl(
    cluster: K8s, *args: str, check: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return build.kubectl(cluster.kubeconfig, *args, check=check, stdin=stdin, timeout=180)


def pod(
    name: str, node: str, command: list[str], restart: str = "Never", **extra: Any
) -> dict[str, Any]:
    container = {"name": "main", "image": "python:3.11", "command": command, **extra}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "restartPolicy": restart,
            "terminationGracePeriodSeconds": 2,
            "containers": [container],
        },
    }


def apply(cluster: K8s, *objs: dict[str, Any], ns: str | None = None) -> None:
    """Apply into the test's namespace (or ``ns``); cluster-scoped objects get RBAC_LABEL."""
    for obj in objs:
        if obj["kind"].startswith("Cluster"):
            obj["metadata"].setdefault("labels", {})[RBAC_LABEL] = cluster.ns
    items = {"kind": "List", "apiVersion": "v1", "items": list(objs)}
    kubectl(cluster, "apply", "-n", ns or cluster.ns, "-f", "-", stdin=json.dumps(items))


def wait(cluster: K8s, name: str, condition: str, timeout: int = 180) -> None:
    kubectl(cluster, "wait", "-n", cluster.ns, f"--for={condition}", f"pod/{name}",
            f"--timeout={timeout}s")  # fmt: skip


def get(cluster: K8s, name: str) -> dict[str, Any]:
    out = kubectl(cluster, "get", "pod", name, "-n", cluster.ns, "-o", "json").stdout
    return dict(json.loads(out))


def logs(cluster: K8s, name: str, *flags: str) -> str:
    return kubectl(cluster, "logs", "-n", cluster.ns, name, *flags).stdout


def server(name: str, node: str) -> dict[str, Any]:
    probe = {"httpGet": {"port": 8080, "path": "/"}, "periodSeconds": 1}
    return pod(name, node, ["python", "-c", SERVE], "Always", readinessProbe=probe)


def test_node_is_registered_with_gpus_labels_and_a_lease(k8s: K8s) -> None:
    name = k8s.gpu_node.name
    node = json.loads(kubectl(k8s, "get", "node", name, "-o", "json").stdout)
    assert node["status"]["capacity"]["nvidia.com/gpu"] == str(GPUS)
    assert node["metadata"]["labels"]["nvidia.com/gpu.count"] == str(GPUS)
    node_ip = k8s.gpu_node.node_ip
    assert node["status"]["addresses"] == [{"type": "InternalIP", "address": node_ip}]
    assert node["spec"]["podCIDR"].startswith("10.244.")
    lease = json.loads(
        kubectl(k8s, "get", "lease", name, "-n", "kube-node-lease", "-o", "json").stdout
    )
    assert lease["spec"]["holderIdentity"] == name


def test_two_pods_of_one_node_bind_one_port_and_are_reached_by_pod_ip(k8s: K8s) -> None:
    apply(k8s, server("web-a", "node-0"), server("web-b", "node-0"))
    for name in ("web-a", "web-b"):
        wait(k8s, name, "condition=Ready")
    a, b = get(k8s, "web-a"), get(k8s, "web-b")
    assert a["status"]["podIP"] != b["status"]["podIP"]
    assert a["status"]["hostIP"] == k8s.node("node-0").node_ip
    fetch = f"import urllib.request; print(urllib.request.urlopen('http://{b['status']['podIP']}:8080/', timeout=30).read().decode())"  # noqa: E501
    apply(k8s, pod("client", "node-1", ["python", "-c", fetch]))
    wait(k8s, "client", "jsonpath={.status.phase}=Succeeded")
    assert logs(k8s, "client").strip() == "web-b"  # its hostname: the pod's own UTS namespace
    node = json.loads(kubectl(k8s, "get", "node", "node-1", "-o", "json").stdout)
    cidr = ipaddress.ip_network(node["spec"]["podCIDR"])
    assert ipaddress.ip_address(get(k8s, "client")["status"]["podIP"]) in cidr


def test_projected_token_reads_the_pods_node_through_the_api(k8s: K8s) -> None:
    rbac = [{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader"}},
            *node_reader(k8s.ns, "reader", k8s.ns)]  # fmt: skip
    code = (
        "import os; from kubernetes import client, config; config.load_incluster_config(); "
        "n = client.CoreV1Api().read_node(os.environ['NODE']); "
        "print(n.metadata.name, n.metadata.labels['nvidia.com/gpu.count'])"
    )
    node_env = {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}
    reader = pod("reader", k8s.gpu_node.name, ["python", "-c", code], env=[node_env])
    reader["spec"]["serviceAccountName"] = "reader"
    apply(k8s, *rbac, reader)
    wait(k8s, "reader", "jsonpath={.status.phase}=Succeeded")
    assert logs(k8s, "reader").split() == [k8s.gpu_node.name, str(GPUS)]


def node_reader(name: str, account: str, namespace: str) -> list[dict[str, Any]]:
    """A ClusterRole that may get Nodes, bound to ServiceAccount ``namespace/account``."""
    role = {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name}
    return [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": name},
         "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": name}, "roleRef": role,
         "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}]},
    ]  # fmt: skip


def test_kubectl_logs_tail_timestamps_previous_since_and_follow(k8s: K8s) -> None:
    lines = "echo one; echo two; echo three; sleep 0.5; exit 1"
    apply(k8s, pod("logger", "node-0", ["sh", "-c", lines], "OnFailure"))
    wait(k8s, "logger", "jsonpath={.status.containerStatuses[0].lastState.terminated.exitCode}=1")
    assert logs(k8s, "logger", "--previous").split() == ["one", "two", "three"]
    assert logs(k8s, "logger", "--previous", "--tail=1").splitlines() == ["three"]
    stamped = logs(k8s, "logger", "--previous", "--timestamps", "--tail=2").splitlines()
    assert [line.split(" ", 1)[1] for line in stamped] == ["two", "three"]
    assert dt.datetime.fromisoformat(stamped[0].split(" ")[0].replace("Z", "+00:00"))
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert logs(k8s, "logger", "--previous", f"--since-time={later}") == ""
    assert "three" in logs(k8s, "logger", "--previous", "--since=1h")

    ticker = "import itertools, time\nfor i in itertools.count():\n    print('tick', i, flush=True); time.sleep(0.2)\n"  # noqa: E501
    apply(k8s, pod("ticker", "node-0", ["python", "-u", "-c", ticker], "Always"))
    wait(k8s, "ticker", "condition=Ready")
    cmd = [
        str(build.binary("kubectl")),
        "--kubeconfig",
        str(k8s.kubeconfig),
        "logs",
        "-f",
        "--tail=1",
        "-n",
        k8s.ns,
        "ticker",
    ]
    follow = subprocess.Popen(cmd, stdout=subprocess.PIPE)
    try:
        got = _read_lines(follow, 3, deadline=time.monotonic() + 60)
    finally:
        follow.kill()
        follow.wait()
    numbers = [int(line.split()[1]) for line in got]
    assert numbers == list(range(numbers[0], numbers[0] + 3))  # the last line, then live ones


def _read_lines(proc: subprocess.Popen[bytes], n: int, deadline: float) -> list[str]:
    assert proc.stdout is not None
    fd, buf = proc.stdout.fileno(), b""
    while buf.count(b"\n") < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"kubectl logs -f printed {buf!r} before the deadline")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                raise AssertionError(f"kubectl logs -f ended early after {buf!r}")
            buf += chunk
    return buf.decode().splitlines()[:n]


def test_rpcjob_pods_form_a_group_in_a_restricted_namespace(k8s: K8s) -> None:
    """Two pods as the operator renders them (native sidecar + worker, hardened for the
    restricted Pod Security level), their etcd a pod on the network: each sidecar reads its
    Node through the API with its projected token, the workers reach each other by pod IP,
    and READY counts the sidecar's readiness (the worker joined)."""
    restricted = {"pod-security.kubernetes.io/enforce": "restricted"}
    with k8s.cluster.namespace("kt-job", restricted) as ns:
        _form_a_group(k8s, ns)


def _form_a_group(k8s: K8s, ns: str) -> None:
    etcd = pod("etcd", "node-0", ["/usr/local/bin/etcd", "--data-dir=/var/lib/etcd-kt",
               "--listen-client-urls=http://0.0.0.0:2379", "--listen-peer-urls=http://127.0.0.1:2380",
               "--advertise-client-urls=http://$(POD_IP):2379"], "Always",
               env=[{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
               volumeMounts=[{"name": "data", "mountPath": "/var/lib/etcd-kt"}],
               readinessProbe={"tcpSocket": {"port": 2379}, "periodSeconds": 1})  # fmt: skip
    etcd["spec"]["volumes"] = [{"name": "data", "emptyDir": {}}]
    apply(k8s, etcd)  # in the test's own namespace (not restricted)
    wait(k8s, "etcd", "condition=Ready")
    etcd_ip = get(k8s, "etcd")["status"]["podIP"]
    rbac = [{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "job"}},
            *node_reader(ns, "job", ns)]  # fmt: skip
    defaults = OperatorDefaults(
        sidecar_image="rpcjob-sidecar:dev",
        etcd_endpoints=(f"{etcd_ip}:2379",),
        job_service_account="job",
    )
    worker = {"name": contract.WORKER_CONTAINER, "image": "example-worker",
              "command": ["python", "-c", ELASTIC_APP]}  # fmt: skip
    job = parse_job({
        "apiVersion": contract.API_VERSION, "kind": contract.KIND,
        "metadata": {"name": "el", "namespace": ns, "uid": "uid-kt-1", "generation": 1},
        "spec": {"roles": {"worker": {"replicas": 2, "template": {"spec": {"containers": [worker]}}}},  # noqa: E501
                 "rpc": {"timeoutSeconds": 30}},
    })  # fmt: skip
    pods = [render_pod(job, Slot("worker", i), defaults=defaults) for i in range(2)]
    for p in pods:
        p["metadata"].pop("ownerReferences", None)  # no RpcJob object: the GC would reap them
    apply(k8s, *rbac, *pods, ns=ns)
    for i in range(2):
        kubectl(k8s, "wait", "-n", ns, "--for=condition=Ready", f"pod/el-worker-{i}",
                "--timeout=300s")  # fmt: skip
    for i in range(2):
        out = kubectl(k8s, "logs", "-n", ns, f"el-worker-{i}", "-c", "worker").stdout
        assert "reachable: worker_0,worker_1" in out, out


def _status(cluster: K8s, name: str) -> dict[str, Any]:
    return dict(get(cluster, name).get("status") or {})


def _until(cluster: K8s, name: str, pred: Any, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + 180
    while True:
        status = _status(cluster, name)
        if pred(status):
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"pod {name}: no {what} within 180 s: {json.dumps(status)}")
        time.sleep(0.5)


def test_restarts_init_order_and_config_errors_reach_the_pod_status(k8s: K8s) -> None:
    """Container lifecycle through the API: OnFailure restarts counted with the last exit,
    init containers in order before the containers, a failed init fails a Never pod, and an
    image with no known entrypoint is a CreateContainerConfigError naming the fix."""
    flaky = ("import os, sys\np = '/state/count'\n"
             "n = int(open(p).read()) if os.path.exists(p) else 0\n"
             "open(p, 'w').write(str(n + 1))\nsys.exit(0 if n >= 2 else 5)\n")  # fmt: skip
    state = [{"name": "s", "mountPath": "/state"}]
    flaky_pod = pod("flaky", "node-0", ["python", "-c", flaky], "OnFailure", volumeMounts=state)
    flaky_pod["spec"]["volumes"] = [{"name": "s", "emptyDir": {}}]

    def step(n: int) -> dict[str, Any]:
        code = f"open('/state/order', 'a').write('init{n} ')"
        return {"name": f"init{n}", "image": "python:3.11", "command": ["python", "-c", code],
                "volumeMounts": state}  # fmt: skip

    ordered = pod("ordered", "node-1", ["python", "-c", "print(open('/state/order').read())"],
                  volumeMounts=state)  # fmt: skip
    ordered["spec"]["volumes"] = [{"name": "s", "emptyDir": {}}]
    ordered["spec"]["initContainers"] = [step(1), step(2)]
    badinit = pod("badinit", "node-1", ["python", "-c", "print('never')"])
    badinit["spec"]["initContainers"] = [
        {"name": "init", "image": "python:3.11", "command": ["python", "-c", "exit(4)"]}
    ]
    nocmd = pod("nocmd", "node-0", [])
    nocmd["spec"]["containers"][0] = {"name": "main", "image": "registry.example/unknown:1"}
    apply(k8s, flaky_pod, ordered, badinit, nocmd)

    done = ("Succeeded", "Failed")
    s = _until(k8s, "flaky", lambda s: s.get("phase") in done, "end")
    c = s["containerStatuses"][0]
    assert (s["phase"], c["restartCount"]) == ("Succeeded", 2), s
    assert c["lastState"]["terminated"]["exitCode"] == 5
    assert c["state"]["terminated"]["exitCode"] == 0

    s = _until(k8s, "ordered", lambda s: s.get("phase") in done, "end")
    assert s["phase"] == "Succeeded", s
    assert logs(k8s, "ordered").strip() == "init1 init2"
    assert [i["state"]["terminated"]["exitCode"] for i in s["initContainerStatuses"]] == [0, 0]

    s = _until(k8s, "badinit", lambda s: s.get("phase") in done, "end")
    assert s["phase"] == "Failed", s
    assert s["initContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 4
    assert "waiting" in s["containerStatuses"][0]["state"]  # main never started

    s = _until(k8s, "nocmd", lambda s: "CreateContainerConfigError" in json.dumps(s), "error")
    waiting = s["containerStatuses"][0]["state"]["waiting"]
    assert waiting["reason"] == "CreateContainerConfigError"
    assert "set 'command' in the container spec" in waiting["message"], waiting


@pytest.mark.parametrize(
    ("handler", "grace", "exit_code"),
    [
        ("signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))", 30, 0),  # drains on SIGTERM
        ("signal.signal(signal.SIGTERM, signal.SIG_IGN)", 1, 137),  # SIGKILL after the grace
    ],
)
def test_deletion_sends_sigterm_then_sigkill_after_the_grace_period(
    k8s: K8s, handler: str, grace: int, exit_code: int
) -> None:
    name = f"grace-{exit_code}"
    code = f"import signal, sys, time\n{handler}\nprint('up', flush=True)\ntime.sleep(600)\n"
    p = pod(name, "node-0", ["python", "-u", "-c", code], "Always")
    p["spec"]["terminationGracePeriodSeconds"] = grace
    apply(k8s, p)
    _until(k8s, name, lambda s: "running" in json.dumps(s.get("containerStatuses")), "start")
    deadline = time.monotonic() + 120
    while "up" not in logs(k8s, name):
        assert time.monotonic() < deadline, "the container never printed 'up'"
        time.sleep(0.5)
    # Watch the pod from now on: its last status before it is gone carries the exit code.
    watch = subprocess.Popen(
        [str(build.binary("kubectl")), "--kubeconfig", str(k8s.kubeconfig), "get", "pod", name,
         "-n", k8s.ns, "-w", "-o", "json", "--output-watch-events"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        events = _watch_events(watch, deadline=time.monotonic() + 180)
        first = next(events)  # the watch has the pod: only now can the delete not outrun it
        assert first["object"]["metadata"]["name"] == name
        kubectl(k8s, "delete", "pod", name, "-n", k8s.ns, "--wait=false")
        graces: list[int] = []
        term: dict[str, Any] = {}
        for ev in events:
            obj = ev["object"]
            graces.append(obj["metadata"].get("deletionGracePeriodSeconds"))
            for c in obj["status"].get("containerStatuses") or []:
                term = c["state"].get("terminated") or term
            if ev["type"] == "DELETED":
                break
    finally:
        watch.kill()
        watch.wait()
    # the user's delete carries the pod's grace; the kubelet's final one is 0 (all stopped)
    assert grace in graces and graces[-1] == 0, graces
    assert term.get("exitCode") == exit_code, term


def _watch_events(proc: subprocess.Popen[str], deadline: float) -> Iterator[dict[str, Any]]:
    """The events ``kubectl get -w -o json --output-watch-events`` prints (multi-line JSON)."""
    assert proc.stdout is not None
    decoder, buf = json.JSONDecoder(), ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            return
        buf += line
        try:
            ev, _ = decoder.raw_decode(buf.strip())
        except ValueError:
            continue
        buf = ""
        yield ev
