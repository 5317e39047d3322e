"""A job that ends normally under ``rpcjob run``: no restart, no failure, no warning.

The examples end the way real jobs do: the success role tells the others it is done, they
leave the group and exit 0 (actors under ``restartPolicy: Always``), then it exits 0 itself.
None of that is a degradation or a restart (operator/rpcjob_operator/plan_finish.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from localrun import LocalRun, base_env

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    ("job", "env"),
    [
        ("examples/parameter_server/rpcjob.yaml", {"EXAMPLE_STEPS": "200"}),
        ("examples/actor_learner/rpcjob.yaml", {"EXAMPLE_UPDATES": "100"}),
    ],
    ids=["parameter_server", "actor_learner"],
)
def test_a_normal_ending_is_quiet(tmp_path: Path, job: str, env: dict[str, str]) -> None:
    run = LocalRun(job, "--set", "roles.worker.replicas=2", env=base_env(tmp_path, env))
    try:
        assert run.wait(240) == 0, run.tail()
    finally:
        run.kill()
    statuses = [e["status"] for e in run.events if e.get("type") == "status"]
    assert statuses and statuses[-1]["state"] == "Succeeded", run.tail()
    warnings = [e for e in run.events if e.get("type") == "event" and e["event"] == "Warning"]
    assert warnings == [], warnings
    degraded = [c for st in statuses for c in st.get("conditions", []) if c["type"] == "Degraded"]
    assert degraded == [], degraded
    final = statuses[-1]
    assert final.get("restarts", 0) == 0 and final.get("failures", []) == [], final
    replaced = [e["pod"] for e in run.events if e.get("type") == "pod" and e.get("replacement")]
    assert replaced == [], replaced
