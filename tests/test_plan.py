"""The pure planner, table-driven: every policy branch of plan()/reconcile()."""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

import pytest

from rpcjob import contract
from rpcjob_operator.model import (
    CreatePod,
    DeleteJob,
    DeletePod,
    EnsureNetworkPolicy,
    EnsureService,
    MemberView,
    Observed,
    Plan,
    PodView,
    RecordEvent,
    Slot,
)
from rpcjob_operator.plan import plan, reconcile
from rpcjob_operator.spec import RpcJob, parse_job

NOW = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
T0 = "2026-01-01T11:00:00Z"  # an hour before NOW


def job_obj(
    worker: int = 2,
    wmin: int = 1,
    wmax: int = 8,
    wpolicy: str = "OnFailure",
    ps: int | None = None,
    ps_policy: str = "OnFailure",
    success: Any = None,
    run: Any = None,
    generation: int = 1,
    **meta: Any,
) -> dict[str, Any]:
    tmpl = {"spec": {"containers": [{"name": "worker", "image": "i", "command": ["x"]}]}}
    roles: dict[str, Any] = {
        "worker": {
            "replicas": worker,
            "minReplicas": wmin,
            "maxReplicas": wmax,
            "restartPolicy": wpolicy,
            "template": tmpl,
        }
    }
    if ps is not None:
        roles["ps"] = {"replicas": ps, "restartPolicy": ps_policy, "template": tmpl}
    spec: dict[str, Any] = {"roles": roles}
    if success is not None:
        spec["successPolicy"] = success
    if run is not None:
        spec["runPolicy"] = run
    return {
        "apiVersion": contract.API_VERSION,
        "kind": contract.KIND,
        "metadata": {
            "name": "demo",
            "namespace": "ns",
            "uid": "uid-1",
            "generation": generation,
            **meta,
        },
        "spec": spec,
    }


def J(**kw: Any) -> RpcJob:
    return parse_job(job_obj(**kw))


def pod(role: str, idx: int, phase: str = "Running", **kw: Any) -> PodView:
    kw.setdefault("uid", f"{role}-{idx}-uid")
    return PodView(name=f"demo-{role}-{idx}", role=role, index=idx, phase=phase, **kw)


def member(role: str, idx: int, rank: int) -> MemberView:
    return MemberView(
        name=f"{role}_{idx}", rank=rank, pod=f"demo-{role}-{idx}", node="n1", devices=("cuda:0",)
    )


def status(indices: dict[str, list[int]] | None = None, **extra: Any) -> dict[str, Any]:
    st: dict[str, Any] = {"startTime": T0, "conditions": []}
    if indices is not None:
        st["roles"] = {r: {"indices": i} for r, i in indices.items()}
    st.update(extra)
    return st


def run(
    job: RpcJob,
    pods: tuple[PodView, ...] | list[PodView] = (),
    members: list[MemberView] | None = None,
    st: dict[str, Any] | None = None,
    now: dt.datetime = NOW,
) -> Plan:
    return plan(
        job,
        Observed(
            pods=tuple(pods),
            members=None if members is None else tuple(members),
            status=st or {},
            now=now,
        ),
    )


def creates(p: Plan) -> list[tuple[str, int]]:
    return [(a.slot.role, a.slot.index) for a in p.of(CreatePod)]


def deletes(p: Plan) -> list[tuple[str, str, int | None]]:
    return [(a.name, a.reason, a.grace_seconds) for a in p.of(DeletePod)]


def events(p: Plan) -> list[str]:
    return [e.reason for e in p.of(RecordEvent)]


def event(p: Plan, reason: str) -> RecordEvent:
    (e,) = [e for e in p.of(RecordEvent) if e.reason == reason]
    return e


def cond(p: Plan, ctype: str) -> dict[str, Any] | None:
    return next((c for c in p.status["conditions"] if c["type"] == ctype), None)


def running(*idx: int, role: str = "worker") -> list[PodView]:
    return [pod(role, i) for i in idx]


