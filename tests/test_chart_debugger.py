"""The chart's rpcjob-debugger ClusterRole: exactly what rpcjob top/debug/profile need through
the pod proxy (docs/observability.md), bound to nobody by the chart."""

from __future__ import annotations

from helm_chart import Rule, allows, documents, find, request_rule

PROXY = "/api/v1/namespaces/ml-team/pods/job-worker-0:9464/proxy/debug/rpc"


def _rules(role: dict[str, object], namespace: str) -> set[Rule]:
    return {
        Rule(group, res, verb, namespace)
        for rule in role["rules"]  # type: ignore[attr-defined]
        for group in rule["apiGroups"]
        for res in rule["resources"]
        for verb in rule["verbs"]
    }


def test_debugger_role_allows_the_cli_requests_and_nothing_more() -> None:
    docs = documents()
    (role,) = find(docs, "ClusterRole", "rpcjob-debugger")
    rules = _rules(role, "ml-team")  # as a RoleBinding in ml-team grants it
    for method, url in (
        ("GET", "/api/v1/namespaces/ml-team/pods?labelSelector=rpcjob.dev%2Fjob-name%3Dx"),
        ("GET", PROXY + "/top"),
        ("GET", PROXY + "/info"),
        ("POST", PROXY + "/profile?seconds=5"),
    ):
        assert allows(rules, request_rule(method, url)), (method, url)
    assert not allows(rules, request_rule("DELETE", "/api/v1/namespaces/ml-team/pods/p"))
    assert not allows(rules, request_rule("POST", "/api/v1/namespaces/ml-team/pods/p/exec"))
    assert not allows(rules, request_rule("GET", PROXY.replace("ml-team", "other") + "/top"))
    bound = {
        b["roleRef"]["name"] for b in find(docs, "ClusterRoleBinding") + find(docs, "RoleBinding")
    }
    assert "rpcjob-debugger" not in bound  # users bind it per namespace


def test_no_debugger_role_without_rbac() -> None:
    assert not find(
        documents(set_values={"rbac.create": "false"}), "ClusterRole", "rpcjob-debugger"
    )
