"""A job that ends normally under ``rpcjob run``: success, no restart, no failure, no warning.

The examples end the way real jobs do: the success role tells the others it is done, they
leave the group and exit 0 (actors under ``restartPolicy: Always``), then it exits 0 itself.
None of that is a degradation or a restart (operator/rpcjob_operator/plan_finish.py). The run
uses an external etcd (``--etcd``), which must keep none of the job's keys afterwards.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from localrun import LocalRun, base_env

from rpcjob.etcd import Client
from rpcjob_operator.localexec.etcd_server import EmbeddedEtcd

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    ("job", "env", "leader", "done"),
    [
        ("examples/parameter_server/rpcjob.yaml", {"EXAMPLE_STEPS": "200"}, "ps_0",
         "ps: done after 200 updates"),
        # (the actors flat out: the run is bounded by its update count, not by time)
        ("examples/actor_learner/rpcjob.yaml", {"EXAMPLE_UPDATES": "100",
         "EXAMPLE_ROLLOUT_MS": "0"}, "learner_0", "learner: done at version 100"),
    ],
    ids=["parameter_server", "actor_learner"],
)  # fmt: skip
def test_cpu_examples_succeed_quietly(
    tmp_path: Path, job: str, env: dict[str, str], leader: str, done: str
) -> None:
    with EmbeddedEtcd() as etcd:
        run = LocalRun(job, "--set", "roles.worker.replicas=2", "--etcd", etcd.endpoint,
                       env=base_env(tmp_path, env))  # fmt: skip
        try:
            assert run.wait(240) == 0, run.story()
        finally:
            run.kill()
        with Client(etcd.endpoint) as c:
            assert c.get_prefix("/rpcjob/") == []
            assert c.get_prefix("/rpcjob-local/") == []
    result = [e for e in run.events if e.get("type") == "result"]
    assert result and result[-1]["state"] == "Succeeded", run.story()
    assert any(done in line for line in run.logs(leader)), run.story()
    statuses = [e["status"] for e in run.events if e.get("type") == "status"]
    # Every worker really joined the group. A worker that finishes between two status writes
    # is in no snapshot; its own log line ("...; leaving", printed after its RPCs to the
    # leader) shows it was in the group.
    joined = {m["name"] for st in statuses for m in st.get("members") or []}
    left = {w for w in ("worker_0", "worker_1") if any("leaving" in ln for ln in run.logs(w))}
    assert {leader, "worker_0", "worker_1"} <= joined | left, run.story()
    # ... and the ending is quiet.
    assert statuses[-1]["state"] == "Succeeded", run.story()
    warnings = [e for e in run.events if e.get("type") == "event" and e["event"] == "Warning"]
    assert warnings == [], (warnings, run.story())  # the story: the failed pod's own log
    degraded = [c for st in statuses for c in st.get("conditions", []) if c["type"] == "Degraded"]
    assert degraded == [], degraded
    final = statuses[-1]
    assert final.get("restarts", 0) == 0 and final.get("failures", []) == [], final
    replaced = [e["pod"] for e in run.events if e.get("type") == "pod" and e.get("replacement")]
    assert replaced == [], replaced
