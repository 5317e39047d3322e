"""The pure planner: (job, observed) -> Plan. Handlers and the local executor only apply it.

Order of decisions in one cycle (the first that ends the cycle wins):
deleted job -> nothing; finished job -> clean up leftovers, TTL; record new failures;
backoffLimit exceeded -> Failed; success policy met -> Succeeded (unreachable -> Failed);
activeDeadlineSeconds passed -> Failed; suspend -> delete pods, Suspended; otherwise resume if
needed, then per role: restart, scale down, scale up, create. Then counts and conditions.
See model.py for how a Plan is applied.
"""

from __future__ import annotations

import copy
from typing import Any

from rpcjob_operator import conditions as cond
from rpcjob_operator.cycle import Cycle
from rpcjob_operator.errors import InvalidSpec
from rpcjob_operator.model import (
    CreatePod,
    DeleteJob,
    DeletePod,
    EnsureNetworkPolicy,
    EnsureService,
    Observed,
    Plan,
    RecordEvent,
)
from rpcjob_operator.plan_finish import find_finishing, track_leaves
from rpcjob_operator.plan_roles import account_pods, reconcile_role, success_state
from rpcjob_operator.plan_status import active_conditions, clear_invalid, fill_counts, set_cond

__all__ = ["Plan", "plan", "plan_invalid", "reconcile"]

from rpcjob_operator.spec import JobMeta, RpcJob, parse_job, parse_meta, parse_time

FINISHED = ("Succeeded", "Failed")


def _done(c: Cycle) -> Plan:
    return Plan(tuple(c.actions), c.status, min(c.requeue) if c.requeue else None)


def _delete_live(c: Cycle, reason: str) -> None:
    for p in c.obs.pods:
        if p.live:
            c.actions.append(DeletePod(p.name, p.uid, None, reason))


def _ttl(c: Cycle) -> None:
    ttl = c.job.run_policy.ttl_seconds_after_finished
    done_at = parse_time(c.status.completion_time)
    if ttl is None or done_at is None:
        return
    left = ttl - (c.obs.now - done_at).total_seconds()
    if left <= 0:
        c.actions.append(DeleteJob())
        c.event(
            "Normal",
            "TTLExpired",
            f"deleting the job: {ttl}s passed since it finished (ttlSecondsAfterFinished)",
        )
    else:
        c.requeue.append(left)


def _finish(c: Cycle, ok: bool, reason: str, message: str) -> Plan:
    _delete_live(c, "JobSucceeded" if ok else "JobFailed")
    for role in c.active:
        c.active[role] = set()
    fill_counts(c)
    c.status.completion_time = c.now_str
    c.status.state = "Succeeded" if ok else "Failed"
    set_cond(c, cond.SUCCEEDED if ok else cond.FAILED, True, reason, message)
    set_cond(c, cond.RUNNING, False, reason, message)
    if c.status.condition(cond.DEGRADED) is not None:
        set_cond(c, cond.DEGRADED, False, reason, message)
    if c.status.is_true(cond.BLOCKED):
        set_cond(c, cond.BLOCKED, False, reason, message)
    c.event("Normal" if ok else "Warning", reason, message)
    _ttl(c)
    return _done(c)


def _finished(c: Cycle) -> Plan:
    """A finished job: remove pods a stale cycle may have left running; honour the TTL."""
    _delete_live(c, "JobSucceeded" if c.status.state == "Succeeded" else "JobFailed")
    for role in c.active:
        c.active[role] = set()
    fill_counts(c)
    _ttl(c)
    return _done(c)


def _suspend(c: Cycle) -> Plan:
    _delete_live(c, "Suspend")
    for role in c.active:
        c.active[role] = set()
    joined = fill_counts(c)
    del joined
    if set_cond(c, cond.SUSPENDED, True, "Suspended", "spec.runPolicy.suspend is true"):
        c.event("Normal", "Suspended", "job suspended: deleting its pods gracefully")
    if c.status.condition(cond.RUNNING) is not None:
        set_cond(c, cond.RUNNING, False, "Suspended", "the job is suspended")
    if c.status.condition(cond.DEGRADED) is not None:
        set_cond(c, cond.DEGRADED, False, "Suspended", "the job is suspended")
    c.status.state = "Suspended"
    return _done(c)


def _deadline(c: Cycle) -> Plan | None:
    limit = c.job.run_policy.active_deadline_seconds
    started = parse_time(c.status.start_time)
    if limit is None or started is None:
        return None
    left = limit - (c.obs.now - started).total_seconds()
    if left <= 0:
        return _finish(
            c,
            False,
            "DeadlineExceeded",
            f"the job was active longer than activeDeadlineSeconds ({limit}s)",
        )
    c.requeue.append(left)
    return None


def plan(job: RpcJob, observed: Observed) -> Plan:
    """Decide one reconcile cycle. Pure: same inputs, same Plan."""
    c = Cycle.start(job, observed)
    if job.meta.deletion_timestamp is not None:
        return Plan((), c.status, None)  # the finalizer and garbage collection take over
    clear_invalid(c)
    if c.status.state in FINISHED and c.status.completion_time:
        return _finished(c)
    track_leaves(c)
    c.finishing = find_finishing(c)
    account_pods(c)
    failed = int(c.status.failed_pods or 0)
    limit = job.run_policy.backoff_limit
    if failed > limit:
        return _finish(
            c,
            False,
            "BackoffLimitExceeded",
            f"{failed} pods failed, more than backoffLimit {limit}",
        )
    ok, unreachable, why = success_state(c)
    if ok:
        return _finish(c, True, "Succeeded", why)
    if unreachable:
        return _finish(c, False, "SuccessPolicyUnreachable", why)
    if job.run_policy.suspend:
        return _suspend(c)
    if c.status.is_true(cond.SUSPENDED):
        set_cond(c, cond.SUSPENDED, False, "Resumed", "spec.runPolicy.suspend is false")
        c.event("Normal", "Resumed", "job resumed: recreating its pods")
        c.status.start_time = None  # the deadline counts from the resume, as for a Job
    if (ended := _deadline(c)) is not None:
        return ended
    for role in job.roles.values():
        reconcile_role(c, role)
    if any(isinstance(a, CreatePod) for a in c.actions):
        c.actions[:0] = [EnsureService(), EnsureNetworkPolicy()]
    c.status.start_time = c.status.start_time or c.now_str
    active_conditions(c, fill_counts(c))
    return _done(c)


def plan_invalid(meta: JobMeta, error: InvalidSpec, observed: Observed) -> Plan:
    """A spec the operator cannot run: Invalid condition + Warning event; pods left alone."""
    status = copy.deepcopy(observed.status)
    message = str(error)[:32768]
    before = status.condition(cond.INVALID)
    before_message = before.message if before else None
    changed = cond.set_condition(
        status.conditions,
        cond.INVALID,
        True,
        error.reason,
        message,
        generation=meta.generation,
        now=observed.now,
    )
    if status.state not in FINISHED:  # a finished job keeps its outcome
        status.state = "Invalid"
    status.observed_generation = meta.generation
    actions: tuple[Any, ...] = ()
    if changed or before_message != message:
        actions = (RecordEvent("Warning", error.reason, f"invalid spec: {message}"),)
    return Plan(actions, status, None)


def reconcile(obj: dict[str, Any], observed: Observed) -> Plan:
    """Parse the RpcJob dict and plan; an invalid spec yields the Invalid plan, never raises."""
    try:
        job = parse_job(obj)
    except InvalidSpec as e:
        return plan_invalid(parse_meta(obj), e, observed)
    return plan(job, observed)
