"""kopf peering: a restarted operator resumes at once; a standby takes over within the peering
lifetime (the real operator processes on the local cluster, the chart's peering CRDs)."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from operator_kit import SLEEPER, OperatorEnv, job_manifest, operator_env, unique

from rpcjob import contract
from rpcjob_operator.main import DEFAULT_PEERING_LIFETIME, peering_priority

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
REPO = Path(__file__).resolve().parents[1]
PEERING = ["--peering=rpcjob"]


def test_priority_ranks_the_level_first_then_the_newest() -> None:
    assert peering_priority(0, 2_000) > peering_priority(0, 1_000)  # same level: newest runs
    assert peering_priority(1, 1_000) > peering_priority(0, 9_999_999_999_999)
    assert peering_priority(900_000, 1) < 2**63  # an int64, as the API server stores it


@pytest.fixture
def env(etcd_endpoint: str) -> Iterator[OperatorEnv]:
    with operator_env(etcd_endpoint, start=False) as e:
        e.cluster.apply_file(REPO / "charts" / "rpcjob" / "crds" / "kopf-peerings.yaml")
        e.cluster.apply_docs(
            [{"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering",
              "metadata": {"name": contract.DEFAULT_PEERING_NAME}}]
        )  # fmt: skip
        yield e


def _peers(env: OperatorEnv) -> dict[str, Any]:
    out = env.kubectl("get", "clusterkopfpeering", contract.DEFAULT_PEERING_NAME, "-o", "json")
    return dict(json.loads(out).get("status") or {})


def _kill(proc: Any) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def _scaled(env: OperatorEnv, name: str, n: int) -> None:
    env.kubectl("scale", f"rpj/{name}", f"--replicas={n}")
    env.wait_for(lambda: env.status(name).get("replicas") == n, 60, f"{name} scaled to {n}")


def test_a_restarted_operator_does_not_pause_for_its_dead_self(env: OperatorEnv) -> None:
    env.start(*PEERING, standalone=False, env={"POD_ID": "rpcjob-operator-a"})
    name = unique("peer")
    env.apply(job_manifest(name, replicas=1, command=SLEEPER))
    env.wait_for(lambda: env.status(name).get("replicas") == 1, 60, "the first operator's work")
    assert _peers(env)["rpcjob-operator-a"]["lifetime"] == DEFAULT_PEERING_LIFETIME
    first = env.proc
    _kill(first)  # its keep-alive record stays behind, alive for another lifetime
    # The same pod's container restarts (same POD_ID), then a new pod replaces it.
    for pod_id, log_name in (("rpcjob-operator-a", "restarted.log"),
                             ("rpcjob-operator-b", "new.log")):  # fmt: skip
        env.start(*PEERING, standalone=False, env={"POD_ID": pod_id}, log_name=log_name)
        _scaled(env, name, 2 if pod_id.endswith("a") else 3)
        log = env.log()
        assert "Pausing operations" not in log and "Pausing all" not in log, log[-3000:]
        _kill(env.proc)


def test_a_standby_takes_over_when_the_active_operator_dies(env: OperatorEnv) -> None:
    env.start(*PEERING, standalone=False, env={"POD_ID": "rpcjob-operator-old"})
    standby = env.proc
    name = unique("standby")
    env.apply(job_manifest(name, replicas=1, command=SLEEPER))
    env.wait_for(lambda: env.status(name).get("replicas") == 1, 60, "the first operator's work")
    active = OperatorEnv(env.cluster, env.etcd_endpoint)
    active.start(*PEERING, standalone=False, env={"POD_ID": "rpcjob-operator-new"},
                 log_name="active.log")  # fmt: skip
    try:
        env.wait_for(lambda: "Pausing operations in favour of" in env.log(), 60, "the standby")
        assert "Pausing operations" not in active.log()  # the newest of one priority runs at once
        _scaled(env, name, 2)
        _kill(active.proc)
        _scaled(env, name, 3)  # the standby resumes once the dead peer's 10 s lifetime ran out
        assert "Resuming operations" in env.log()
        assert standby.poll() is None
    finally:
        if active.proc.poll() is None:
            _kill(active.proc)
