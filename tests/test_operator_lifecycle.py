"""The real operator on the local cluster with real sidecars and torch workers: apply -> pods
-> group joined -> status; scale up and down through the scale subresource (kubectl scale)
with live join/leave; a crashed worker is replaced and counted (restarts, exit code)."""

from __future__ import annotations

import pytest
from operator_kit import (
    OperatorEnv,
    job_manifest,
    joined,
    running_operator,
    running_pods,
    unique,
)

from rpcjob import contract

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # whole jobs under the operator


env = pytest.fixture(running_operator, name="env")


def test_apply_join_scale_and_replace(env: OperatorEnv) -> None:
    name = unique("life")
    env.apply(job_manifest(name, replicas=2, max_replicas=4, min_replicas=1))

    # apply -> pods (named per slot, owned by the job, with the injected sidecar)
    env.wait_for(
        lambda: running_pods(env, name) == [f"{name}-worker-0", f"{name}-worker-1"], 60, "two pods"
    )
    pod = env.pod(f"{name}-worker-0") or {}
    assert pod["metadata"]["ownerReferences"][0]["name"] == name
    assert pod["spec"]["initContainers"][-1]["name"] == contract.SIDECAR_CONTAINER

    # -> the group formed: members from etcd with distinct ranks, conditions and counts
    env.wait_for(lambda: joined(env, name, 2), 240, "2 members joined")
    env.wait_for(
        lambda: (env.condition(name, "Running") or {}).get("status") == "True", 30, "Running=True"
    )
    st = env.status(name)
    members = st["members"]
    assert sorted(m["name"] for m in members) == ["worker_0", "worker_1"]
    assert len({m["rank"] for m in members}) == 2
    assert {m["pod"] for m in members} == {f"{name}-worker-0", f"{name}-worker-1"}
    assert st["state"] == "Running"
    assert st["replicas"] == 2 and st["ready"] == "2/2"
    assert st["selector"] == f"{contract.LABEL_JOB_NAME}={name},{contract.LABEL_ROLE}=worker"
    assert st["observedGeneration"] == (env.job(name) or {})["metadata"]["generation"]
    assert (env.condition(name, "Created") or {}).get("status") == "True"
    env.wait_event(name, "GroupFormed")
    # The printer columns read the same status.
    table = env.kubectl("get", "rpj", name)
    assert "2/2" in table and "Running" in table, table

    # scale up through the scale subresource: a third worker joins the live group
    env.kubectl("scale", f"rpj/{name}", "--replicas=3")
    env.wait_for(lambda: joined(env, name, 3), 240, "3 members after scale up")
    env.wait_event(name, "ScaledUp")
    ranks_before = {m["name"]: m["rank"] for m in env.status(name)["members"]}

    # scale down: the highest index drains and leaves; the others keep their ranks
    env.kubectl("scale", f"rpj/{name}", "--replicas=2")
    env.wait_for(
        lambda: joined(env, name, 2) and len(env.pods(name)) == 2, 120, "2 members after scale down"
    )
    st = env.status(name)
    assert {m["name"]: m["rank"] for m in st["members"]} == {
        k: v for k, v in ranks_before.items() if k != "worker_2"
    }
    env.wait_event(name, "ScaledDown")
    assert st["restarts"] == 0 and st["failedPods"] == 0

    # a worker crashes (SIGKILL): its pod fails with exit code 137, is replaced and counted
    victim = f"{name}-worker-1"
    old_uid = (env.pod(victim) or {})["metadata"]["uid"]
    env.kill_worker(victim)
    env.wait_for(lambda: env.status(name).get("restarts") == 1, 60, "restart counted")
    failure = env.status(name)["failures"][-1]
    assert failure["pod"] == victim and failure["uid"] == old_uid
    assert failure["exitCode"] == 137
    env.wait_for(
        lambda: (
            (env.pod(victim) or {"metadata": {"uid": old_uid}})["metadata"]["uid"] != old_uid
            and joined(env, name, 2)
        ),
        240,
        "the replacement joined",
    )
    env.wait_event(name, "PodFailed")
    assert env.status(name)["failedPods"] == 1

    # deleting a pod by hand: replaced, counted as a restart
    env.kubectl("delete", "pod", f"{name}-worker-0", "--wait=false")
    env.wait_for(lambda: env.status(name).get("restarts") == 2, 60, "deletion counted")
    env.wait_for(lambda: joined(env, name, 2), 240, "the group is whole again")
    env.wait_event(name, "PodDeleted")

    metrics = env.metrics()
    assert "rpcjob_operator_pods_created_total" in metrics
    assert 'rpcjob_operator_jobs{state="Running"} 1.0' in metrics
