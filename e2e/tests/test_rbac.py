"""RBAC coverage: every API call the operator made while running a job through its life (create,
scale up and down, a deleted pod, deletion) is allowed by the chart's roles for the operator's
ServiceAccount, in cluster scope (the default) and in namespace scope (Roles only).

Local backend only: it reads the emulated API server's audit log (kind keeps no audit log by
default; there a missing permission fails the other scenarios with a 403)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.backends import Backend, Cluster
from e2e.backends.cluster import ClusterBackend
from e2e.backends.local import LocalBackend
from tests.helm_chart import CHART, audit_rule, operator_rules, uncovered

from .jobs import elastic_job, pod_by_index, wait_group, workers

pytestmark = pytest.mark.slow  # a cluster with the chart, whole jobs

# The operator's clients: kopf's own (watches, peering, handler patches, events) and rpcjob's
# (pods, services, network policies, status) — both in the operator process.
OPERATOR_AGENTS = ("kopf/", "rpcjob-operator/")
DISCOVERY_PREFIXES = ("/api", "/apis", "/version", "/openapi")


def exercise_and_check(cluster: Cluster, values_files: list[str]) -> None:
    """Run a job through its life, then check the operator's calls against the chart's roles."""
    records = cluster.backend.audit_records()
    if records is None:
        pytest.skip(f"the {cluster.backend.name} backend keeps no audit log of API calls")
    cluster.apply(elastic_job("rbac", replicas=1, max_replicas=3))
    wait_group(cluster, "rbac", workers(1))
    cluster.kubectl("scale", "rpj/rbac", "--replicas=2")
    wait_group(cluster, "rbac", workers(2))
    cluster.delete_pod(pod_by_index(cluster, "rbac", 1)["metadata"]["name"])
    cluster.wait_for(lambda: cluster.job_status("rbac").get("restarts") == 1, 120,
                     "the deleted pod to be counted")  # fmt: skip
    wait_group(cluster, "rbac", workers(2))
    cluster.kubectl("scale", "rpj/rbac", "--replicas=1")
    wait_group(cluster, "rbac", workers(1))
    cluster.kubectl("delete", "rpj", "rbac")
    cluster.wait_for(lambda: not cluster.pods("rbac"), 120, "the job's pods to go")

    records = [r for r in cluster.backend.audit_records() or []
               if r.user_agent.startswith(OPERATOR_AGENTS)]  # fmt: skip
    resources = [r for r in records if r.resource]
    # Non-resource requests are discovery only (allowed to every authenticated user).
    assert all(r.path.startswith(DISCOVERY_PREFIXES) for r in records if not r.resource)
    # The operator did reach every kind of object it manages.
    touched = {(r.group, r.resource, r.subresource, r.verb) for r in resources}
    for call in [
        ("", "pods", "", "create"),
        ("", "pods", "", "delete"),
        ("rpcjob.dev", "rpcjobs", "status", "patch"),
        ("", "events", "", "create"),
    ]:
        assert call in touched, sorted(touched)

    needed = [audit_rule(r.verb, r.group, r.resource, r.subresource, r.namespace)
              for r in resources]  # fmt: skip
    values = getattr(cluster.backend, "chart_values", {})
    assert uncovered(operator_rules(values_files, set_values=values), needed) == []


def test_operator_api_calls_are_covered_by_the_chart_roles(cluster: Cluster) -> None:
    exercise_and_check(cluster, [])


NAMESPACED = str(CHART / "ci" / "namespaced-values.yaml")


@pytest.fixture
def namespaced_cluster(e2e_backend: Backend) -> Iterator[Cluster]:
    """The chart in namespace scope (Roles in ml-team and ml-batch only), on its own local
    cluster: a job in ml-team, the operator watching just those two namespaces."""
    if e2e_backend.audit_records() is None:
        pytest.skip(f"the {e2e_backend.name} backend keeps no audit log of API calls")
    workdir = Path(tempfile.mkdtemp(prefix="e2e-"))
    # The same kind of backend as the module's (the real control plane or the emulator).
    kind = type(e2e_backend) if isinstance(e2e_backend, ClusterBackend) else LocalBackend
    backend = kind(workdir, values_files=[NAMESPACED], namespaces=["ml-team", "ml-batch"])
    try:
        backend.start()
        yield Cluster(backend, "ml-team")
    finally:
        backend.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def test_namespace_scope_operator_calls_are_covered_by_its_roles(
    namespaced_cluster: Cluster,
) -> None:
    exercise_and_check(namespaced_cluster, [NAMESPACED])
