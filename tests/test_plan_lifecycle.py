"""The pure planner: activeDeadlineSeconds, suspend/resume, TTL, deleted and finished jobs."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from plan_kit import NOW, T0, J, cond, creates, deletes, event, events, pod, run, running, status

from rpcjob_operator.model import DeleteJob


# --- deadline, suspend, TTL -----------------------------------------------------------------
def test_deadline_exceeded_fails() -> None:
    job = J(worker=1, run={"activeDeadlineSeconds": 3600})  # started exactly an hour ago
    p = run(job, running(0), None, status({"worker": [0]}))
    assert cond(p, "Failed")["reason"] == "DeadlineExceeded"
    assert deletes(p) == [("demo-worker-0", "JobFailed", None)]


def test_deadline_pending_requeues_for_the_remainder() -> None:
    job = J(worker=1, run={"activeDeadlineSeconds": 3700})
    p = run(job, running(0), None, status({"worker": [0]}))
    assert p.status.to_dict()["state"] != "Failed" and p.requeue_after == pytest.approx(100.0)


def test_suspend_deletes_pods_and_resume_recreates() -> None:
    job = J(worker=2, run={"suspend": True})
    st = status({"worker": [0, 1]}, formed=True)
    p = run(job, running(0, 1), None, st)
    assert deletes(p) == [("demo-worker-0", "Suspend", None), ("demo-worker-1", "Suspend", None)]
    assert creates(p) == [] and p.status.to_dict()["state"] == "Suspended"
    assert cond(p, "Suspended")["status"] == "True" and cond(p, "Running")["status"] == "False"
    assert event(p, "Suspended").type == "Normal"
    assert p.status.to_dict()["roles"]["worker"]["indices"] == []
    # Still suspended, pods terminating: no new restart counted, no event repeated.
    terminating = [pod("worker", 0, deleting=True), pod("worker", 1, deleting=True)]
    still = run(job, terminating, None, p.status)
    assert still.actions == () and still.status.to_dict().get("restarts", 0) == 0
    # Resume.
    resumed = run(
        J(worker=2, run={"suspend": False}), [], None, still.status, now=NOW + dt.timedelta(hours=1)
    )
    assert creates(resumed) == [("worker", 0), ("worker", 1)]
    assert cond(resumed, "Suspended")["status"] == "False"
    assert cond(resumed, "Suspended")["reason"] == "Resumed" and "Resumed" in events(resumed)
    assert resumed.status.to_dict()["startTime"] == "2026-01-01T13:00:00Z"  # deadline restarts
    assert resumed.status.to_dict()["state"] == "Pending"


def _finished(state: str, completion: str, **extra: Any) -> dict[str, Any]:
    return status({"worker": []}, state=state, completionTime=completion, **extra)


@pytest.mark.parametrize(
    ("ttl", "deleted", "requeue"), [(50, True, None), (500, False, 400.0), (None, False, None)]
)
def test_ttl_after_finished(ttl: int | None, deleted: bool, requeue: float | None) -> None:
    run_policy = {} if ttl is None else {"ttlSecondsAfterFinished": ttl}
    job = J(worker=1, run=run_policy)
    st = _finished("Succeeded", "2026-01-01T11:58:20Z")  # 100 s before NOW
    p = run(job, [pod("worker", 0, phase="Succeeded")], None, st)
    assert (DeleteJob() in p.actions) == deleted
    assert p.requeue_after == (pytest.approx(requeue) if requeue else None)
    if deleted:
        assert "ttlSecondsAfterFinished" in event(p, "TTLExpired").message
    assert p.status.to_dict()["state"] == "Succeeded"


def test_ttl_requeue_is_set_when_the_job_finishes() -> None:
    job = J(worker=1, success={"role": "worker"}, run={"ttlSecondsAfterFinished": 30})
    p = run(job, [pod("worker", 0, phase="Succeeded")], None, status({"worker": [0]}))
    assert p.status.to_dict()["state"] == "Succeeded" and p.requeue_after == 30


def test_finished_job_cleans_up_leftover_pods_only() -> None:
    p = run(
        J(worker=2),
        [pod("worker", 0, phase="Failed"), pod("worker", 1)],
        None,
        _finished("Failed", T0),
    )
    assert deletes(p) == [("demo-worker-1", "JobFailed", None)]
    assert creates(p) == [] and p.status.to_dict()["state"] == "Failed"


def test_deleted_job_plans_nothing() -> None:
    job = J(deletionTimestamp=T0)
    p = run(job, running(0), None, status({"worker": [0]}))
    assert p.actions == ()
