"""The pure planner, table-driven: creation, scale, conditions, invalid specs, views."""

from __future__ import annotations

import copy
import datetime as dt

import pytest
from plan_kit import (
    NOW,
    T0,
    J,
    cond,
    creates,
    deletes,
    event,
    events,
    job_obj,
    member,
    pod,
    run,
    running,
    status,
)

from rpcjob import contract
from rpcjob.records import MemberRecord
from rpcjob_operator.model import (
    CreatePod,
    EnsureNetworkPolicy,
    EnsureService,
    Observed,
    PodView,
    RecordEvent,
)
from rpcjob_operator.plan import reconcile
from rpcjob_operator.status import JobStatus


# --- creation ---------------------------------------------------------------------------------
def test_fresh_job_creates_every_slot_and_the_networking() -> None:
    p = run(J(worker=2, ps=1))
    assert p.actions[:2] == (EnsureService(), EnsureNetworkPolicy())
    assert creates(p) == [("ps", 0), ("worker", 0), ("worker", 1)]
    assert not any(a.replacement for a in p.of(CreatePod))
    assert events(p).count("SuccessfulCreate") == 3
    assert [type(a) for a in p.actions[4:6]] == [CreatePod, CreatePod]  # the workers at once
    st = p.status.to_dict()
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
    created = cond(p, "Created")  # asked for, not yet seen
    assert (created["status"], created["message"]) == ("False", "0 of 3 pods created")
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
    assert cond(p, "Running")["status"] == "True" and p.status.to_dict()["state"] == "Running"
    assert "worker 2/2 joined" in event(p, "GroupFormed").message
    assert [m["rank"] for m in p.status.to_dict()["members"]] == [0, 2, 5]
    assert p.status.to_dict()["members"][0] == {
        "name": "ps_0",
        "rank": 0,
        "pod": "demo-ps-0",
        "node": "n1",
        "devices": ["cuda:0"],
    }
    assert (p.status.to_dict()["ready"], p.status.to_dict()["replicas"]) == ("2/2", 2)
    assert p.status.to_dict()["roles"]["worker"]["running"] == 2


def test_joined_falls_back_to_readiness_without_etcd() -> None:
    pods = [pod("worker", 0, ready=True), pod("worker", 1, ready=False)]
    p = run(J(worker=2), pods, None, status({"worker": [0, 1]}))
    assert p.status.to_dict()["roles"]["worker"]["joined"] == 1
    assert "members" not in p.status.to_dict()


def test_lost_status_adopts_existing_pods_without_duplicates() -> None:
    # The operator crashed after creating pods but before writing status.
    p = run(J(worker=3), running(0, 2), None, {})
    assert creates(p) == [("worker", 1)]
    assert p.status.to_dict()["roles"]["worker"]["indices"] == [0, 1, 2]


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
    assert len(p.status.to_dict()["roles"]["worker"]["indices"]) == replicas
    if want_creates:
        assert "ScaledUp" in events(p) and EnsureService() in p.actions
        # A role's creates are consecutive: the executor sends a run of creates at once, and an
        # event between two of them would make every create a round trip of its own.
        kinds = [type(a) for a in p.actions]
        first = kinds.index(CreatePod)
        assert kinds[first : first + len(want_creates)] == [CreatePod] * len(want_creates)
    if want_deletes:
        msg = event(p, "ScaledDown").message
        assert f"-> {replicas} replicas" in msg and "drain and leave" in msg


def test_scale_down_victim_is_not_counted_as_a_restart() -> None:
    job = J(worker=1)
    down = run(job, running(0, 1), None, status({"worker": [0, 1]}))
    later = run(job, [*running(0), pod("worker", 1, deleting=True)], None, down.status)
    assert later.status.to_dict().get("restarts", 0) == 0 and "PodDeleted" not in events(later)


def test_force_deleted_pod_that_vanished_unseen_is_a_restart() -> None:
    job = J(worker=2)
    seen = run(job, running(0, 1), None, status({"worker": [0, 1]}))
    assert seen.status.to_dict()["roles"]["worker"]["pods"] == {
        "0": "worker-0-uid",
        "1": "worker-1-uid",
    }
    # worker-1 is gone in the next list without ever showing deletionTimestamp or Failed.
    gone = run(job, running(0), None, seen.status)
    assert gone.status.to_dict()["restarts"] == 1
    assert gone.status.to_dict()["failures"][-1] | {"time": "-"} == {
        "pod": "demo-worker-1", "uid": "worker-1-uid", "role": "worker", "index": 1,
        "reason": "Vanished", "time": "-",
    }  # fmt: skip
    assert "disappeared without terminating" in event(gone, "PodVanished").message
    assert creates(gone) == [("worker", 1)]
    # Counted once: the next cycle (replacement still starting) adds nothing.
    again = run(job, [*running(0), pod("worker", 1, "Pending", uid="new")], None, gone.status)
    assert again.status.to_dict()["restarts"] == 1 and "PodVanished" not in events(again)


