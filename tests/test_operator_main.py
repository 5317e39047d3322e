"""rpcjob-operator's command line and process: usage errors, namespace scope, liveness and
Prometheus metrics (the real operator on the local cluster)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from operator_kit import SLEEPER, OperatorEnv, job_manifest, operator_env, running_pods, unique

from rpcjob import contract
from rpcjob_operator.main import cli

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]  # whole jobs under the operator
REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--all-namespaces", "--namespace", "a"], "--all-namespaces and --namespace exclude"),
        (["--standalone", "--peering", "p"], "--standalone and --peering exclude each other"),
        (["--resync", "0"], "Invalid value for --resync: must be > 0"),
        (["--priority", "-1"], "Invalid value for '--priority': -1 is not in the range"),
        (["--peering-lifetime", "1"], "Invalid value for '--peering-lifetime': 1 is not in"),
        (
            ["--watch-server-timeout", "60", "--watch-client-timeout", "30"],
            "must be larger than --watch-server-timeout (60.0)",
        ),
    ],
)
def test_usage_errors_name_the_flags(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert message in result.output


def test_help_lists_the_chart_flags() -> None:
    out = CliRunner().invoke(cli, ["--help"]).output
    for flag in ("--peering", "--priority", "--peering-lifetime", "--liveness",
                 "--all-namespaces", "--namespace", "--standalone", "--metrics",
                 "--watch-server-timeout"):  # fmt: skip
        assert flag in out


@pytest.fixture
def env(etcd_endpoint: str) -> Iterator[OperatorEnv]:
    with operator_env(etcd_endpoint, start=False) as e:
        yield e


def test_namespace_scope_liveness_and_metrics(env: OperatorEnv) -> None:
    env.cluster.create_namespace("team-a")
    env.cluster.create_namespace("team-b")
    # Namespace scope, as the chart runs it with rbac.scope=namespace.
    env.start("--namespace=team-a", all_namespaces=False)
    mine, theirs = unique("mine"), unique("theirs")
    env.apply(job_manifest(mine, replicas=2, command=SLEEPER, namespace="team-a"))
    env.apply(job_manifest(theirs, replicas=2, command=SLEEPER, namespace="team-b"))
    env.wait_for(lambda: len(running_pods(env, mine, "team-a")) == 2, 60, "team-a pods")
    env.wait_for(lambda: env.status(mine, "team-a").get("replicas") == 2, 30, "team-a status")
    assert env.pods(theirs, "team-b") == [] and env.status(theirs, "team-b") == {}
    assert env.job(theirs, "team-b")["metadata"].get("finalizers") in (None, [])  # type: ignore[index]

    assert env.healthy()
    # Status writes of RpcJobs only (the kubelets write pod statuses through the same server).
    job_status = (contract.PLURAL, "status")
    patches_before = len([r for r in env.cluster.audit.records()
                          if (r.resource, r.subresource) == job_status])  # fmt: skip
    text = env.metrics()
    patches_after = len([r for r in env.cluster.audit.records()
                         if (r.resource, r.subresource) == job_status])  # fmt: skip
    for line in (
        "rpcjob_operator_pods_created_total 2.0",
        'rpcjob_operator_jobs{state="Pending"} 1.0',
        'rpcjob_operator_reconciles_total{result="ok"}',
        "rpcjob_operator_reconcile_duration_seconds_count",
        "rpcjob_operator_status_writes_total",
        "rpcjob_operator_errors_total",
    ):
        assert line in text, line
    # At most one status write per cycle, and only when the status changed.
    values = {
        line.split()[0]: float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("rpcjob_operator_") and not line.startswith("#")
    }
    cycles = values['rpcjob_operator_reconciles_total{result="ok"}']
    writes = values["rpcjob_operator_status_writes_total"]
    # (The pods keep changing, so the audit is read just before and after the metrics; one
    # write may be in flight: recorded by the API server, not yet counted by the operator.)
    assert 1 <= writes <= cycles and patches_before - 1 <= writes <= patches_after
    # Only the operator's own calls, attributable in the audit log by its user agents.
    agents = {r.user_agent.split("/")[0] for r in env.cluster.audit.records()}
    assert {"rpcjob-operator", "kopf"} <= agents


def test_peering_a_higher_priority_operator_takes_over(env: OperatorEnv) -> None:
    # The chart's kopf peering CRDs and its ClusterKopfPeering (cluster scope).
    env.cluster.apply_file(REPO / "charts" / "rpcjob" / "crds" / "kopf-peerings.yaml")
    env.cluster.apply_docs(
        [
            {
                "apiVersion": "kopf.dev/v1",
                "kind": "ClusterKopfPeering",
                "metadata": {"name": "rpcjob"},
            }
        ]
    )
    env.start("--peering=rpcjob", "--priority=0", standalone=False)
    name = unique("peer")
    env.apply(job_manifest(name, replicas=1, command=SLEEPER))
    env.wait_for(lambda: env.status(name).get("replicas") == 1, 60, "the first operator's work")

    second = OperatorEnv(env.cluster, env.etcd_endpoint)
    second.start("--peering=rpcjob", "--priority=100", standalone=False, log_name="second.log")
    try:
        env.wait_for(lambda: "Pausing operations in favour of" in env.log(), 60, "the pause")
        paused_at = len(env.log())
        env.kubectl("scale", f"rpj/{name}", "--replicas=2")
        env.wait_for(lambda: env.status(name).get("replicas") == 2, 60, "scaled by the second")
        assert "POST /api/v1/namespaces/default/pods" in second.log()
        assert "POST /api/v1/namespaces/default/pods" not in env.log()[paused_at:]
    finally:
        second.stop()
