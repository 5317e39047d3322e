"""The chart's default: ``helm install --wait`` with DEFAULT values on the real e2e cluster
makes the bundled etcd StatefulSet Ready: its claim is provisioned by the default StorageClass
and mounted, its own peer and client URLs (``<pod>.<name>-headless.<ns>.svc``) resolve through
cluster DNS, its readiness probe passes, and the host reaches it through the client Service's
ClusterIP (kube-proxy). The release namespace is labelled
``pod-security.kubernetes.io/enforce: restricted`` first, so the etcd and operator pods are
admitted by the real PodSecurity admission.

On this process's private cluster (e2e/backends/private.py), in a namespace of its own: the
chart's cluster-scoped objects (the CRD, ClusterRoles, the ClusterKopfPeering) would clash with
the shared cluster's release, and no operator runs here meanwhile. The CRD the cluster already
has is handed to the release first (Helm's adoption labels, as a user does who applied crds/
with kubectl); ``helm uninstall`` keeps it.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from e2e.backends import private
from e2e.cluster import build
from e2e.cluster.cluster import unavailable
from rpcjob.etcd import Client
from tests.helm_chart import CHART, helm_binary

# The private cluster, the chart and its etcd: minutes on a loaded 2-core machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

RELEASE = "rpcjob"
ETCD = "rpcjob-etcd"


@dataclass
class Release:
    kubeconfig: str
    ns: str


@pytest.fixture
def k8s(tmp_path: Path) -> Iterator[Release]:
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    cluster = private.get()
    restricted = {"pod-security.kubernetes.io/enforce": "restricted"}
    with cluster.namespace("etcd", restricted) as ns:
        release = Release(cluster.kubeconfig, ns)
        cluster.hand_crds_to_release(RELEASE, ns)
        try:
            helm(release, tmp_path, "install", RELEASE, str(CHART), "-n", ns, "--wait",
                 "--timeout", "300s")  # fmt: skip
            yield release
        finally:
            helm(release, tmp_path, "uninstall", RELEASE, "-n", ns, "--ignore-not-found",
                 "--wait", "--timeout", "120s")  # fmt: skip
        # (the namespace goes here: its claim and, waited for, its pods)


def kubectl(cluster: Release, *args: str, stdin: str | None = None) -> str:
    cmd = [str(build.binary("kubectl")), "--kubeconfig", cluster.kubeconfig, *args]
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=240)
    if proc.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc.stdout


def get(cluster: Release, *args: str) -> dict[str, Any]:
    return dict(json.loads(kubectl(cluster, "get", "-n", cluster.ns, *args, "-o", "json")))


def helm(cluster: Release, home: Path, *args: str) -> None:
    """helm as a user runs it: no --set, no values file (HOME too: without one helm writes its
    discovery cache to .kube/ in the working directory, the checkout)."""
    env = {"KUBECONFIG": cluster.kubeconfig, "HELM_CONFIG_HOME": str(home / "config"),
           "HELM_CACHE_HOME": str(home / "cache"), "HELM_DATA_HOME": str(home / "data"),
           "PATH": "/usr/bin:/bin", "HOME": str(home)}  # fmt: skip
    proc = subprocess.run([str(helm_binary()), *args], env=env, capture_output=True, text=True,
                          timeout=360)  # fmt: skip
    if proc.returncode != 0:
        pods = kubectl(cluster, "get", "pods,pvc,svc,endpointslices", "-n", cluster.ns, "-o",
                       "wide")  # fmt: skip
        raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stderr}{proc.stdout}\n{pods}")


def test_default_install_makes_the_bundled_etcd_ready_on_a_provisioned_claim(
    k8s: Release,
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