def test_scale_down_and_our_own_restarts_are_not_vanished_pods() -> None:
    job = J(worker=1)
    down = run(job, running(0, 1), None, status({"worker": [0, 1]}))
    after = run(job, running(0), None, down.status)  # the victim is gone
    assert after.status.to_dict().get("restarts", 0) == 0 and "PodVanished" not in events(after)
    failed = run(job, [pod("worker", 0, "Failed", exit_code=1)], None, after.status)
    replaced = run(job, [], None, failed.status)  # our Restart deletion completed
    assert replaced.status.to_dict()["restarts"] == 1 and "PodVanished" not in events(replaced)


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


def test_observed_generation_follows_the_spec() -> None:
    p = run(J(worker=2, generation=7), running(0, 1), None, status({"worker": [0, 1]}))
    assert p.status.to_dict()["observedGeneration"] == 7
    assert all(c["observedGeneration"] == 7 for c in p.status.to_dict()["conditions"])


def test_plan_does_not_mutate_its_input() -> None:
    st = status({"worker": [0, 1, 2, 3]})
    before = copy.deepcopy(st)
    run(J(worker=2), running(0, 1, 2, 3), None, st)
    assert st == before


# --- invalid specs ------------------------------------------------------------------------
def test_invalid_spec_sets_condition_and_warns_once() -> None:
    obj = job_obj(worker=2)
    obj["spec"]["roles"]["worker"]["template"]["spec"]["containers"][0].pop("command")
    obs = Observed(pods=(pod("worker", 0),), status=JobStatus(), now=NOW)
    p = reconcile(obj, obs)
    assert deletes(p) == [] and creates(p) == []  # running pods are left alone
    c = cond(p, "Invalid")
    assert c["status"] == "True" and c["reason"] == "InvalidSpec"
    assert "containers[0].command: Required value" in c["message"]
    assert p.status.to_dict()["state"] == "Invalid"
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
    assert (v.exit_code, v.reason, v.message) == (137, "OOMKilled", "oom")
    assert v.deleting and v.delete_first and not v.ready and not v.live and v.finished


WORKER_CONTAINER_CASES = [
    # the pod's container names, the statuses' exit codes by name, the worker's exit code
    pytest.param(["worker"], {"worker": 3}, 3, id="named-worker"),
    pytest.param(["trainer"], {"trainer": 3}, 3, id="only-container-any-name"),
    pytest.param(["helper", "worker"], {"helper": 9, "worker": 0}, 0, id="worker-among-two"),
    pytest.param(["a", "b"], {"a": 1, "b": 2}, None, id="two-none-named-worker"),
    pytest.param([], {"worker": 5}, 5, id="no-spec-containers"),
]


@pytest.mark.parametrize(("names", "codes", "expected"), WORKER_CONTAINER_CASES)
def test_pod_view_reads_the_worker_containers_exit_code(
    names: list[str], codes: dict[str, int], expected: int | None
) -> None:
    raw = {
        "metadata": {"name": "p", "labels": {contract.LABEL_ROLE: "w", contract.LABEL_INDEX: "0"}},
        "spec": {"containers": [{"name": n} for n in names]},
        "status": {
            "phase": "Failed",
            "containerStatuses": [
                {"name": n, "state": {"terminated": {"exitCode": c}}} for n, c in codes.items()
            ],
        },
    }
    assert PodView.from_pod(raw).exit_code == expected


@pytest.mark.parametrize(
    ("names", "index"),
    [(["worker"], 0), (["x"], 0), (["x", "worker"], 1), (["x", "y"], None), ([], None)],
)
def test_worker_container_rule(names: list[str], index: int | None) -> None:
    assert contract.worker_container(names) == index


def test_member_view_from_record() -> None:
    m = MemberRecord.from_dict({"rank": 7, "pod": "p", "node": "n", "gpus": [0, 1]}, "worker_2")
    assert (m.role, m.rank, m.devices) == ("worker", 7, ("cuda:0", "cuda:1"))
    assert MemberRecord.from_dict({}, "bad-name").role == ""


CREATED = [
    # replicas, pods seen, previous Created status, expected (status, reason, message)
    pytest.param(5000, 20, None, ("False", "CreatingPods", "20 of 5000 pods created"), id="some"),
    pytest.param(3, 3, None, ("True", "PodsCreated", "all 3 pods created"), id="all"),
    pytest.param(3, 2, "True", ("True", "PodsCreated", "2 of 3 pods exist"), id="replacing"),
]


@pytest.mark.parametrize(("replicas", "seen", "before", "want"), CREATED)
def test_created_condition_counts_the_pods(
    replicas: int, seen: int, before: str | None, want: tuple[str, str, str]
) -> None:
    st = status({"worker": list(range(replicas))})
    if before is not None:
        st["conditions"] = [{"type": "Created", "status": before, "reason": "PodsCreated",
                             "message": "-", "lastTransitionTime": T0}]  # fmt: skip
    job = J(worker=replicas, wmax=max(replicas, 8))
    c = cond(run(job, running(*range(seen)), None, st), "Created")
    assert (c["status"], c["reason"], c["message"]) == want
