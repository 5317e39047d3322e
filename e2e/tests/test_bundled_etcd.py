"""The chart's default: ``helm install --wait`` with DEFAULT values on the real e2e cluster
makes the bundled etcd StatefulSet Ready: its claim is provisioned by the default StorageClass
and mounted, its own peer and client URLs (``<pod>.<name>-headless.<ns>.svc``) resolve through
cluster DNS, its readiness probe passes, and the host reaches it through the client Service's
ClusterIP (kube-proxy). The release namespace is labelled
``pod-security.kubernetes.io/enforce: restricted`` first, so the etcd and operator pods are
admitted by the real PodSecurity admission.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.cluster import build
from e2e.cluster.cluster import E2ECluster, unavailable
from rpcjob.etcd import Client
from tests.helm_chart import CHART, helm_binary

# A cluster, the chart and a whole job: minutes on a loaded 2-core machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

NS = "rpcjob-system"
ETCD = "rpcjob-etcd"


@pytest.fixture(scope="module")
def k8s(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2ECluster]:
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    cluster = E2ECluster(tmp_path_factory.mktemp("k8s"), nodes=2).start()
    try:
        kubectl(cluster, "create", "namespace", NS)
        kubectl(cluster, "label", "namespace", NS, "pod-security.kubernetes.io/enforce=restricted")
        helm_install(cluster, tmp_path_factory.mktemp("helm"))
        yield cluster
    finally:
        cluster.stop()


def kubectl(cluster: E2ECluster, *args: str, stdin: str | None = None) -> str:
    cmd = [str(build.binary("kubectl")), "--kubeconfig", str(cluster.kubeconfig), *args]
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=240)
    if proc.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc.stdout


def get(cluster: E2ECluster, *args: str) -> dict[str, Any]:
    return dict(json.loads(kubectl(cluster, "get", "-n", NS, *args, "-o", "json")))


def helm_install(cluster: E2ECluster, home: Path) -> None:
    """The plain install a user runs: no --set, no values file (HOME too: without one helm
    writes its discovery cache to .kube/ in the working directory, the checkout)."""
    env = {"KUBECONFIG": str(cluster.kubeconfig), "HELM_CONFIG_HOME": str(home / "config"),
           "HELM_CACHE_HOME": str(home / "cache"), "HELM_DATA_HOME": str(home / "data"),
           "PATH": "/usr/bin:/bin", "HOME": str(home)}  # fmt: skip
    args = ["install", "rpcjob", str(CHART), "-n", NS, "--wait", "--timeout", "300s"]
    proc = subprocess.run([str(helm_binary()), *args], env=env, capture_output=True, text=True,
                          timeout=360)  # fmt: skip
    if proc.returncode != 0:
        pods = kubectl(cluster, "get", "pods,pvc,svc,endpointslices", "-n", NS, "-o", "wide")
        raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stderr}{proc.stdout}\n{pods}")


def test_default_install_makes_the_bundled_etcd_ready_on_a_provisioned_claim(
    k8s: E2ECluster,
) -> None:
    sts = get(k8s, "statefulset", ETCD)
    assert sts["status"].get("readyReplicas") == sts["spec"]["replicas"] == 1
    pvc = get(k8s, "pvc", f"data-{ETCD}-0")
    assert pvc["status"]["phase"] == "Bound" and pvc["spec"]["storageClassName"] == "standard"
    # The host reaches the client Service's ClusterIP too (the cluster's router routes it).
    ip = get(k8s, "service", ETCD)["spec"]["clusterIP"]
    client = Client([f"{ip}:2379"])
    try:
        client.put("/e2e/bundled", b"ok")
        kv = client.get("/e2e/bundled")
        assert kv is not None and kv.value == b"ok"
    finally:
        client.close()
