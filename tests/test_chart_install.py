"""The chart with the real helm on the real API server (the pinned kube-apiserver of e2e/cluster).

* Default values, `helm install` / `upgrade` / `uninstall` on this process's private cluster, in
  a namespace of its own, its nodes cordoned meanwhile (nothing runs, the API objects are the
  point): the CRD (the cluster's, handed to the release as a user would) is established and
  kept by `helm uninstall`, the operator's Deployment, ServiceAccounts, ClusterRole and cluster
  peering exist, an example RpcJob is accepted by the CRD the chart installed.
* Namespace scope with the bundled etcd's TLS and auth: `helm template | kubectl apply
  --dry-run=server` on this process's private cluster — every object is admitted by the real
  API server (Roles, peerings and worker ServiceAccounts in each watched namespace, the auth Job).
* `helm install --wait` with default values running the operator as a pod: the session's shared
  cluster was installed exactly so (e2e/backends/shared.py); its operator pod is Ready, never
  restarted, and owned by the Deployment's ReplicaSet. (That it runs the examples to success is
  e2e/tests/test_examples.py, on the same install.)
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

from e2e.cluster import build
from e2e.cluster.cluster import unavailable
from rpcjob import contract

# tests/ may or may not be a package (pytest's rootdir import either way).
try:
    from .helm_chart import CHART, REPO, helm_binary, run_helm
except ImportError:
    from helm_chart import CHART, REPO, helm_binary, run_helm  # type: ignore[no-redef]

pytestmark = pytest.mark.slow  # a real control plane


@pytest.fixture
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(kubeconfig, namespace): the private cluster, nothing scheduled, the CRD to be owned by a
    release ``rpcjob`` in the namespace (uninstalled at the end if the test left it)."""
    from e2e.backends import private
    from e2e.backends.chart import helm_uninstall

    reason = unavailable()
    if reason:
        pytest.skip(reason)
    cluster = private.get()
    nodes = [k.name for k in cluster.kubelets()]
    with cluster.namespace("chart") as ns:
        cluster.hand_crds_to_release("rpcjob", ns)
        cluster.kubectl("cordon", *nodes)  # the chart's pods stay Pending: nothing runs
        try:
            yield cluster.kubeconfig, ns
        finally:
            try:
                helm_uninstall(cluster.kubeconfig, tmp_path_factory.mktemp("helm"), ns, "rpcjob")
            finally:
                cluster.kubectl("uncordon", *nodes)


def kubectl(kubeconfig: str | Path, *args: str, input: str | None = None) -> str:
    proc = subprocess.run([str(build.binary("kubectl")), "--kubeconfig", str(kubeconfig), *args],
                          capture_output=True, text=True, timeout=120, input=input)  # fmt: skip
    assert proc.returncode == 0, f"kubectl {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def get(kubeconfig: str | Path, kind: str, name: str, ns: str | None = None) -> Any:
    out = kubectl(kubeconfig, *(["-n", ns] if ns else []), "get", kind, name, "-o", "json",
                  "--ignore-not-found")  # fmt: skip
    return json.loads(out) if out.strip() else None


def helm(kubeconfig: str | Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "HELM_CONFIG_HOME": str(tmp_path / "helm"),
        "HELM_CACHE_HOME": str(tmp_path / "helm"),
        "HELM_DATA_HOME": str(tmp_path / "helm"),
    }
    return subprocess.run([str(helm_binary()), *args], capture_output=True, text=True, env=env,
                          timeout=300)  # fmt: skip


