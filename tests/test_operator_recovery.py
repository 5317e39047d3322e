"""The real operator on a real cluster (tests/operator_kit.py): a crash mid-reconcile creates no
duplicate pods;
deleting an RpcJob removes its pods and its etcd keys (and the way out when etcd is gone);
an invalid spec gets a condition and a Warning event, never a crash loop."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from operator_kit import SLEEPER, OperatorEnv, job_manifest, operator_env, running_pods, unique

from rpcjob import contract
from rpcjob.etcd import Client
from rpcjob_operator.localexec.etcd_server import EmbeddedEtcd

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]  # whole jobs under the operator


@pytest.fixture
def env() -> Iterator[OperatorEnv]:
    with operator_env(start=False) as e:
        yield e


class CreationsStall:
    """A ResourceQuota of ``n`` pods in the job's namespace: the API server accepts the first
    ``n`` pod creations and refuses the rest (403, exceeded quota; the operator retries them),
    until released — a fault from the real API server, so the operator needs no test hook."""

    def __init__(self, env: OperatorEnv, n: int) -> None:
        self.env, self.name = env, unique("stall")
        env.apply({"apiVersion": "v1", "kind": "ResourceQuota",
                   "metadata": {"name": self.name, "namespace": "default"},
                   "spec": {"hard": {"pods": str(n)}}})  # fmt: skip
        # The quota admits nothing until the quota controller has counted what is there.
        env.wait_for(lambda: self._quota().get("status", {}).get("hard"), 60, "the quota's status")

    def _quota(self) -> dict[str, Any]:
        return dict(self.env.cluster.api.get(
            f"/api/v1/namespaces/default/resourcequotas/{self.name}") or {})  # fmt: skip

    def refused(self) -> int:
        return len([r for r in self.env.cluster.audit.records()
                    if (r.verb, r.resource, r.namespace, r.code) == ("create", "pods", "default",
                                                                     403)])  # fmt: skip

    def release(self) -> None:
        self.env.kubectl("delete", "resourcequota", self.name)


def test_crash_mid_reconcile_creates_no_duplicate_pods(env: OperatorEnv) -> None:
    name = unique("crash")
    # The operator is SIGKILLed in the middle of applying the plan that creates 6 pods: 3 are
    # created, the other 3 creations are failing when it dies.
    stall = CreationsStall(env, 3)
    env.start()
    env.apply(job_manifest(name, replicas=6, max_replicas=8, command=SLEEPER))
    env.wait_for(lambda: stall.refused() >= 3, 60, "the 4th to 6th pod creations to be tried")
    env.kill()
    stall.release()
    assert len(env.pods(name)) == 3
    assert env.status(name)["roles"]["worker"]["indices"] == list(range(6))
    before = {p["metadata"]["name"]: p["metadata"]["uid"] for p in env.pods(name)}

    env.start()
    env.wait_for(lambda: len(running_pods(env, name)) == 6, 60, "all 6 pods")
    env.wait_for(lambda: env.status(name).get("replicas") == 6, 30, "status.replicas 6")
    pods = env.pods(name)
    assert sorted(p["metadata"]["name"] for p in pods) == [f"{name}-worker-{i}" for i in range(6)]
    # Pods that existed before the crash are the same pods (not deleted and recreated).
    now = {p["metadata"]["name"]: p["metadata"]["uid"] for p in pods}
    assert all(now[k] == v for k, v in before.items())
    # Every pod was created exactly once.
    creates = [
        r for r in env.cluster.audit.records()
        if (r.verb, r.resource, r.subresource, r.code) == ("create", "pods", "", 201)
    ]  # fmt: skip
    assert len(creates) == 6, [r.path for r in creates]
    st = env.status(name)
    assert st["restarts"] == 0 and st["roles"]["worker"]["indices"] == list(range(6))
    # The replacement operator wrote the status once per change, not in a loop.
    writes = [r for r in env.cluster.audit.records() if status_write(r, name)]
    assert len(writes) < 20, len(writes)


def status_write(r: Any, job: str) -> bool:
    """A write of the job's status (the kubelets' pod status writes are in the log too)."""
    return (r.resource, r.subresource, r.name) == (contract.PLURAL, "status", job) and r.verb in (
        "patch",
        "update",
    )


def test_delete_job_removes_pods_and_etcd_prefix(env: OperatorEnv) -> None:
    etcd_endpoint = env.etcd_endpoint
    env.start()
    name = unique("del")
    env.apply(job_manifest(name, replicas=2, command=SLEEPER))
    env.wait_for(lambda: len(running_pods(env, name)) == 2, 60, "2 pods")
    job = env.job(name) or {}
    assert contract.FINALIZER in job["metadata"]["finalizers"]
    keys = contract.JobKeys("default", name, job["metadata"]["uid"])
    other = f"/rpcjob/default/{name}x/keep"  # a job whose name starts the same: untouched
    with Client(etcd_endpoint) as c:
        c.put(keys.member("worker_9"), '{"rank": 9}')
        c.put(keys.store + "rpc_prefix_0/x", "y")
        c.put(contract.job_prefix("default", name) + "old-uid/members/w", "{}")
        c.put(other, "1")
        log_before = len(env.log())
        env.kubectl("delete", "rpj", name, "--wait=true", "--timeout=90s")
        assert env.job(name) is None
        # Waiting for the pods to drain is part of a normal deletion: no ERROR in the log.
        deletion_log = env.log()[log_before:]
        assert "job_deleted" in deletion_log, deletion_log
        errors = [ln for ln in deletion_log.splitlines() if "ERROR" in ln]
        assert errors == [], errors
        assert env.pods(name) == []
        assert c.get_prefix(contract.job_prefix("default", name)) == []
        assert c.get(other) is not None
        c.delete(other)
    env.wait_for(
        lambda: env.cluster.api.get(f"/api/v1/namespaces/default/services/{name}") is None,
        30,
        "the Service gone",
    )  # by ownerReference (the garbage collector)


def test_delete_with_etcd_down_waits_then_skip_annotation_releases(env: OperatorEnv) -> None:
    with EmbeddedEtcd() as dead:
        endpoint = dead.endpoint
    # This job's etcd is gone for good: the finalizer retries, the job stays Terminating.
    env.start()
    name = unique("gone")
    manifest = job_manifest(name, replicas=1, command=SLEEPER)
    manifest["spec"]["etcd"] = {"endpoints": [endpoint]}
    env.apply(manifest)
    env.wait_for(lambda: len(running_pods(env, name)) == 1, 60, "1 pod")
    env.wait_event(name, "EtcdUnreachable")
    env.kubectl("delete", "rpj", name, "--wait=false")
    env.wait_for(lambda: not env.pods(name), 60, "pods gone first")
    env.wait_for(lambda: "cannot delete the job's etcd keys" in env.log(), 60, "a retry")
    assert env.job(name) is not None, "the finalizer must hold the job while etcd is down"
    assert "skip-etcd-cleanup=true" in env.log()  # the error names the way out
    env.kubectl("annotate", "rpj", name, f"{contract.ANNOTATION_SKIP_ETCD_CLEANUP}=true")
    env.wait_for(lambda: env.job(name) is None, 60, "the job released")
    assert "etcd cleanup skipped" in env.log()


def test_invalid_spec_condition_event_and_recovery(env: OperatorEnv) -> None:
    env.start()
    name = unique("bad")
    manifest = job_manifest(name, replicas=2, command=SLEEPER)
    # Passes the CRD schema (the pod template preserves unknown fields), fails the operator's
    # own checks: the worker has no command.
    del manifest["spec"]["roles"]["worker"]["template"]["spec"]["containers"][0]["command"]
    env.apply(manifest)
    env.wait_for(lambda: env.condition(name, "Invalid"), 60, "the Invalid condition")
    cond = env.condition(name, "Invalid") or {}
    assert cond["status"] == "True"
    assert "spec.roles.worker.template.spec.containers[0].command" in cond["message"]
    assert env.status(name)["state"] == "Invalid"
    env.wait_event(name, cond["reason"])
    warning = next(e for e in env.events(name) if e["reason"] == cond["reason"])
    assert warning["type"] == "Warning" and "command" in warning["message"]
    assert env.pods(name) == []
    # No crash loop: the operator stays up and healthy; the status is not rewritten in a loop.
    writes = len([r for r in env.cluster.audit.records() if status_write(r, name)])
    deadline = time.monotonic() + 3
    env.wait_for(lambda: time.monotonic() > deadline, 10, "a quiet period")
    assert len([r for r in env.cluster.audit.records() if status_write(r, name)]) == writes
    assert env.proc.poll() is None and env.healthy()

    # Fixing the spec clears the condition and runs the job.
    manifest["spec"]["roles"]["worker"]["template"]["spec"]["containers"][0]["command"] = SLEEPER
    env.apply(manifest)
    env.wait_for(lambda: len(running_pods(env, name)) == 2, 60, "pods after the fix")
    env.wait_for(
        lambda: (env.condition(name, "Invalid") or {}).get("status") == "False", 30, "valid again"
    )
    env.wait_event(name, "SpecValid")