# --- creation ---------------------------------------------------------------------------------
def test_fresh_job_creates_every_slot_and_the_networking() -> None:
    p = run(J(worker=2, ps=1))
    assert p.actions[:2] == (EnsureService(), EnsureNetworkPolicy())
    assert creates(p) == [("ps", 0), ("worker", 0), ("worker", 1)]
    assert not any(a.replacement for a in p.of(CreatePod))
    assert events(p).count("SuccessfulCreate") == 3
    st = p.status
    assert st["roles"]["worker"] == {
        "desired": 2,
        "running": 0,
        "joined": 0,
        "failed": 0,
        "succeeded": 0,
        "indices": [0, 1],
        "pods": {},  # no pod seen yet
    }
    assert st["state"] == "Pending" and st["startTime"] == "2026-01-01T12:00:00Z"
    assert st["observedGeneration"] == 1 and st["ready"] == "0/2" and st["replicas"] == 0
    assert st["selector"] == "rpcjob.dev/job-name=demo,rpcjob.dev/role=worker"
    assert cond(p, "Created")["status"] == "True"
    running_c = cond(p, "Running")
    assert running_c["status"] == "False" and running_c["reason"] == "Forming"
    assert "worker 0/2 joined (min 1)" in running_c["message"]
    assert p.requeue_after is None


def test_steady_state_is_quiet_and_idempotent() -> None:
    job = J(worker=2)
    pods = running(0, 1)
    first = run(
        job, pods, [member("worker", 0, 0), member("worker", 1, 1)], status({"worker": [0, 1]})
    )
    assert creates(first) == [] and deletes(first) == []
    assert events(first) == ["GroupFormed"]
    again = run(
        job,
        pods,
        [member("worker", 0, 0), member("worker", 1, 1)],
        first.status,
        now=NOW + dt.timedelta(minutes=5),
    )
    assert again.actions == () and again.status == first.status


def test_group_formed_members_and_scale_fields() -> None:
    p = run(
        J(worker=2, ps=1),
        running(0, 1) + running(0, role="ps"),
        [member("worker", 1, 5), member("ps", 0, 0), member("worker", 0, 2)],
        status({"worker": [0, 1], "ps": [0]}),
    )
    assert cond(p, "Running")["status"] == "True" and p.status["state"] == "Running"
    assert "worker 2/2 joined" in event(p, "GroupFormed").message
    assert [m["rank"] for m in p.status["members"]] == [0, 2, 5]
    assert p.status["members"][0] == {
        "name": "ps_0",
        "rank": 0,
        "pod": "demo-ps-0",
        "node": "n1",
        "devices": ["cuda:0"],
    }
    assert (p.status["ready"], p.status["replicas"]) == ("2/2", 2)
    assert p.status["roles"]["worker"]["running"] == 2


def test_joined_falls_back_to_readiness_without_etcd() -> None:
    pods = [pod("worker", 0, ready=True), pod("worker", 1, ready=False)]
    p = run(J(worker=2), pods, None, status({"worker": [0, 1]}))
    assert p.status["roles"]["worker"]["joined"] == 1
    assert "members" not in p.status


def test_lost_status_adopts_existing_pods_without_duplicates() -> None:
    # The operator crashed after creating pods but before writing status.
    p = run(J(worker=3), running(0, 2), None, {})
    assert creates(p) == [("worker", 1)]
    assert p.status["roles"]["worker"]["indices"] == [0, 1, 2]


