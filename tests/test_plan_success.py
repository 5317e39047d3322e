"""The pure planner: success policies, a job's normal ending, Degraded."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from plan_kit import (
    NOW,
    J,
    cond,
    creates,
    deletes,
    event,
    events,
    member,
    pod,
    run,
    running,
    status,
)

from rpcjob_operator.model import PodView, RecordEvent
from rpcjob_operator.plan_finish import CLEAN_EXIT_HOLD_S, LEFT_GRACE_S

# --- success ----------------------------------------------------------------------------------
# success policy, the ps pod's and the two workers' phases (R: Running, S: Succeeded), and
# whether the job succeeds
PHASES = {"R": "Running", "S": "Succeeded"}
SUCCESS = [
    pytest.param({"role": "ps"}, "S", "RR", True, id="role-all"),
    pytest.param({"role": "ps"}, "R", "SS", False, id="role-not-yet"),
    pytest.param({"role": "worker", "operator": "Any"}, "R", "RS", True, id="any"),
    pytest.param({"role": "worker"}, "R", "RS", False, id="all-partial"),
    pytest.param(None, "S", "SS", True, id="default-all-pods"),
    pytest.param(None, "S", "SR", False, id="default-partial"),
]


@pytest.mark.parametrize(("policy", "ps", "workers", "succeeds"), SUCCESS)
def test_success_policy(policy: Any, ps: str, workers: str, succeeds: bool) -> None:
    job = J(worker=2, ps=1, success=policy)
    phases = {"ps": ps, "worker": workers}
    pods = [pod(r, i, phase=PHASES[ph]) for r, lst in phases.items() for i, ph in enumerate(lst)]
    p = run(job, pods, None, status({"worker": [0, 1], "ps": [0]}))
    if not succeeds:
        assert p.status.to_dict()["state"] != "Succeeded" and cond(p, "Succeeded") is None
        return
    assert p.status.to_dict()["state"] == "Succeeded"
    assert cond(p, "Succeeded")["status"] == "True"
    assert event(p, "Succeeded").type == "Normal"
    live = sorted(x.name for x in pods if x.phase == "Running")
    assert sorted(n for n, _, _ in deletes(p)) == live
    assert all(r == "JobSucceeded" for _, r, _ in deletes(p))


def test_success_policy_unreachable_with_never() -> None:
    job = J(worker=2, ps=1, ps_policy="Never", success={"role": "ps"})
    p = run(
        job,
        [*running(0, 1), pod("ps", 0, phase="Failed", exit_code=2)],
        None,
        status({"worker": [0, 1], "ps": [0]}),
    )
    assert p.status.to_dict()["state"] == "Failed"
    assert cond(p, "Failed")["reason"] == "SuccessPolicyUnreachable"
    assert "demo-ps-0 failed with restartPolicy Never" in cond(p, "Failed")["message"]


# --- conditions ---------------------------------------------------------------------------
def test_degraded_and_recovered() -> None:
    job = J(worker=3, wmin=2)
    formed = run(
        job,
        running(0, 1, 2),
        [member("worker", i, i) for i in range(3)],
        status({"worker": [0, 1, 2]}),
    )
    assert cond(formed, "Running")["status"] == "True" and cond(formed, "Degraded") is None
    # Two members drop out while their pods keep running: leaving, not missing, at first
    # (a normal ending looks the same for a moment) ...
    later = NOW + dt.timedelta(minutes=1)
    gone = run(job, running(0, 1, 2), [member("worker", 0, 0)], formed.status, now=later)
    assert cond(gone, "Degraded") is None and gone.requeue_after == LEFT_GRACE_S
    assert set(gone.status.to_dict()["roles"]["worker"]["left"]) == {"1", "2"}
    # ... and missing once their pods have not exited LEFT_GRACE_S later.
    later += dt.timedelta(seconds=LEFT_GRACE_S)
    degraded = run(job, running(0, 1, 2), [member("worker", 0, 0)], gone.status, now=later)
    d = cond(degraded, "Degraded")
    assert d["status"] == "True" and d["reason"] == "BelowMinReplicas"
    assert "worker 1/3 joined (min 2)" in d["message"]
    assert event(degraded, "Degraded").type == "Warning"
    # Running keeps its original transition time.
    assert cond(degraded, "Running")["lastTransitionTime"] == "2026-01-01T12:00:00Z"
    assert degraded.status.to_dict()["state"] == "Running"
    back = run(
        job,
        running(0, 1, 2),
        [member("worker", i, i + 5) for i in range(3)],
        degraded.status,
        now=later + dt.timedelta(minutes=1),
    )
    assert cond(back, "Degraded")["status"] == "False" and "Recovered" in events(back)


def test_members_that_finished_their_work_do_not_degrade_the_job() -> None:
    job = J(worker=3, wmin=2)
    members = [member("worker", i, i) for i in range(3)]
    formed = run(job, running(0, 1, 2), members, status({"worker": [0, 1, 2]}))
    # Two workers exited 0 and left the group (the sidecars still drain): winding down.
    done = [pod("worker", 0), *(pod("worker", i, exit_code=0) for i in (1, 2))]
    winding = run(job, done, members[:1], formed.status)
    assert cond(winding, "Degraded") is None and "Degraded" not in events(winding)
    # The same departures without a clean exit are a degradation.
    crashed = [pod("worker", 0), *(pod("worker", i, exit_code=137) for i in (1, 2))]
    assert "Degraded" in events(run(job, crashed, members[:1], formed.status))


def _ended(role: str, idx: int, at: dt.datetime = NOW, **kw: Any) -> PodView:
    return pod(role, idx, "Succeeded", exit_code=0, finished_at=at, **kw)


# An actor-learner job (actors: worker, restartPolicy Always; success: role ps) as it ends.
ENDING = [
    # (what, pods, members, creates, deletes)
    pytest.param(
        [*running(0), _ended("worker", 1), pod("ps", 0)],
        ["worker_0", "ps_0"], [], [], id="clean-exit-held-back",
    ),
    pytest.param(
        [*running(0), _ended("worker", 1, NOW - dt.timedelta(seconds=CLEAN_EXIT_HOLD_S)),
         pod("ps", 0)],
        ["worker_0", "ps_0"], [], [("demo-worker-1", "Restart", 0)], id="clean-exit-replaced-later",
    ),
    pytest.param(
        [*running(0), _ended("worker", 1, NOW - dt.timedelta(minutes=5)), pod("ps", 0)],
        ["worker_0"], [], [], id="ps-left-nothing-replaced",
    ),
    pytest.param(
        [*running(0), _ended("worker", 1, NOW - dt.timedelta(minutes=5)),
         pod("ps", 0, exit_code=0)],
        ["worker_0"], [], [], id="ps-exited-nothing-replaced",
    ),
    pytest.param(
        [*running(0), pod("worker", 1, "Failed", exit_code=1), pod("ps", 0)],
        ["worker_0"], [], [], id="ps-left-failure-not-replaced",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("pods", "now_members", "want_creates", "want_deletes"), ENDING)
def test_a_finishing_job_replaces_nothing(
    pods: list[PodView],
    now_members: list[str],
    want_creates: list[tuple[str, int]],
    want_deletes: list[tuple[str, str, int | None]],
) -> None:
    job = J(worker=2, wpolicy="Always", ps=1, success={"role": "ps"})
    every = [member("worker", 0, 0), member("worker", 1, 1), member("ps", 0, 2)]
    formed = run(job, [*running(0, 1), pod("ps", 0)], every, status({"worker": [0, 1], "ps": [0]}))
    by_name = {m.name: m for m in every}
    p = run(job, pods, [by_name[n] for n in now_members], formed.status)
    assert creates(p) == want_creates and deletes(p) == want_deletes
    # A clean exit is neither a failure nor a restart; the ending is no degradation.
    assert p.status.to_dict()["restarts"] == 0
    assert all(f.get("exitCode") != 0 for f in p.status.to_dict().get("failures", []))
    assert "PodCompleted" not in events(p) and "Degraded" not in events(p)
    assert cond(p, "Degraded") is None


def test_empty_slot_is_not_refilled_once_the_success_role_left() -> None:
    job = J(worker=2, wpolicy="Always", ps=1, success={"role": "ps"})
    every = [member("worker", 0, 0), member("ps", 0, 2)]
    pods = [*running(0), pod("ps", 0)]
    formed = run(job, pods, every, status({"worker": [0, 1], "ps": [0]}))
    assert creates(formed) == [("worker", 1)]  # worker_1 awaits its replacement
    assert creates(run(job, pods, every[:1], formed.status)) == []  # ps_0 left: not refilled


def test_clean_exit_hold_requeues_and_says_why() -> None:
    job = J(worker=2, wpolicy="Always", ps=1, success={"role": "ps"})
    st = status({"worker": [0, 1], "ps": [0]})
    ended = _ended("worker", 1, NOW - dt.timedelta(seconds=4))
    p = run(job, [*running(0), ended, pod("ps", 0)], None, st)
    assert deletes(p) == [] and p.requeue_after == CLEAN_EXIT_HOLD_S - 4


def test_failure_while_finishing_is_counted_but_not_replaced() -> None:
    job = J(worker=2, ps=1, success={"role": "ps"})
    st = status({"worker": [0, 1], "ps": [0]})
    p = run(job, [*running(0), pod("worker", 1, "Failed", exit_code=1),
                  pod("ps", 0, exit_code=0)], None, st)  # fmt: skip
    assert p.status.to_dict()["failedPods"] == 1 and p.status.to_dict()["restarts"] == 0
    assert "not replaced (the job is finishing: pod demo-ps-0 of role ps exited 0)" in (
        event(p, "PodFailed").message
    )
    assert deletes(p) == []


def test_success_role_slots_are_still_refilled_while_finishing() -> None:
    # ps_0 exited 0, ps_1 failed: the job can only succeed if ps_1 runs again.
    job = J(worker=1, ps=2, success={"role": "ps"})
    st = status({"worker": [0], "ps": [0, 1]})
    p = run(job, [*running(0), pod("ps", 0, "Succeeded", exit_code=0),
                  pod("ps", 1, "Failed", exit_code=1)], None, st)  # fmt: skip
    assert deletes(p) == [("demo-ps-1", "Restart", 0)]


def test_parameter_server_ending_is_not_degraded() -> None:
    """rpcjob run examples/parameter_server: the trainers leave, then the server, then they
    all exit 0 (the order the example's pods really take)."""
    job = J(worker=2, ps=1, success={"role": "ps"})
    every = [member("worker", 0, 0), member("worker", 1, 1), member("ps", 0, 2)]
    pods = [*running(0, 1), pod("ps", 0)]
    st = run(job, pods, every, status({"worker": [0, 1], "ps": [0]})).status
    steps = [
        (pods, every[1:]),
        (pods, [every[2]]),
        (pods, []),
        ([_ended("worker", 0), *running(1), pod("ps", 0)], []),
        ([_ended("worker", 0), _ended("worker", 1), pod("ps", 0, exit_code=0)], []),
    ]
    for i, (now_pods, members) in enumerate(steps):
        p = run(job, now_pods, members, st, now=NOW + dt.timedelta(seconds=i))
        assert "Degraded" not in events(p) and cond(p, "Degraded") is None, i
        assert [e for e in p.of(RecordEvent) if e.type == "Warning"] == [], i
        st = p.status
    done = run(job, [_ended("worker", 0), _ended("worker", 1), _ended("ps", 0)], [], st)
    assert done.status.to_dict()["state"] == "Succeeded" and cond(done, "Degraded") is None
    assert [e.reason for e in done.of(RecordEvent)] == ["Succeeded"]


def test_pod_view_reads_when_the_worker_finished() -> None:
    raw = {
        "metadata": {"name": "p", "uid": "u"},
        "status": {
            "phase": "Succeeded",
            "containerStatuses": [{"name": "worker", "state": {"terminated": {
                "exitCode": 0, "finishedAt": "2026-01-01T11:59:50Z"}}}],
        },
    }  # fmt: skip
    assert PodView.from_pod(raw).finished_at == NOW - dt.timedelta(seconds=10)


def test_a_replacement_pod_is_not_its_predecessors_member() -> None:
    job = J(worker=2, wmin=2)
    every = [member("worker", 0, 0), member("worker", 1, 1)]
    st = run(job, running(0, 1), every, status({"worker": [0, 1]})).status
    # worker_1's pod was replaced under the same name before its member record went away.
    new = pod("worker", 1, uid="worker-1-new")
    p = run(job, [*running(0), new], every[:1], st, now=NOW + dt.timedelta(seconds=1))
    assert "left" not in p.status.to_dict()["roles"]["worker"] and "Degraded" in events(p)
