"""The chart's RBAC: least privilege in both scopes, and the rule helpers the e2e suite uses."""

from __future__ import annotations

from typing import Any

import pytest
from helm_chart import (
    CHART,
    CI_VALUES,
    DEFAULT_NAMESPACE,
    Rule,
    allows,
    audit_rule,
    documents,
    find,
    operator_rules,
    rbac_rules,
    request_rule,
    uncovered,
)

OPERATOR_SA = "rpcjob-operator"
NAMESPACED = CHART / "ci" / "namespaced-values.yaml"

# Exactly what the operator (kopf + our handlers) needs on a job's namespace.
JOB_RULES = {
    # delete: finished jobs past runPolicy.ttlSecondsAfterFinished
    ("rpcjob.dev", "rpcjobs"): {
        "get",
        "list",
        "watch",
        "patch",
        "update",
        "delete",
    },
    ("rpcjob.dev", "rpcjobs/status"): {"get", "patch", "update"},
    ("", "pods"): {"get", "list", "watch", "create", "delete", "patch"},
    ("", "services"): {"get", "list", "watch", "create", "patch", "delete"},
    ("networking.k8s.io", "networkpolicies"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "events"): {"create", "patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
}


def _by_resource(rules: set[Rule], namespace: str | None) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for r in rules:
        if r.namespace == namespace:
            out.setdefault((r.api_group, r.resource), set()).add(r.verb)
    return out


@pytest.mark.parametrize("values", [(), *((p,) for p in CI_VALUES)])
def test_no_wildcards_and_no_secret_access(values: tuple[Any, ...]) -> None:
    docs = documents(values)
    for role in find(docs, "ClusterRole") + find(docs, "Role"):
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], f"{role['metadata']['name']}: wildcard {field}"
            assert "secrets" not in rule["resources"], "pods mount etcd Secrets by reference"
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])
            assert "nonResourceURLs" not in rule


def test_cluster_scope_grants_exactly_the_operator_rules() -> None:
    rules = rbac_rules(documents(), OPERATOR_SA, DEFAULT_NAMESPACE)
    assert _by_resource(rules, None) == {
        **JOB_RULES,
        ("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"},
        ("kopf.dev", "clusterkopfpeerings"): {"get", "list", "watch", "patch"},
    }
    assert {r.namespace for r in rules} == {None}


