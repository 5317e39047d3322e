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


def _stop_all(c: Cycle, reason: str) -> None:
    """Delete every live pod and give up every slot (counts kept up to date)."""
    c.actions += [DeletePod(p.name, p.uid, None, reason) for p in c.obs.pods if p.live]
    for role in c.active:
        c.active[role] = set()
    fill_counts(c)


def _seconds_left(c: Cycle, limit: int | None, since: str | None) -> float | None:
    """What is left of ``limit`` seconds counted from ``since``; None when either is unset."""
    at = parse_time(since)
    if limit is None or at is None:
        return None
    return limit - (c.obs.now - at).total_seconds()


def _ttl(c: Cycle) -> None:
    ttl = c.job.run_policy.ttl_seconds_after_finished
    left = _seconds_left(c, ttl, c.status.completion_time)
    if left is not None and left > 0:
        c.requeue.append(left)
    elif left is not None:
        c.actions.append(DeleteJob())
        msg = f"deleting the job: {ttl}s passed since it finished (ttlSecondsAfterFinished)"
        c.event("Normal", "TTLExpired", msg)


def _finish(c: Cycle, ok: bool, reason: str, message: str) -> Plan:
    _stop_all(c, "JobSucceeded" if ok else "JobFailed")
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
    _stop_all(c, "JobSucceeded" if c.status.state == "Succeeded" else "JobFailed")
    _ttl(c)
    return _done(c)


def _suspend(c: Cycle) -> Plan:
    _stop_all(c, "Suspend")
    if set_cond(c, cond.SUSPENDED, True, "Suspended", "spec.runPolicy.suspend is true"):
        c.event("Normal", "Suspended", "job suspended: deleting its pods gracefully")
    for ctype in (cond.RUNNING, cond.DEGRADED):
        if c.status.condition(ctype) is not None:
            set_cond(c, ctype, False, "Suspended", "the job is suspended")
    c.status.state = "Suspended"
    return _done(c)


def _deadline(c: Cycle) -> Plan | None:
    limit = c.job.run_policy.active_deadline_seconds
    left = _seconds_left(c, limit, c.status.start_time)
    if left is not None and left <= 0:
        msg = f"the job was active longer than activeDeadlineSeconds ({limit}s)"
        return _finish(c, False, "DeadlineExceeded", msg)
    if left is not None:
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
        msg = f"{failed} pods failed, more than backoffLimit {limit}"
        return _finish(c, False, "BackoffLimitExceeded", msg)
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