# --- scale ------------------------------------------------------------------------------------
SCALE = [
    pytest.param(4, [0, 1], running(0, 1), [("worker", 2), ("worker", 3)], [], id="up"),
    pytest.param(
        2,
        [0, 1, 2, 3],
        running(0, 1, 2, 3),
        [],
        [("demo-worker-3", "ScaleDown", None), ("demo-worker-2", "ScaleDown", None)],
        id="down-highest-first",
    ),
    pytest.param(
        2,
        [0, 1, 2, 3],
        [*running(0, 2, 3), pod("worker", 1, delete_first=True)],
        [],
        [("demo-worker-1", "ScaleDown", None), ("demo-worker-3", "ScaleDown", None)],
        id="down-annotated-first",
    ),
    # Slot 2 has no pod (e.g. awaiting its replacement): retiring it costs nobody their work.
    pytest.param(3, [0, 1, 2, 3], running(0, 1, 3), [], [], id="down-empty-slot-first"),
    pytest.param(
        3,
        [0, 1],
        [*running(0, 1), pod("worker", 2, deleting=True)],
        [("worker", 3)],
        [],
        id="up-skips-terminating-index",
    ),
    pytest.param(
        1,
        [0, 1],
        [*running(0), pod("worker", 1, phase="Succeeded")],
        [],
        [("demo-worker-1", "ScaleDown", None)],
        id="down-removes-finished-slot",
    ),
]


@pytest.mark.parametrize(("replicas", "indices", "pods", "want_creates", "want_deletes"), SCALE)
def test_scale(
    replicas: int,
    indices: list[int],
    pods: list[PodView],
    want_creates: list[tuple[str, int]],
    want_deletes: list[tuple[str, str, int | None]],
) -> None:
    p = run(J(worker=replicas), pods, None, status({"worker": indices}))
    assert creates(p) == want_creates
    assert deletes(p) == want_deletes
    assert len(p.status["roles"]["worker"]["indices"]) == replicas
    if want_creates:
        assert "ScaledUp" in events(p) and EnsureService() in p.actions
    if want_deletes:
        msg = event(p, "ScaledDown").message
        assert f"-> {replicas} replicas" in msg and "drain and leave" in msg


def test_scale_down_victim_is_not_counted_as_a_restart() -> None:
    job = J(worker=1)
    down = run(job, running(0, 1), None, status({"worker": [0, 1]}))
    later = run(job, [*running(0), pod("worker", 1, deleting=True)], None, down.status)
    assert later.status.get("restarts", 0) == 0 and "PodDeleted" not in events(later)


def test_force_deleted_pod_that_vanished_unseen_is_a_restart() -> None:
    job = J(worker=2)
    seen = run(job, running(0, 1), None, status({"worker": [0, 1]}))
    assert seen.status["roles"]["worker"]["pods"] == {"0": "worker-0-uid", "1": "worker-1-uid"}
    # worker-1 is gone in the next list without ever showing deletionTimestamp or Failed.
    gone = run(job, running(0), None, seen.status)
    assert gone.status["restarts"] == 1
    assert gone.status["failures"][-1] | {"time": "-"} == {
        "pod": "demo-worker-1", "uid": "worker-1-uid", "role": "worker", "index": 1,
        "reason": "Vanished", "time": "-",
    }  # fmt: skip
    assert "disappeared without terminating" in event(gone, "PodVanished").message
    assert creates(gone) == [("worker", 1)]
    # Counted once: the next cycle (replacement still starting) adds nothing.
    again = run(job, [*running(0), pod("worker", 1, "Pending", uid="new")], None, gone.status)
    assert again.status["restarts"] == 1 and "PodVanished" not in events(again)


def test_scale_down_and_our_own_restarts_are_not_vanished_pods() -> None:
    job = J(worker=1)
    down = run(job, running(0, 1), None, status({"worker": [0, 1]}))
    after = run(job, running(0), None, down.status)  # the victim is gone
    assert after.status.get("restarts", 0) == 0 and "PodVanished" not in events(after)
    failed = run(job, [pod("worker", 0, "Failed", exit_code=1)], None, after.status)
    replaced = run(job, [], None, failed.status)  # our Restart deletion completed
    assert replaced.status["restarts"] == 1 and "PodVanished" not in events(replaced)


