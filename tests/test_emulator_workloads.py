"""The local cluster's optional workload controllers (e2e/localcluster/workloads.py):
Deployment -> ReplicaSet -> Pods with the status `kubectl rollout status` and `helm --wait`
read, Recreate rollouts, replacement of deleted pods, and Service cluster IPs."""

from __future__ import annotations

import json
import shutil
from typing import Any

import pytest

from e2e.localcluster.cluster import LocalCluster

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not on PATH")

SLEEPER = ["python3", "-c", "import time; time.sleep(600)"]


def deployment(replicas: int, strategy: str = "Recreate") -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "strategy": {"type": strategy},
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "x", "command": SLEEPER}]},
            },
        },
    }


def ok(cluster: LocalCluster, *args: str, input: str | None = None) -> str:
    r = cluster.kubectl(*args, input=input)
    assert r.returncode == 0, f"kubectl {' '.join(args)} failed: {r.stderr}"
    return r.stdout


def items(cluster: LocalCluster, kind: str) -> list[dict[str, Any]]:
    return list(json.loads(ok(cluster, "get", kind, "-o", "json"))["items"])


def live_pods(cluster: LocalCluster) -> list[dict[str, Any]]:
    return [p for p in items(cluster, "pods") if not p["metadata"].get("deletionTimestamp")]


@pytest.fixture
def cluster(local_cluster_factory) -> LocalCluster:  # type: ignore[no-untyped-def]
    return local_cluster_factory(crds=None, workloads=True)


def test_deployment_rolls_out_and_keeps_its_replicas(cluster: LocalCluster) -> None:
    ok(cluster, "apply", "-f", "-", input=json.dumps(deployment(2)))
    out = ok(cluster, "rollout", "status", "deployment/web", "--timeout=60s")
    assert out.strip() == 'deployment "web" successfully rolled out'

    (rs,) = items(cluster, "replicasets")
    assert rs["metadata"]["ownerReferences"][0]["kind"] == "Deployment"
    thash = rs["metadata"]["labels"]["pod-template-hash"]
    assert rs["spec"]["selector"]["matchLabels"] == {"app": "web", "pod-template-hash": thash}
    pods = live_pods(cluster)
    assert len(pods) == 2
    assert {p["metadata"]["ownerReferences"][0]["name"] for p in pods} == {rs["metadata"]["name"]}
    assert all(p["status"]["phase"] == "Running" for p in pods)
    status = json.loads(ok(cluster, "get", "deployment", "web", "-o", "json"))["status"]
    assert (status["replicas"], status["updatedReplicas"], status["availableReplicas"]) == (2, 2, 2)
    assert {c["type"]: c["reason"] for c in status["conditions"]} == {
        "Available": "MinimumReplicasAvailable",
        "Progressing": "NewReplicaSetAvailable",
    }

    assert ok(cluster, "get", "deploy").splitlines()[1].split()[:4] == ["web", "2/2", "2", "2"]
    rs_row = ok(cluster, "get", "rs").splitlines()[1].split()
    assert rs_row[:4] == [rs["metadata"]["name"], "2", "2", "2"]

    # A deleted pod is replaced; scaling down removes one.
    victim = pods[0]["metadata"]["name"]
    ok(cluster, "delete", "pod", victim, "--wait=false")
    cluster.wait_for(
        lambda: len(live_pods(cluster)) == 2
        and victim not in {p["metadata"]["name"] for p in live_pods(cluster)},
        60, message="a replacement pod",
    )  # fmt: skip
    ok(cluster, "scale", "deployment/web", "--replicas=1")
    cluster.wait_for(lambda: len(live_pods(cluster)) == 1, 60, message="one pod after scale")


def test_recreate_rollout_starts_new_pods_after_the_old_are_gone(cluster: LocalCluster) -> None:
    ok(cluster, "apply", "-f", "-", input=json.dumps(deployment(1)))
    ok(cluster, "rollout", "status", "deployment/web", "--timeout=60s")
    (old,) = live_pods(cluster)
    rv: dict[tuple[str, str], int] = {}  # (event type, pod) -> resourceVersion of the event

    def record(ev: Any) -> None:  # hooks nest, so order by resourceVersion, not by arrival
        if ev.storage == ("", "pods") and ev.type in ("ADDED", "DELETED"):
            rv[(ev.type, ev.obj["metadata"]["name"])] = ev.rv

    cluster.store.hooks.append(record)
    ok(cluster, "set", "env", "deployment/web", "X=1")
    out = ok(cluster, "rollout", "status", "deployment/web", "--timeout=60s")
    assert "successfully rolled out" in out
    (new,) = live_pods(cluster)
    assert new["spec"]["containers"][0]["env"] == [{"name": "X", "value": "1"}]
    assert rv[("DELETED", old["metadata"]["name"])] < rv[("ADDED", new["metadata"]["name"])]
    assert len(items(cluster, "replicasets")) == 2  # the old one stays, scaled to 0

    ok(cluster, "delete", "deployment", "web")
    cluster.wait_for(lambda: not items(cluster, "pods") and not items(cluster, "replicasets"),
                     60, message="the Deployment's ReplicaSets and pods collected")  # fmt: skip


def test_services_get_a_cluster_ip_unless_headless(cluster: LocalCluster) -> None:
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a"},
           "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}  # fmt: skip
    headless = {**svc, "metadata": {"name": "b"}, "spec": {**svc["spec"], "clusterIP": "None"}}
    for obj in (svc, headless):
        ok(cluster, "apply", "-f", "-", input=json.dumps(obj))
    by_name = {s["metadata"]["name"]: s["spec"] for s in items(cluster, "services")}
    assert by_name["a"]["clusterIP"].startswith("10.96.")
    assert by_name["a"]["clusterIPs"] == [by_name["a"]["clusterIP"]]
    assert by_name["b"]["clusterIP"] == "None"


def test_off_by_default(local_cluster_factory) -> None:  # type: ignore[no-untyped-def]
    cluster = local_cluster_factory(crds=None)
    ok(cluster, "apply", "-f", "-", input=json.dumps(deployment(1)))
    assert cluster.workloads is None
    assert items(cluster, "replicasets") == [] and items(cluster, "pods") == []
