"""The chart installed into the local cluster's emulated API server (e2e/localcluster).

Helm's install is replayed in its own order: the chart's crds/ first (`helm template
--include-crds` puts them first), then the templates, each created through the emulated API
server's store, which serves the kinds, establishes CRDs and validates custom resources. Then an
example RpcJob must be accepted by the CRD the chart templated.

A real `helm install` against the emulator runs too: helm stores its release record as a Secret
encoded as protobuf (client-go's default for typed clients), which the emulator decodes
(e2e/localcluster/protobuf.py).
"""

from __future__ import annotations

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


def test_real_helm_install_into_the_emulator(cluster: LocalCluster, tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(helm_binary()), "install", "rpcjob", str(CHART), "--namespace", "rpcjob-system",
         "--create-namespace", "--timeout", "60s"],
        capture_output=True, text=True, env=helm_env(cluster, tmp_path), timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert get(cluster, "apps/v1", "Deployment", "rpcjob-operator", "rpcjob-system")