def test_scale_up_waits_when_every_free_index_is_terminating() -> None:
    p = run(
        J(worker=2, wmax=2),
        [*running(0), pod("worker", 1, deleting=True)],
        None,
        status({"worker": [0]}),
    )
    assert creates(p) == [] and p.requeue_after == 2.0


def test_pod_outside_max_replicas_is_deleted() -> None:
    p = run(J(worker=1, wmax=2), running(0, 5), None, status({"worker": [0]}))
    assert ("demo-worker-5", "OutOfRange", None) in deletes(p)


# --- failures and restarts ----------------------------------------------------------------
def test_failed_pod_is_recorded_deleted_then_replaced() -> None:
    job = J(worker=2, run={"backoffLimit": 3})
    failed = pod("worker", 1, phase="Failed", exit_code=3, reason="Error", message="boom")
    p = run(job, [*running(0), failed], None, status({"worker": [0, 1]}))
    assert deletes(p) == [("demo-worker-1", "Restart", 0)]
    assert creates(p) == []  # the name is free only once the old pod is gone
    assert (p.status["failedPods"], p.status["restarts"]) == (1, 1)
    (f,) = p.status["failures"]
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
    assert (again.status["failedPods"], again.status["restarts"]) == (1, 1)
    assert deletes(again) == [("demo-worker-1", "Restart", 0)]
    # Gone: the slot is recreated as a replacement.
    gone = run(job, running(0), None, again.status)
    assert gone.of(CreatePod) == [CreatePod(Slot("worker", 1), replacement=True)]
    assert (gone.status["failedPods"], gone.status["restarts"]) == (1, 1)


