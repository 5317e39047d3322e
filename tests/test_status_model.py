"""rpcjob_operator.status: the typed .status reads back what the operator wrote, unchanged
(the reconciler skips a status write when the planned JSON equals the job's)."""

from __future__ import annotations

from typing import Any

from plan_kit import J, member, run, running

from rpcjob_operator.status import Condition, Failure, JobStatus, RoleStatus


def test_a_planned_status_round_trips() -> None:
    job = J(worker=2, ps=1)
    p = run(job, [*running(0, 1), *running(0, role="ps")],
            [member("worker", 0, 0), member("worker", 1, 1)])  # fmt: skip
    d = p.status.to_dict()
    assert JobStatus.from_dict(d) == p.status
    assert JobStatus.from_dict(d).to_dict() == d
    assert {"state", "conditions", "roles", "members", "restarts", "failedPods", "startTime",
            "observedGeneration", "replicas", "selector", "ready"} <= set(d)  # fmt: skip


def test_optional_fields_stay_absent_and_unknown_fields_are_kept() -> None:
    raw: dict[str, Any] = {"conditions": [], "someday": {"x": 1}}
    st = JobStatus.from_dict(raw)
    assert st.members is None and st.failures is None and st.roles is None
    assert st.to_dict() == raw
    assert JobStatus.from_dict(None).to_dict() == {"conditions": []}


def test_parts_read_the_api_json() -> None:
    role = RoleStatus.from_dict(
        {"indices": [0, 2], "pods": {"2": "u2"}, "left": {"2": {"uid": "u2", "since": "t"}}}
    )
    assert (role.indices, role.pods, role.left[2].uid) == ([0, 2], {2: "u2"}, "u2")
    assert role.to_dict()["left"] == {"2": {"uid": "u2", "since": "t"}}
    c = Condition.from_dict({"type": "Running", "status": "True", "observedGeneration": 3})
    assert c.true and c.to_dict()["observedGeneration"] == 3


def test_optional_record_fields_are_left_out_until_set() -> None:
    raw = {"pod": "p", "uid": "u", "role": "w", "index": 0, "reason": "Error", "time": "t"}
    f = Failure.from_dict({**raw, "exitCode": 3})
    assert (f.exit_code, f.message) == (3, "")
    assert f.to_dict() == {**raw, "exitCode": 3}
    assert Failure.from_dict(raw).to_dict() == raw
