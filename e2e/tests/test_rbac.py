"""RBAC coverage: every API call the operator made while running a job through its life (create,
scale up and down, a deleted pod, deletion) is allowed by the chart's roles for the operator's
ServiceAccount, in cluster scope (the default) and in namespace scope (Roles only).

Cluster backend only: it reads the real API server's audit log (kind keeps no audit log by
default; there a missing permission fails the other scenarios with a 403). The namespace-scope
release is the test's own (``own_operator``): the session's shared operator serves every
namespace in cluster scope."""

from __future__ import annotations

from typing import Any

import pytest

from e2e.backends import Cluster, OwnOperator
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
    backend: Any = cluster.backend
    rules = operator_rules(values_files, set_values=backend.chart_values, release=backend.release,
                           namespace=backend.operator_namespace)  # fmt: skip
    assert uncovered(rules, needed) == []


def test_operator_api_calls_are_covered_by_the_chart_roles(cluster: Cluster) -> None:
    exercise_and_check(cluster, [])


NAMESPACED = str(CHART / "ci" / "namespaced-values.yaml")


def test_namespace_scope_operator_calls_are_covered_by_its_roles(
    own_operator: OwnOperator,
) -> None:
    # The chart in namespace scope (Roles in two namespaces only): a job in the first.
    cluster = own_operator(values_files=[NAMESPACED], extra_namespaces=1)
    exercise_and_check(cluster, [NAMESPACED])