POLICIES = [
    # policy, phase, reason, delete?, failedPods, restarts, event
    pytest.param("OnFailure", "Failed", "Error", True, 1, 1, "PodFailed", id="onfailure-failed"),
    pytest.param("OnFailure", "Succeeded", "", False, 0, 0, None, id="onfailure-succeeded"),
    pytest.param("Never", "Failed", "Error", False, 1, 0, "PodFailed", id="never-failed"),
    pytest.param("Always", "Succeeded", "", True, 0, 1, "PodCompleted", id="always-succeeded"),
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
    assert p.status.get("failedPods", 0) == failed
    assert p.status.get("restarts", 0) == restarts
    if ev is None:
        assert "PodFailed" not in events(p) and "PodCompleted" not in events(p)
    else:
        assert ev in events(p)
    assert p.status["state"] != "Failed"


def test_never_failed_slot_stays_empty() -> None:
    job = J(worker=2, wpolicy="Never", ps=1, success={"role": "ps"})
    failed = pod("worker", 1, phase="Failed", exit_code=1)
    p = run(job, [*running(0), failed, pod("ps", 0)], None, status({"worker": [0, 1], "ps": [0]}))
    assert creates(p) == [] and deletes(p) == []
    assert "not replaced (restartPolicy Never)" in event(p, "PodFailed").message
    assert p.status["roles"]["worker"]["failed"] == 1


def test_external_deletion_counts_a_restart_once() -> None:
    job = J(worker=2)
    gone = pod("worker", 1, deleting=True)
    p = run(job, [*running(0), gone], None, status({"worker": [0, 1]}))
    assert p.status["restarts"] == 1 and p.status.get("failedPods", 0) == 0
    assert event(p, "PodDeleted").type == "Warning"
    assert creates(p) == [] and p.requeue_after == 2.0
    again = run(job, [*running(0), gone], None, p.status)
    assert again.status["restarts"] == 1 and "PodDeleted" not in events(again)
    replaced = run(job, running(0), None, again.status)
    assert creates(replaced) == [("worker", 1)]


def test_backoff_limit_exceeded_fails_the_job() -> None:
    job = J(worker=2, ps=1, run={"backoffLimit": 1})
    st = status(
        {"worker": [0, 1], "ps": [0]},
        failedPods=1,
        restarts=1,
        conditions=[
            {
                "type": "Running",
                "status": "True",
                "reason": "GroupFormed",
                "message": "",
                "lastTransitionTime": T0,
            }
        ],
    )
    failed = pod("worker", 1, phase="Failed", exit_code=137, reason="OOMKilled")
    p = run(job, [*running(0), failed, pod("ps", 0), pod("worker", 2, deleting=True)], None, st)
    assert sorted(deletes(p)) == [
        ("demo-ps-0", "JobFailed", None),
        ("demo-worker-0", "JobFailed", None),
    ]
    assert creates(p) == []
    assert p.status["state"] == "Failed" and p.status["completionTime"] == "2026-01-01T12:00:00Z"
    failed_c = cond(p, "Failed")
    assert failed_c["status"] == "True" and failed_c["reason"] == "BackoffLimitExceeded"
    assert failed_c["message"] == "2 pods failed, more than backoffLimit 1"
    # The failure that exhausts the limit is not replaced, so it is no restart.
    assert p.status["restarts"] == 1 and p.status["failedPods"] == 2
    assert "failure 2 of backoffLimit 1; not replaced (backoffLimit exceeded)" in (
        event(p, "PodFailed").message
    )
    assert cond(p, "Running")["status"] == "False"
    assert event(p, "BackoffLimitExceeded").type == "Warning"
    assert p.status["roles"]["worker"]["indices"] == []


# --- success ----------------------------------------------------------------------------------
SUCCESS = [
    pytest.param(
        {"role": "ps"}, {"ps": ["Succeeded"], "worker": ["Running", "Running"]}, "ok", id="role-all"
    ),
    pytest.param(
        {"role": "ps"},
        {"ps": ["Running"], "worker": ["Succeeded", "Succeeded"]},
        None,
        id="role-not-yet",
    ),
    pytest.param(
        {"role": "worker", "operator": "Any"},
        {"ps": ["Running"], "worker": ["Running", "Succeeded"]},
        "ok",
        id="any",
    ),
    pytest.param(
        {"role": "worker"},
        {"ps": ["Running"], "worker": ["Running", "Succeeded"]},
        None,
        id="all-partial",
    ),
    pytest.param(
        None,
        {"ps": ["Succeeded"], "worker": ["Succeeded", "Succeeded"]},
        "ok",
        id="default-all-pods",
    ),
    pytest.param(
        None, {"ps": ["Succeeded"], "worker": ["Succeeded", "Running"]}, None, id="default-partial"
    ),
]


@pytest.mark.parametrize(("policy", "phases", "outcome"), SUCCESS)
def test_success_policy(policy: Any, phases: dict[str, list[str]], outcome: str | None) -> None:
    job = J(worker=2, ps=1, success=policy)
    pods = [pod(r, i, phase=ph) for r, lst in phases.items() for i, ph in enumerate(lst)]
    p = run(job, pods, None, status({"worker": [0, 1], "ps": [0]}))
    if outcome is None:
        assert p.status["state"] != "Succeeded" and cond(p, "Succeeded") is None
        return
    assert p.status["state"] == "Succeeded"
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
    assert p.status["state"] == "Failed"
    assert cond(p, "Failed")["reason"] == "SuccessPolicyUnreachable"
    assert "demo-ps-0 failed with restartPolicy Never" in cond(p, "Failed")["message"]


# --- deadline, suspend, TTL -----------------------------------------------------------------
def test_deadline_exceeded_fails() -> None:
    job = J(worker=1, run={"activeDeadlineSeconds": 3600})  # started exactly an hour ago
    p = run(job, running(0), None, status({"worker": [0]}))
    assert cond(p, "Failed")["reason"] == "DeadlineExceeded"
    assert deletes(p) == [("demo-worker-0", "JobFailed", None)]


def test_deadline_pending_requeues_for_the_remainder() -> None:
    job = J(worker=1, run={"activeDeadlineSeconds": 3700})
    p = run(job, running(0), None, status({"worker": [0]}))
    assert p.status["state"] != "Failed" and p.requeue_after == pytest.approx(100.0)


def test_suspend_deletes_pods_and_resume_recreates() -> None:
    job = J(worker=2, run={"suspend": True})
    st = status(
        {"worker": [0, 1]},
        conditions=[
            {
                "type": "Running",
                "status": "True",
                "reason": "GroupFormed",
                "message": "",
                "lastTransitionTime": T0,
            }
        ],
    )
    p = run(job, running(0, 1), None, st)
    assert deletes(p) == [("demo-worker-0", "Suspend", None), ("demo-worker-1", "Suspend", None)]
    assert creates(p) == [] and p.status["state"] == "Suspended"
    assert cond(p, "Suspended")["status"] == "True" and cond(p, "Running")["status"] == "False"
    assert event(p, "Suspended").type == "Normal"
    assert p.status["roles"]["worker"]["indices"] == []
    # Still suspended, pods terminating: no new restart counted, no event repeated.
    terminating = [pod("worker", 0, deleting=True), pod("worker", 1, deleting=True)]
    still = run(job, terminating, None, p.status)
    assert still.actions == () and still.status.get("restarts", 0) == 0
    # Resume.
    resumed = run(
        J(worker=2, run={"suspend": False}), [], None, still.status, now=NOW + dt.timedelta(hours=1)
    )
    assert creates(resumed) == [("worker", 0), ("worker", 1)]
    assert cond(resumed, "Suspended")["status"] == "False"
    assert cond(resumed, "Suspended")["reason"] == "Resumed" and "Resumed" in events(resumed)
    assert resumed.status["startTime"] == "2026-01-01T13:00:00Z"  # deadline restarts
    assert resumed.status["state"] == "Pending"


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
    assert p.status["state"] == "Succeeded"


def test_ttl_requeue_is_set_when_the_job_finishes() -> None:
    job = J(worker=1, success={"role": "worker"}, run={"ttlSecondsAfterFinished": 30})
    p = run(job, [pod("worker", 0, phase="Succeeded")], None, status({"worker": [0]}))
    assert p.status["state"] == "Succeeded" and p.requeue_after == 30


def test_finished_job_cleans_up_leftover_pods_only() -> None:
    p = run(
        J(worker=2),
        [pod("worker", 0, phase="Failed"), pod("worker", 1)],
        None,
        _finished("Failed", T0),
    )
    assert deletes(p) == [("demo-worker-1", "JobFailed", None)]
    assert creates(p) == [] and p.status["state"] == "Failed"


def test_deleted_job_plans_nothing() -> None:
    job = parse_job(job_obj(deletionTimestamp=T0))
    p = run(job, running(0), None, status({"worker": [0]}))
    assert p.actions == ()


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
    later = NOW + dt.timedelta(minutes=1)
    degraded = run(job, running(0, 1, 2), [member("worker", 0, 0)], formed.status, now=later)
    d = cond(degraded, "Degraded")
    assert d["status"] == "True" and d["reason"] == "BelowMinReplicas"
    assert "worker 1/3 joined (min 2)" in d["message"]
    assert event(degraded, "Degraded").type == "Warning"
    # Running keeps its original transition time.
    assert cond(degraded, "Running")["lastTransitionTime"] == "2026-01-01T12:00:00Z"
    assert degraded.status["state"] == "Running"
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


def test_observed_generation_follows_the_spec() -> None:
    p = run(J(worker=2, generation=7), running(0, 1), None, status({"worker": [0, 1]}))
    assert p.status["observedGeneration"] == 7
    assert all(c["observedGeneration"] == 7 for c in p.status["conditions"])


def test_plan_does_not_mutate_its_input() -> None:
    st = status({"worker": [0, 1, 2, 3]})
    before = copy.deepcopy(st)
    run(J(worker=2), running(0, 1, 2, 3), None, st)
    assert st == before


# --- invalid specs ------------------------------------------------------------------------
def test_invalid_spec_sets_condition_and_warns_once() -> None:
    obj = job_obj(worker=2)
    obj["spec"]["roles"]["worker"]["template"]["spec"]["containers"][0].pop("command")
    obs = Observed(pods=(pod("worker", 0),), status={}, now=NOW)
    p = reconcile(obj, obs)
    assert deletes(p) == [] and creates(p) == []  # running pods are left alone
    c = cond(p, "Invalid")
    assert c["status"] == "True" and c["reason"] == "InvalidSpec"
    assert "containers[0].command: Required value" in c["message"]
    assert p.status["state"] == "Invalid"
    (e,) = p.of(RecordEvent)
    assert e.type == "Warning" and e.reason == "InvalidSpec"
    again = reconcile(
        obj, Observed(pods=obs.pods, status=p.status, now=NOW + dt.timedelta(minutes=1))
    )
    assert again.actions == ()
    assert cond(again, "Invalid")["lastTransitionTime"] == c["lastTransitionTime"]
    # Fixed spec: the job reconciles again and says so.
    fixed = reconcile(
        job_obj(worker=2, generation=2),
        Observed(pods=obs.pods, status=again.status, now=NOW + dt.timedelta(minutes=2)),
    )
    assert cond(fixed, "Invalid")["status"] == "False" and "SpecValid" in events(fixed)
    assert creates(fixed) == [("worker", 1)]


# --- observed views -----------------------------------------------------------------------
def test_pod_view_from_a_pod_dict() -> None:
    raw = {
        "metadata": {
            "name": "demo-worker-3",
            "uid": "u3",
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "deletionTimestamp": "2026-01-01T00:01:00Z",
            "labels": {contract.LABEL_ROLE: "worker", contract.LABEL_INDEX: "3"},
            "annotations": {contract.ANNOTATION_DELETE_FIRST: "true"},
        },
        "spec": {"nodeName": "gpu-1"},
        "status": {
            "phase": "Failed",
            "conditions": [{"type": "Ready", "status": "False"}],
            "containerStatuses": [
                {"name": "other", "state": {"terminated": {"exitCode": 9}}},
                {
                    "name": "worker",
                    "state": {
                        "terminated": {"exitCode": 137, "reason": "OOMKilled", "message": "oom"}
                    },
                },
            ],
        },
    }
    v = PodView.from_pod(raw)
    assert (v.name, v.uid, v.role, v.index, v.phase) == (
        "demo-worker-3",
        "u3",
        "worker",
        3,
        "Failed",
    )
    assert (v.exit_code, v.reason, v.message, v.node) == (137, "OOMKilled", "oom", "gpu-1")
    assert v.deleting and v.delete_first and not v.ready and not v.live and v.finished
    assert v.created == dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def test_member_view_from_record() -> None:
    m = MemberView.from_record("worker_2", {"rank": 7, "pod": "p", "node": "n", "gpus": [0, 1]})
    assert (m.role, m.rank, m.devices) == ("worker", 7, ("cuda:0", "cuda:1"))
    assert MemberView.from_record("bad-name", {}).role == ""


def test_kept_failed_pod_is_never_recounted_after_many_failures() -> None:
    # worker_1 failed with restartPolicy Never and stays (for its logs) while ps crash-loops
    # long enough to push older entries out of status.failures.
    job = J(worker=2, wpolicy="Never", ps=1, success={"role": "ps"}, run={"backoffLimit": 100})
    kept = pod("worker", 1, phase="Failed", exit_code=1)
    st = status({"worker": [0, 1], "ps": [0]})
    for n in range(30):
        ps = pod("ps", 0, phase="Failed", exit_code=2, uid=f"ps-{n}")
        st = run(job, [pod("worker", 0), kept, ps], None, st).status
    assert st["failedPods"] == 31
    assert [f["uid"] for f in st["failures"]].count("worker-1-uid") == 1
    assert len(st["failures"]) == 21  # the 20 newest + the one whose pod is still there