def test_namespace_scope_uses_roles_per_namespace() -> None:
    docs = documents([NAMESPACED])
    roles = find(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["ml-batch", "ml-team"]
    bindings = find(docs, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["ml-batch", "ml-team"]
    rules = rbac_rules(docs, OPERATOR_SA, DEFAULT_NAMESPACE)
    for ns in ("ml-team", "ml-batch"):
        assert _by_resource(rules, ns) == {
            **JOB_RULES,
            ("kopf.dev", "kopfpeerings"): {"get", "list", "watch", "patch"},
        }
    # Cluster-scoped remainder: only the CRD read and kopf's namespace observation.
    assert _by_resource(rules, None) == {
        ("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"},
        ("", "namespaces"): {"list", "watch"},
    }
    # Nothing on pods outside the watched namespaces.
    assert not allows(rules, Rule("", "pods", "create", "default"))
    assert allows(rules, Rule("", "pods", "create", "ml-team"))


def test_job_pods_can_read_nodes_and_nothing_else() -> None:
    for values, namespaces in (
        ((), [DEFAULT_NAMESPACE]),
        ((NAMESPACED,), ["ml-team", "ml-batch"]),
    ):
        docs = documents(values)
        sa_name = "rpcjob-worker" if values else "rpcjob-job"
        accounts = [
            sa["metadata"]["namespace"]
            for sa in find(docs, "ServiceAccount")
            if sa["metadata"]["name"] == sa_name
        ]
        assert sorted(accounts) == sorted(namespaces)
        for ns in namespaces:
            assert rbac_rules(docs, sa_name, ns) == {Rule("", "nodes", "get", None)}


def test_job_service_account_extra_namespaces() -> None:
    docs = documents(set_values={"jobs.serviceAccount.namespaces[0]": "research"})
    assert rbac_rules(docs, "rpcjob-job", "research") == {Rule("", "nodes", "get", None)}


def test_rbac_create_false_renders_no_rbac() -> None:
    docs = documents(set_values={"rbac.create": "false"})
    for kind in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"):
        assert not find(docs, kind)


@pytest.mark.parametrize(
    ("method", "url", "expected"),
    [
        ("GET", "/api/v1/namespaces/ns/pods", Rule("", "pods", "list", "ns")),
        ("GET", "/api/v1/namespaces/ns/pods?watch=true&resourceVersion=5",
         Rule("", "pods", "watch", "ns")),
        ("GET", "/api/v1/namespaces/ns/pods/p-0", Rule("", "pods", "get", "ns")),
        ("POST", "/api/v1/namespaces/ns/pods", Rule("", "pods", "create", "ns")),
        ("DELETE", "/api/v1/namespaces/ns/pods/p-0", Rule("", "pods", "delete", "ns")),
        ("DELETE", "/api/v1/namespaces/ns/pods", Rule("", "pods", "deletecollection", "ns")),
        ("PATCH", "/apis/rpcjob.dev/v1alpha1/namespaces/ns/rpcjobs/j/status",
         Rule("rpcjob.dev", "rpcjobs/status", "patch", "ns")),
        ("PUT", "/apis/rpcjob.dev/v1alpha1/namespaces/ns/rpcjobs/j",
         Rule("rpcjob.dev", "rpcjobs", "update", "ns")),
        ("GET", "/apis/rpcjob.dev/v1alpha1/rpcjobs?watch=1",
         Rule("rpcjob.dev", "rpcjobs", "watch", None)),
        ("GET", "/api/v1/nodes/n1", Rule("", "nodes", "get", None)),
        ("GET", "/api/v1/namespaces", Rule("", "namespaces", "list", None)),
        ("GET", "/api/v1/namespaces/ml-team", Rule("", "namespaces", "get", None)),
        ("PATCH", "/apis/kopf.dev/v1/clusterkopfpeerings/rpcjob",
         Rule("kopf.dev", "clusterkopfpeerings", "patch", None)),
        ("POST", "/apis/events.k8s.io/v1/namespaces/ns/events",
         Rule("events.k8s.io", "events", "create", "ns")),
        ("GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
         Rule("apiextensions.k8s.io", "customresourcedefinitions", "list", None)),
    ],
)  # fmt: skip
def test_request_rule(method: str, url: str, expected: Rule) -> None:
    assert request_rule(method, url) == expected


@pytest.mark.parametrize(
    ("method", "url", "message"),
    [
        ("GET", "/version", "is not a resource request"),
        ("GET", "/apis/rpcjob.dev/v1alpha1", "names no resource"),
        ("OPTIONS", "/api/v1/pods", "no RBAC verb for HTTP method 'OPTIONS'"),
    ],
)
def test_request_rule_rejects_non_resource_requests(method: str, url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        request_rule(method, url)


def test_allows_honours_scope_and_wildcards() -> None:
    granted = {Rule("", "pods", "get", "a"), Rule("rpcjob.dev", "*", "list", None)}
    assert allows(granted, Rule("", "pods", "get", "a"))
    assert not allows(granted, Rule("", "pods", "get", "b"))
    assert not allows(granted, Rule("", "pods", "delete", "a"))
    assert allows(granted, Rule("rpcjob.dev", "rpcjobs", "list", "anywhere"))
    assert not allows(granted, Rule("", "rpcjobs", "list", None))


def test_cluster_scope_covers_the_operator_request_sequence() -> None:
    """The API calls kopf and the operator make for one job, as the e2e scenario records them."""
    rules = rbac_rules(documents(), OPERATOR_SA, DEFAULT_NAMESPACE)
    calls = [
        ("GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"),
        ("GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions?watch=true"),
        ("GET", "/apis/kopf.dev/v1/clusterkopfpeerings?watch=true"),
        ("PATCH", "/apis/kopf.dev/v1/clusterkopfpeerings/rpcjob"),
        ("GET", "/apis/rpcjob.dev/v1alpha1/rpcjobs?watch=true"),
        ("PATCH", "/apis/rpcjob.dev/v1alpha1/namespaces/team/rpcjobs/j"),
        ("POST", "/api/v1/namespaces/team/services"),
        ("POST", "/apis/networking.k8s.io/v1/namespaces/team/networkpolicies"),
        ("POST", "/api/v1/namespaces/team/pods"),
        ("GET", "/api/v1/pods?watch=true&labelSelector=app.kubernetes.io%2Fmanaged-by"),
        ("DELETE", "/api/v1/namespaces/team/pods/j-worker-3"),
        ("PATCH", "/apis/rpcjob.dev/v1alpha1/namespaces/team/rpcjobs/j/status"),
        ("POST", "/api/v1/namespaces/team/events"),
    ]
    missing = [c for c in calls if not allows(rules, request_rule(*c))]
    assert not missing
    assert not allows(rules, request_rule("GET", "/api/v1/namespaces/team/secrets/etcd"))
    # The TTL (runPolicy.ttlSecondsAfterFinished) deletes finished jobs.
    assert allows(rules, request_rule("DELETE", "/apis/rpcjob.dev/v1alpha1/namespaces/t/rpcjobs/j"))
    assert not allows(rules, request_rule("DELETE", "/api/v1/namespaces/t/secrets/etcd"))


def test_e2e_helpers_operator_rules_and_uncovered() -> None:
    rules = operator_rules()
    assert rules == rbac_rules(documents(), OPERATOR_SA, DEFAULT_NAMESPACE)
    other = operator_rules(release="prod", namespace="ops")
    assert Rule("", "pods", "create", None) in other
    recorded = [
        audit_rule("patch", "rpcjob.dev", "rpcjobs", "status", "team"),
        audit_rule("watch", "", "pods"),
        audit_rule("get", "", "secrets", "", "team"),
        audit_rule("get", "", "secrets", "", "team"),
    ]
    assert uncovered(rules, recorded) == [Rule("", "secrets", "get", "team")]
