"""Helpers for the planner tests (tests/test_plan*.py): jobs, pods, members, one plan() call."""

from __future__ import annotations

import datetime as dt
from typing import Any

from rpcjob import contract
from rpcjob.records import MemberRecord
from rpcjob_operator.model import (
    CreatePod,
    DeletePod,
    Observed,
    Plan,
    PodView,
    RecordEvent,
)
from rpcjob_operator.plan import plan
from rpcjob_operator.spec import RpcJob, parse_job
from rpcjob_operator.status import JobStatus

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


def member(role: str, idx: int, rank: int) -> MemberRecord:
    return MemberRecord(
        name=f"{role}_{idx}", rank=rank, pod=f"demo-{role}-{idx}", node="n1", devices=("cuda:0",)
    )


def status(
    indices: dict[str, list[int]] | None = None, formed: bool = False, **extra: Any
) -> dict[str, Any]:
    """A job's status dict; ``formed``: its group formed at T0 and has been Running since."""
    st: dict[str, Any] = {"startTime": T0, "conditions": []}
    if formed:
        st["conditions"] = [
            {
                "type": "Running",
                "status": "True",
                "reason": "GroupFormed",
                "message": "",
                "lastTransitionTime": T0,
            }
        ]
    if indices is not None:
        st["roles"] = {r: {"indices": i} for r, i in indices.items()}
    st.update(extra)
    return st


def run(
    job: RpcJob,
    pods: tuple[PodView, ...] | list[PodView] = (),
    members: list[MemberRecord] | None = None,
    st: dict[str, Any] | JobStatus | None = None,
    now: dt.datetime = NOW,
) -> Plan:
    return plan(
        job,
        Observed(
            pods=tuple(pods),
            members=None if members is None else tuple(members),
            status=st if isinstance(st, JobStatus) else JobStatus.from_dict(st),
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
    return next((c for c in p.status.to_dict()["conditions"] if c["type"] == ctype), None)


def running(*idx: int, role: str = "worker") -> list[PodView]:
    return [pod(role, i) for i in idx]
