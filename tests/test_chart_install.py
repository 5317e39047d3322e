"""The chart installed into the local cluster's emulated API server (e2e/localcluster).

Helm's install is replayed in its own order: the chart's crds/ first (`helm template
--include-crds` puts them first), then the templates, each created through the emulated API
server's store, which serves the kinds, establishes CRDs and validates custom resources. Then an
example RpcJob must be accepted by the CRD the chart templated.

A real `helm install` against the emulator runs too: helm stores its release record as a Secret
encoded as protobuf (client-go's default for typed clients), which the emulator decodes
(e2e/localcluster/protobuf.py). With the local cluster's workload controllers on
(Deployment -> ReplicaSet -> Pod, e2e/localcluster/workloads.py), `helm install --wait` runs the
chart's operator pod on the process kubelet (its container command `rpcjob-operator` as a local
process) and that operator runs an example job to success.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.localcluster.cluster import LocalCluster
from rpcjob import contract

# tests/ may or may not be a package (pytest's rootdir import either way).
try:
    from .helm_chart import CHART, REPO, helm_binary, run_helm
except ImportError:
    from helm_chart import CHART, REPO, helm_binary, run_helm  # type: ignore[no-redef]

pytestmark = pytest.mark.slow  # helm install --wait; the operator runs a whole job


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    workdir = tmp_path / "cluster"
    workdir.mkdir()
    with LocalCluster(kubelet=False, crds=None, workdir=str(workdir)) as c:
        yield c


def helm_env(cluster: LocalCluster, tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "KUBECONFIG": cluster.kubeconfig,
        "HELM_CONFIG_HOME": str(tmp_path / "helm"),
        "HELM_CACHE_HOME": str(tmp_path / "helm"),
        "HELM_DATA_HOME": str(tmp_path / "helm"),
    }


def install_like_helm(cluster: LocalCluster, namespace: str, *args: str) -> list[dict[str, Any]]:
    """Create what `helm install` would, in its order (crds/ first, then the templates)."""
    cluster.create_namespace(namespace)
    rendered = run_helm(
        "template", "rpcjob", str(CHART), "--namespace", namespace, "--include-crds", *args
    )
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    hooks = [d for d in docs if "helm.sh/hook" in d["metadata"].get("annotations", {})]
    created = cluster.apply_docs([d for d in docs if d not in hooks])
    created += cluster.apply_docs(hooks)
    return created


def get(
    cluster: LocalCluster, api_version: str, kind: str, name: str, ns: str | None = None
) -> Any:
    rt = cluster.store.registry.by_kind(api_version, kind)
    assert rt is not None, f"{api_version}/{kind} is not served"
    return cluster.store.get(rt, ns if rt.namespaced else None, name)


def test_install_default_values(cluster: LocalCluster) -> None:
    created = install_like_helm(cluster, "rpcjob-system")
    kinds = {d["kind"] for d in created}
    assert {"CustomResourceDefinition", "Deployment", "StatefulSet", "ClusterKopfPeering"} <= kinds

    crd = get(cluster, "apiextensions.k8s.io/v1", "CustomResourceDefinition", contract.CRD_NAME)
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions.get("Established") == "True"
    deployment = get(cluster, "apps/v1", "Deployment", "rpcjob-operator", "rpcjob-system")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "rpcjob-operator"
    assert get(cluster, "kopf.dev/v1", "ClusterKopfPeering", contract.DEFAULT_PEERING_NAME)
    assert get(cluster, "v1", "ServiceAccount", "rpcjob-job", "rpcjob-system")
    role = get(cluster, "rbac.authorization.k8s.io/v1", "ClusterRole", "rpcjob-operator")
    assert any("rpcjobs" in r["resources"] for r in role["rules"])

    # The CRD the chart installed serves RpcJobs: an example is accepted.
    example = yaml.safe_load((REPO / "examples" / "parameter_server" / "rpcjob.yaml").read_text())
    example["metadata"]["namespace"] = "rpcjob-system"
    (job,) = cluster.apply_docs([example])
    assert job["metadata"]["uid"]


def test_install_namespace_mode_and_tls_auth(cluster: LocalCluster) -> None:
    for ns in ("ml-team", "ml-batch"):
        cluster.create_namespace(ns)
    install_like_helm(
        cluster, "rpcjob-system",
        "-f", str(CHART / "ci" / "namespaced-values.yaml"),
        "-f", str(CHART / "ci" / "etcd-tls-auth-values.yaml"),
    )  # fmt: skip
    for ns in ("ml-team", "ml-batch"):
        assert get(cluster, "rbac.authorization.k8s.io/v1", "Role", "rpcjob-operator", ns)
        assert get(cluster, "kopf.dev/v1", "KopfPeering", contract.DEFAULT_PEERING_NAME, ns)
        assert get(cluster, "v1", "ServiceAccount", "rpcjob-worker", ns)
    assert get(cluster, "batch/v1", "Job", "rpcjob-etcd-enable-auth", "rpcjob-system")


def helm(cluster: LocalCluster, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm_binary()), *args], capture_output=True, text=True,
                          env=helm_env(cluster, tmp_path), timeout=300)  # fmt: skip


def test_real_helm_install_upgrade_uninstall(cluster: LocalCluster, tmp_path: Path) -> None:
    ns = ["--namespace", "rpcjob-system"]
    proc = helm(cluster, tmp_path, "install", "rpcjob", str(CHART), *ns, "--create-namespace",
                "--timeout", "60s")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert get(cluster, "apps/v1", "Deployment", "rpcjob-operator", "rpcjob-system")

    proc = helm(cluster, tmp_path, "upgrade", "rpcjob", str(CHART), *ns,
                "--set", "operator.resources.requests.cpu=200m")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    deployment = get(cluster, "apps/v1", "Deployment", "rpcjob-operator", "rpcjob-system")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["requests"]["cpu"] == "200m"
    history = json.loads(helm(cluster, tmp_path, "history", "rpcjob", *ns, "-o", "json").stdout)
    assert [(h["revision"], h["status"]) for h in history] == [(1, "superseded"), (2, "deployed")]

    proc = helm(cluster, tmp_path, "uninstall", "rpcjob", *ns)
    assert proc.returncode == 0, proc.stderr
    assert "[CustomResourceDefinition] rpcjobs.rpcjob.dev" in proc.stdout  # kept: resource-policy
    rt = cluster.store.registry.by_kind("apps/v1", "Deployment")
    assert rt is not None and cluster.store.raw(rt, "rpcjob-system", "rpcjob-operator") is None
    assert get(cluster, "apiextensions.k8s.io/v1", "CustomResourceDefinition", contract.CRD_NAME)


# Every pod shares this machine's network: the operator binds its liveness and metrics
# endpoints to its own pod IP instead of the chart's 0.0.0.0 (the probe still reaches it).
POD_LOCAL_VALUES = [
    "--set-json",
    'operator.extraEnv=[{"name": "POD_IP", "valueFrom": {"fieldRef": '
    '{"fieldPath": "status.podIP"}}}]',
    "--set-json",
    'operator.extraArgs=["--liveness=http://$(POD_IP):8080/healthz", "--metrics=$(POD_IP):9465"]',
]


def test_helm_install_wait_runs_the_operator_which_runs_an_example(
    local_cluster_factory: Any, etcd: Any, tmp_path: Path
) -> None:
    cluster: LocalCluster = local_cluster_factory(
        crds=None, workloads=True, pod_env={"EXAMPLE_STEPS": "30"}
    )
    proc = helm(cluster, tmp_path, "install", "rpcjob", str(CHART), "--namespace",
                "rpcjob-system", "--create-namespace", "--wait", "--timeout", "180s",
                "--set", f"etcd.endpoints[0]={etcd.endpoint}",
                "--set", "jobs.serviceAccount.namespaces[0]=default",
                *POD_LOCAL_VALUES)  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout

    # --wait returned: the Deployment's pod runs `rpcjob-operator` and is Ready.
    out = cluster.kubectl("-n", "rpcjob-system", "get", "pods", "-o", "json", check=True).stdout
    component = "app.kubernetes.io/component"
    (pod,) = [p for p in yaml.safe_load(out)["items"]
              if p["metadata"]["labels"].get(component) == "operator"]  # fmt: skip
    assert pod["status"]["phase"] == "Running"
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"
    rollout = cluster.kubectl("-n", "rpcjob-system", "rollout", "status",
                              "deployment/rpcjob-operator", "--timeout=10s")  # fmt: skip
    assert "successfully rolled out" in rollout.stdout, rollout.stderr

    example = REPO / "examples" / "parameter_server" / "rpcjob.yaml"
    applied = cluster.kubectl("apply", "-f", str(example), check=True).stdout
    assert applied.strip() == f"{contract.SINGULAR}.{contract.GROUP}/param-server created"

    def state() -> str:
        r = cluster.kubectl("get", "rpj", "param-server", "-o", "jsonpath={.status.state}")
        return r.stdout if r.stdout in ("Succeeded", "Failed") else ""

    final = cluster.wait_for(state, 240, message="param-server to finish")
    operator_log = cluster.pod_logs("rpcjob-system", pod["metadata"]["name"], "operator")
    assert final == "Succeeded", operator_log[-4000:]
    # The liveness probe (kopf's /healthz on the pod IP) kept passing: never restarted.
    name = pod["metadata"]["name"]
    out = cluster.kubectl("-n", "rpcjob-system", "get", "pod", name, "-o", "json", check=True)
    (status,) = json.loads(out.stdout)["status"]["containerStatuses"]
    assert (status["ready"], status["restartCount"]) == (True, 0), operator_log[-4000:]
    # helm's release record: a Secret it sent protobuf-encoded.
    secret = get(cluster, "v1", "Secret", "sh.helm.release.v1.rpcjob.v1", "rpcjob-system")
    assert secret["type"] == "helm.sh/release.v1"

    proc = helm(cluster, tmp_path, "uninstall", "rpcjob", "--namespace", "rpcjob-system",
                "--wait", "--timeout", "120s")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    cluster.wait_for(
        lambda: not cluster.kubectl("-n", "rpcjob-system", "get", "pods", "-o", "name").stdout,
        60, message="the operator pod to be gone after helm uninstall",
    )  # fmt: skip
