"""Deleting an RpcJob cleans up everything it owned: pods, Service, NetworkPolicy (owner
references) and its etcd prefix (the operator's finalizer), read back with rpcjob.etcd.Client."""

from __future__ import annotations

import pytest

from e2e.backends import Cluster
from rpcjob import contract

from .jobs import elastic_job, wait_group, workers

pytestmark = pytest.mark.slow  # a cluster with the chart, whole jobs


def etcd_keys(cluster: Cluster, prefix: str) -> list[str]:
    with cluster.etcd() as client:
        return sorted(kv.key.decode() for kv in client.get_prefix(prefix))


def test_delete_job_removes_pods_objects_and_etcd_prefix(cluster: Cluster) -> None:
    cluster.apply(elastic_job("doomed", replicas=2))
    wait_group(cluster, "doomed", workers(2), observer="doomed-worker-0")
    job = cluster.job("doomed")
    assert job is not None
    assert contract.FINALIZER in job["metadata"].get("finalizers", [])
    selector = f"{contract.LABEL_JOB_NAME}=doomed"
    assert cluster.objects("services", selector), "the job's headless Service is missing"
    assert cluster.objects("networkpolicies", selector), "the job's NetworkPolicy is missing"
    prefix = contract.job_prefix(cluster.namespace, "doomed")
    keys = etcd_keys(cluster, prefix)
    uid = job["metadata"]["uid"]
    members = contract.JobKeys(cluster.namespace, "doomed", uid).members
    assert [k for k in keys if k.startswith(members)], keys

    out = cluster.kubectl("delete", "rpj", "doomed", "--wait=false").stdout
    # kubectl 1.31+ adds " from <namespace> namespace".
    assert out.strip() in (
        f'{contract.SINGULAR}.{contract.GROUP} "doomed" deleted',
        f'{contract.SINGULAR}.{contract.GROUP} "doomed" deleted from {cluster.namespace} namespace',
    )

    cluster.wait_for(lambda: cluster.job("doomed") is None, 120, "the RpcJob to be gone")
    cluster.wait_for(lambda: not cluster.pods("doomed"), 120, "the job's pods to be gone")
    cluster.wait_for(lambda: not cluster.objects("services", selector)
                     and not cluster.objects("networkpolicies", selector),
                     60, "the Service and NetworkPolicy to be garbage-collected")  # fmt: skip
    # Keys bound to a sidecar's lease may outlive their pod by the lease TTL; anything else
    # left under the prefix is a leak and never goes.
    cluster.wait_for(lambda: etcd_keys(cluster, prefix) == [], 3 * contract.DEFAULT_LEASE_TTL,
                     f"etcd prefix {prefix} to be empty")  # fmt: skip
