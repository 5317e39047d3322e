"""Elastic membership through the operator: `kubectl scale` up and down with live joins and
leaves, a killed worker pod, a killed first member (rank 0), and an operator restart.

The workload (jobs.ELASTIC_APP) runs until deleted and logs which members answer an RPC, so each
scenario checks both what the operator reports (status.members, role counts, restarts) and what
the torch group itself sees (a surviving worker reaches exactly the expected members).
"""

from __future__ import annotations

from typing import Any

import pytest

from e2e.backends import Cluster, OwnOperator
from rpcjob import contract

from .jobs import elastic_job, members, pod_by_index, wait_group, workers

pytestmark = pytest.mark.slow  # a cluster with the chart, whole jobs


def start(cluster: Cluster, name: str, replicas: int, max_replicas: int = 4) -> None:
    cluster.apply(elastic_job(name, replicas, max_replicas))
    wait_group(cluster, name, workers(replicas), observer=f"{name}-worker-0")


def test_kubectl_scale_up_and_down_live(cluster: Cluster) -> None:
    start(cluster, "elastic", 2)
    first = pod_by_index(cluster, "elastic", 0)["metadata"]["uid"]

    out = cluster.kubectl("scale", "rpj/elastic", "--replicas=3").stdout
    assert out.strip() == f"{contract.SINGULAR}.{contract.GROUP}/elastic scaled"
    status = wait_group(cluster, "elastic", workers(3), observer="elastic-worker-0")
    assert status["replicas"] == 3 and status["ready"] == "3/3"
    # A live join: the running members were not restarted.
    assert pod_by_index(cluster, "elastic", 0)["metadata"]["uid"] == first
    assert status.get("restarts", 0) == 0

    cluster.kubectl("scale", "rpj/elastic", "--replicas=1")
    # Victims are the highest indices; they drain and leave, the survivor keeps running.
    status = wait_group(cluster, "elastic", workers(1), observer="elastic-worker-0")
    cluster.wait_for(lambda: len(cluster.pods("elastic")) == 1, 120, "the drained pods to go")
    assert pod_by_index(cluster, "elastic", 0)["metadata"]["uid"] == first
    assert status["replicas"] == 1 and status.get("restarts", 0) == 0
    assert status["roles"]["worker"]["failed"] == 0  # a drained member is not a failure


def _kill_and_heal(
    cluster: Cluster, name: str, index: int, observer: str, force: bool
) -> dict[str, Any]:
    """Delete one member's pod; it is replaced and the group of 3 heals around it.

    ``force=False``: `kubectl delete pod` (SIGTERM: the worker drains and leaves, then the pod
    goes); the operator sees it terminating and counts a restart. ``force=True``: `kubectl delete
    pod --grace-period=0 --force` (the pod object is gone at once and its processes are killed):
    the group must evict the crashed member and take in its replacement.
    """
    victim = pod_by_index(cluster, name, index)
    old_uid = victim["metadata"]["uid"]
    cluster.delete_pod(victim["metadata"]["name"], force=force)

    def replaced() -> bool:
        pods = cluster.live_pods(name)
        mine = [p for p in pods if p["metadata"]["labels"][contract.LABEL_INDEX] == str(index)]
        return len(mine) == 1 and mine[0]["metadata"]["uid"] != old_uid

    cluster.wait_for(replaced, 120, f"a replacement pod for {name} worker {index}")
    wait_group(cluster, name, workers(3), observer=observer)
    # A force-deleted pod is never seen terminating: the planner notices its slot's pod uid
    # vanished (reason Vanished) and counts the restart all the same.

    def counted() -> dict[str, Any] | None:
        status = cluster.job_status(name)
        return status if status.get("restarts") == 1 else None

    return cluster.wait_for(counted, 60, "the restart to be counted")


def test_deleted_worker_pod_is_replaced_and_counted(cluster: Cluster) -> None:
    start(cluster, "kill", 3)
    status = _kill_and_heal(cluster, "kill", 2, observer="kill-worker-0", force=False)
    failures = status.get("failures") or []
    assert [f["pod"] for f in failures] == ["kill-worker-2"], failures
    assert status["ready"] == "3/3"


def test_killed_first_member_rank_0_heals(cluster: Cluster) -> None:
    start(cluster, "rank0", 3)
    ranks = {m["rank"]: m for m in cluster.job_status("rank0")["members"]}
    assert 0 in ranks, ranks
    first = ranks[0]
    index = int(contract.parse_worker_name(first["name"])[1])
    observer = pod_by_index(cluster, "rank0", (index + 1) % 3)["metadata"]["name"]
    _kill_and_heal(cluster, "rank0", index, observer=observer, force=True)
    # The replacement joined as a new incarnation of the same worker name.
    assert first["name"] in members(cluster, "rank0")


def test_operator_restart_mid_scale_creates_no_duplicates(own_operator: OwnOperator) -> None:
    # An operator of its own: restarting the session's shared one would pause the other
    # worker's scenarios.
    cluster = own_operator()
    start(cluster, "oprestart", 2)
    before = {p["metadata"]["name"]: p["metadata"]["uid"] for p in cluster.live_pods("oprestart")}

    cluster.kubectl("scale", "rpj/oprestart", "--replicas=3")
    cluster.restart_operator()  # while the scale-up is being reconciled (or just after)

    status = wait_group(cluster, "oprestart", workers(3), observer="oprestart-worker-0")
    pods = cluster.pods("oprestart")
    indices = [p["metadata"]["labels"][contract.LABEL_INDEX] for p in pods]
    assert sorted(indices) == ["0", "1", "2"], [p["metadata"]["name"] for p in pods]
    after = {p["metadata"]["name"]: p["metadata"]["uid"] for p in pods}
    for name, uid in before.items():
        assert after[name] == uid, f"{name} was recreated across the operator restart"
    assert status.get("restarts", 0) == 0

    # The new operator keeps reconciling: a scale-down after the restart is applied.
    cluster.kubectl("scale", "rpj/oprestart", "--replicas=2")
    wait_group(cluster, "oprestart", workers(2), observer="oprestart-worker-0")