def test_helm_install_default_values_upgrade_uninstall(
    api: tuple[str, str], tmp_path: Path
) -> None:
    kc, release_ns = api
    ns = ["--namespace", release_ns]
    proc = helm(kc, tmp_path, "install", "rpcjob", str(CHART), *ns, "--create-namespace",
                "--timeout", "60s")  # fmt: skip
    assert proc.returncode == 0, proc.stderr

    crd = get(kc, "crd", contract.CRD_NAME)
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    kubectl(kc, "wait", "--for=condition=Established", f"crd/{contract.CRD_NAME}", "--timeout=60s")
    deployment = get(kc, "deployment", "rpcjob-operator", release_ns)
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "rpcjob-operator"
    assert get(kc, "clusterkopfpeering", contract.DEFAULT_PEERING_NAME)
    assert get(kc, "serviceaccount", "rpcjob-job", release_ns)
    role = get(kc, "clusterrole", "rpcjob-operator")
    assert any("rpcjobs" in r["resources"] for r in role["rules"])
    # The CRD the chart installed serves RpcJobs: an example is accepted.
    example = REPO / "examples" / "parameter_server" / "rpcjob.yaml"
    out = kubectl(kc, "-n", release_ns, "apply", "-f", str(example), "-o", "json")
    assert json.loads(out)["metadata"]["uid"]
    kubectl(kc, "-n", release_ns, "delete", "-f", str(example))

    proc = helm(kc, tmp_path, "upgrade", "rpcjob", str(CHART), *ns,
                "--set", "operator.resources.requests.cpu=200m")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    deployment = get(kc, "deployment", "rpcjob-operator", release_ns)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["requests"]["cpu"] == "200m"
    history = json.loads(helm(kc, tmp_path, "history", "rpcjob", *ns, "-o", "json").stdout)
    assert [(h["revision"], h["status"]) for h in history] == [(1, "superseded"), (2, "deployed")]

    proc = helm(kc, tmp_path, "uninstall", "rpcjob", *ns, "--wait", "--timeout", "120s")
    assert proc.returncode == 0, proc.stderr
    assert "[CustomResourceDefinition] rpcjobs.rpcjob.dev" in proc.stdout  # kept: resource-policy
    assert get(kc, "deployment", "rpcjob-operator", release_ns) is None
    assert not kubectl(kc, "-n", release_ns, "get", "pods", "-o", "name").strip()
    assert get(kc, "crd", contract.CRD_NAME)


def test_namespace_mode_and_tls_auth_are_admitted() -> None:
    from e2e.backends import private

    reason = unavailable()
    if reason:
        pytest.skip(reason)
    kc = private.get().kubeconfig
    suffix = os.urandom(3).hex()
    watched = [f"ml-team-{suffix}", f"ml-batch-{suffix}"]
    for ns in ["rpcjob-system", *watched]:
        if get(kc, "namespace", ns) is None:
            kubectl(kc, "create", "namespace", ns)
    try:
        rendered = run_helm(
            "template", "rpcjob", str(CHART), "--namespace", "rpcjob-system",
            "-f", str(CHART / "ci" / "namespaced-values.yaml"),
            "-f", str(CHART / "ci" / "etcd-tls-auth-values.yaml"),
            "--set", "rbac.namespaces={" + ",".join(watched) + "}",
        )  # fmt: skip
        out = kubectl(kc, "apply", "--dry-run=server", "-o", "json", "-f", "-", input=rendered)
        admitted = json.loads(out)
        items = admitted["items"] if admitted.get("kind") == "List" else [admitted]
        have = {(d["kind"], d["metadata"]["name"], d["metadata"].get("namespace")) for d in items}
        for ns in watched:
            assert ("Role", "rpcjob-operator", ns) in have, sorted(have)
            assert ("KopfPeering", contract.DEFAULT_PEERING_NAME, ns) in have
            assert ("ServiceAccount", "rpcjob-worker", ns) in have
        assert ("Job", "rpcjob-etcd-enable-auth", "rpcjob-system") in have
        assert len(items) == len([d for d in yaml.safe_load_all(rendered) if d])
    finally:
        for ns in watched:
            kubectl(kc, "delete", "namespace", ns, "--wait=false")


def test_helm_install_wait_runs_the_operator_as_a_ready_pod() -> None:
    from e2e.backends import cluster, shared

    reason = cluster.unavailable()
    if reason:
        pytest.skip(reason)
    kc = shared.attach("chart")["kubeconfig"]
    out = kubectl(kc, "-n", "rpcjob-system", "get", "pods", "-o", "json", "-l",
                  "app.kubernetes.io/component=operator")  # fmt: skip
    (pod,) = json.loads(out)["items"]
    assert pod["status"]["phase"] == "Running"
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"
    rollout = kubectl(kc, "-n", "rpcjob-system", "rollout", "status",
                      "deployment/rpcjob-operator", "--timeout=10s")  # fmt: skip
    assert "successfully rolled out" in rollout
    # The liveness probe (kopf's /healthz) kept passing: never restarted.
    (status,) = pod["status"]["containerStatuses"]
    assert (status["ready"], status["restartCount"]) == (True, 0), status
    secret = get(kc, "secret", "sh.helm.release.v1.rpcjob.v1", "rpcjob-system")
    assert secret["type"] == "helm.sh/release.v1"
