"""The pure planner: failures, restarts and backoffLimit."""

from __future__ import annotations

import pytest
from plan_kit import J, cond, creates, deletes, event, events, pod, run, running, status

from rpcjob_operator.model import CreatePod, Slot


# --- failures and restarts ----------------------------------------------------------------
def test_failed_pod_is_recorded_deleted_then_replaced() -> None:
    job = J(worker=2, run={"backoffLimit": 3})
    failed = pod("worker", 1, phase="Failed", exit_code=3, reason="Error", message="boom")
    p = run(job, [*running(0), failed], None, status({"worker": [0, 1]}))
    assert deletes(p) == [("demo-worker-1", "Restart", 0)]
    assert creates(p) == []  # the name is free only once the old pod is gone
    assert (p.status.to_dict()["failedPods"], p.status.to_dict()["restarts"]) == (1, 1)
    (f,) = p.status.to_dict()["failures"]
    assert f == {
        "pod": "demo-worker-1",
        "uid": "worker-1-uid",
        "role": "worker",
        "index": 1,
        "exitCode": 3,
        "reason": "Error",
        "message": "boom",
        "time": "2026-01-01T12:00:00Z",
    }
    e = event(p, "PodFailed")
    assert e.type == "Warning"
    assert "exit code 3 (Error); failure 1 of backoffLimit 3; replacing it" in e.message
    # Same failed pod seen again (delete not yet visible): no double count.
    again = run(job, [*running(0), failed], None, p.status)
    assert (again.status.to_dict()["failedPods"], again.status.to_dict()["restarts"]) == (1, 1)
    assert deletes(again) == [("demo-worker-1", "Restart", 0)]
    # Gone: the slot is recreated as a replacement.
    gone = run(job, running(0), None, again.status)
    assert gone.of(CreatePod) == [CreatePod(Slot("worker", 1), replacement=True)]
    assert (gone.status.to_dict()["failedPods"], gone.status.to_dict()["restarts"]) == (1, 1)


POLICIES = [
    # policy, phase, reason, delete?, failedPods, restarts, event
    pytest.param("OnFailure", "Failed", "Error", True, 1, 1, "PodFailed", id="onfailure-failed"),
    pytest.param("OnFailure", "Succeeded", "", False, 0, 0, None, id="onfailure-succeeded"),
    pytest.param("Never", "Failed", "Error", False, 1, 0, "PodFailed", id="never-failed"),
    # exit 0 is never a failure nor a restart, even when the slot is refilled
    pytest.param("Always", "Succeeded", "", True, 0, 0, None, id="always-succeeded"),
    pytest.param("Always", "Failed", "Error", True, 1, 1, "PodFailed", id="always-failed"),
    pytest.param("OnFailure", "Failed", "Evicted", True, 0, 1, "PodFailed", id="evicted"),
]


@pytest.mark.parametrize(
    ("policy", "phase", "reason", "deleted", "failed", "restarts", "ev"), POLICIES
)
def test_restart_policies(
    policy: str, phase: str, reason: str, deleted: bool, failed: int, restarts: int, ev: str | None
) -> None:
    # ps is the success role so that worker outcomes never end the job here.
    job = J(worker=2, wpolicy=policy, ps=1, success={"role": "ps"})
    done = pod("worker", 1, phase=phase, reason=reason, exit_code=0 if phase == "Succeeded" else 1)
    p = run(job, [*running(0), done, pod("ps", 0)], None, status({"worker": [0, 1], "ps": [0]}))
    assert deletes(p) == ([("demo-worker-1", "Restart", 0)] if deleted else [])
    assert p.status.to_dict().get("failedPods", 0) == failed
    assert p.status.to_dict().get("restarts", 0) == restarts
    if ev is None:
        assert "PodFailed" not in events(p) and "PodCompleted" not in events(p)
    else:
        assert ev in events(p)
    assert p.status.to_dict()["state"] != "Failed"


def test_never_failed_slot_stays_empty() -> None:
    job = J(worker=2, wpolicy="Never", ps=1, success={"role": "ps"})
    failed = pod("worker", 1, phase="Failed", exit_code=1)
    p = run(job, [*running(0), failed, pod("ps", 0)], None, status({"worker": [0, 1], "ps": [0]}))
    assert creates(p) == [] and deletes(p) == []
    assert "not replaced (restartPolicy Never)" in event(p, "PodFailed").message
    assert p.status.to_dict()["roles"]["worker"]["failed"] == 1


def test_external_deletion_counts_a_restart_once() -> None:
    job = J(worker=2)
    gone = pod("worker", 1, deleting=True)
    p = run(job, [*running(0), gone], None, status({"worker": [0, 1]}))
    assert p.status.to_dict()["restarts"] == 1 and p.status.to_dict().get("failedPods", 0) == 0
    assert event(p, "PodDeleted").type == "Warning"
    assert creates(p) == [] and p.requeue_after == 2.0
    again = run(job, [*running(0), gone], None, p.status)
    assert again.status.to_dict()["restarts"] == 1 and "PodDeleted" not in events(again)
    replaced = run(job, running(0), None, again.status)
    assert creates(replaced) == [("worker", 1)]


def test_backoff_limit_exceeded_fails_the_job() -> None:
    job = J(worker=2, ps=1, run={"backoffLimit": 1})
    st = status({"worker": [0, 1], "ps": [0]}, failedPods=1, restarts=1, formed=True)
    failed = pod("worker", 1, phase="Failed", exit_code=137, reason="OOMKilled")
    p = run(job, [*running(0), failed, pod("ps", 0), pod("worker", 2, deleting=True)], None, st)
    assert sorted(deletes(p)) == [
        ("demo-ps-0", "JobFailed", None),
        ("demo-worker-0", "JobFailed", None),
    ]
    assert creates(p) == []
    assert (
        p.status.to_dict()["state"] == "Failed"
        and p.status.to_dict()["completionTime"] == "2026-01-01T12:00:00Z"
    )
    failed_c = cond(p, "Failed")
    assert failed_c["status"] == "True" and failed_c["reason"] == "BackoffLimitExceeded"
    assert failed_c["message"] == "2 pods failed, more than backoffLimit 1"
    # The failure that exhausts the limit is not replaced, so it is no restart.
    assert p.status.to_dict()["restarts"] == 1 and p.status.to_dict()["failedPods"] == 2
    assert "failure 2 of backoffLimit 1; not replaced (backoffLimit exceeded)" in (
        event(p, "PodFailed").message
    )
    assert cond(p, "Running")["status"] == "False"
    assert event(p, "BackoffLimitExceeded").type == "Warning"
    assert p.status.to_dict()["roles"]["worker"]["indices"] == []


def test_kept_failed_pod_is_never_recounted_after_many_failures() -> None:
    # worker_1 failed with restartPolicy Never and stays (for its logs) while ps crash-loops
    # long enough to push older entries out of status.failures.
    job = J(worker=2, wpolicy="Never", ps=1, success={"role": "ps"}, run={"backoffLimit": 100})
    kept = pod("worker", 1, phase="Failed", exit_code=1)
    st = status({"worker": [0, 1], "ps": [0]})
    for n in range(30):
        ps = pod("ps", 0, phase="Failed", exit_code=2, uid=f"ps-{n}")
        st = run(job, [pod("worker", 0), kept, ps], None, st).status
    assert st.to_dict()["failedPods"] == 31
    assert [f["uid"] for f in st.to_dict()["failures"]].count("worker-1-uid") == 1
    assert len(st.to_dict()["failures"]) == 21  # the 20 newest + the one whose pod is still there
