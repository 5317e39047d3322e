"""Admission: invalid RpcJobs are rejected by the API server with the CRD's own messages (schema
and CEL), and `kubectl get rpj` prints the CRD's printer columns. No operator involved."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from e2e.backends import Cluster
from rpcjob import contract

from .jobs import elastic_job, printer_table

pytestmark = [pytest.mark.e2e_no_operator, pytest.mark.slow]  # a cluster with the chart


def bad_role_name(job: dict[str, Any]) -> None:
    job["spec"]["roles"]["Bad-Role"] = copy.deepcopy(job["spec"]["roles"]["worker"])


def min_above_replicas(job: dict[str, Any]) -> None:
    job["spec"]["roles"]["worker"]["minReplicas"] = 3


def above_max(job: dict[str, Any]) -> None:
    job["spec"]["roles"]["worker"]["replicas"] = 9


def no_worker_role(job: dict[str, Any]) -> None:
    job["spec"]["roles"] = {"learner": job["spec"]["roles"].pop("worker")}


def unknown_success_role(job: dict[str, Any]) -> None:
    job["spec"]["successPolicy"] = {"role": "driver"}


def unknown_field(job: dict[str, Any]) -> None:
    job["spec"]["replicaz"] = 3


CASES: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("role-name", bad_role_name, "role names must be lowercase letters and digits"),
    ("min-replicas", min_above_replicas, "minReplicas must be <= replicas"),
    ("max-replicas", above_max, "replicas must be <= maxReplicas"),
    ("worker-role", no_worker_role, "a role named 'worker' is required"),
    (
        "success-role",
        unknown_success_role,
        "spec.successPolicy.role must name a role in spec.roles",
    ),
    ("unknown-field", unknown_field, 'unknown field "spec.replicaz"'),
]


@pytest.mark.parametrize(("mutate", "message"), [(m, msg) for _, m, msg in CASES],
                         ids=[case for case, _, _ in CASES])  # fmt: skip
def test_invalid_rpcjob_is_rejected_with_the_crd_message(
    cluster: Cluster, mutate: Callable[[dict[str, Any]], None], message: str
) -> None:
    job = elastic_job("bad", replicas=2)
    mutate(job)
    proc = cluster.kubectl("apply", "-f", "-", input=_yaml(job), check=False)
    assert proc.returncode != 0, proc.stdout
    assert message in proc.stderr
    assert 'RpcJob "bad" is invalid' in proc.stderr or "strict decoding error" in proc.stderr
    assert cluster.job("bad") is None  # nothing was stored


def test_scale_beyond_max_replicas_is_rejected(cluster: Cluster) -> None:
    cluster.apply(elastic_job("capped", replicas=1, max_replicas=2))
    proc = cluster.kubectl("scale", "rpj/capped", "--replicas=3", check=False)
    assert proc.returncode != 0
    assert "replicas must be <= maxReplicas" in proc.stderr
    job = cluster.job("capped")
    assert job is not None and job["spec"]["roles"]["worker"]["replicas"] == 1


def test_kubectl_get_rpj_prints_the_printer_columns(cluster: Cluster) -> None:
    cluster.apply(elastic_job("cols", replicas=1))
    table = printer_table(cluster)
    assert table[0] == ["NAME", "READY", "RESTARTS", "STATE", "AGE"]
    assert table[1][0] == "cols"
    wide = cluster.kubectl("get", contract.PLURAL, "cols", "-o", "wide").stdout.splitlines()
    assert wide[0].split()[:5] == ["NAME", "READY", "RESTARTS", "STATE", "AGE"]


def _yaml(obj: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(obj)
