"""The status of a cycle: counts, members, the scale fields, conditions and state."""

from __future__ import annotations

from rpcjob import contract
from rpcjob_operator import conditions as cond
from rpcjob_operator.cycle import Cycle
from rpcjob_operator.plan_finish import clean_exit, leaving
from rpcjob_operator.spec import SCALE_ROLE
from rpcjob_operator.status import MemberStatus, RoleStatus


def joined_by_role(c: Cycle) -> dict[str, int]:
    counts = dict.fromkeys(c.job.roles, 0)
    if c.obs.members is not None:
        for m in c.obs.members:
            if m.role in counts:
                counts[m.role] += 1
    else:  # etcd not read: the sidecar's readiness says "joined"
        for p in c.obs.pods:
            if p.role in counts and p.live and p.ready:
                counts[p.role] += 1
    return counts


def group_formed(c: Cycle, joined: dict[str, int]) -> tuple[bool, str]:
    parts = [
        f"{r.name} {joined[r.name]}/{r.replicas} joined (min {r.min_replicas})"
        for r in c.job.roles.values()
    ]
    formed = sum(joined.values()) > 0 and all(
        joined[r.name] >= r.min_replicas for r in c.job.roles.values()
    )
    return formed, ", ".join(parts)


def fill_counts(c: Cycle) -> dict[str, int]:
    """Per-role counts, members and the scale subresource fields; returns joined by role."""
    joined = joined_by_role(c)
    roles: dict[str, RoleStatus] = {}
    for r in c.job.roles.values():
        pods = c.role_pods(r.name).values()
        roles[r.name] = RoleStatus(
            desired=r.replicas,
            running=sum(1 for p in pods if p.phase == "Running" and not p.deleting),
            joined=joined[r.name],
            failed=sum(1 for p in pods if p.phase == "Failed"),
            succeeded=sum(1 for p in pods if p.phase == "Succeeded"),
            indices=sorted(c.active[r.name]),
            pods={
                i: p.uid
                for i, p in sorted(c.role_pods(r.name).items())
                if i in c.active[r.name] and not p.finished
            },
            left=dict(sorted(c.left.get(r.name, {}).items())),
        )
    st = c.status
    st.roles = roles
    name = c.job.meta.name
    workers = c.role_pods(SCALE_ROLE)
    st.replicas = sum(
        1 for i in c.active.get(SCALE_ROLE, ()) if i in workers and not workers[i].deleting
    )
    st.selector = f"{contract.LABEL_JOB_NAME}={name},{contract.LABEL_ROLE}={SCALE_ROLE}"
    desired = c.job.roles[SCALE_ROLE].replicas if SCALE_ROLE in c.job.roles else 0
    st.ready = f"{joined.get(SCALE_ROLE, 0)}/{desired}"
    if c.obs.members is not None:
        st.members = [
            MemberStatus(m.name, m.rank, m.pod, m.node, list(m.devices))
            for m in sorted(c.obs.members, key=lambda m: m.rank)
        ]
    st.observed_generation = c.generation
    st.restarts = st.restarts or 0
    st.failed_pods = st.failed_pods or 0
    return joined


def set_cond(c: Cycle, ctype: str, status: bool, reason: str, message: str) -> bool:
    return cond.set_condition(
        c.status.conditions,
        ctype,
        status,
        reason,
        message,
        generation=c.generation,
        now=c.obs.now,
    )


def clear_invalid(c: Cycle) -> None:
    if c.status.condition(cond.INVALID) is not None and set_cond(
        c, cond.INVALID, False, "SpecValid", "the spec passes validation"
    ):
        c.event("Normal", "SpecValid", "the spec is valid again; reconciling")


def created_condition(c: Cycle) -> None:
    """Created: True once every slot has its pod, and the message counts them (pods this
    cycle only asks for are not counted: a quota or a slow API server may refuse them)."""
    want = sum(len(c.active[r]) for r in c.job.roles)
    have = sum(1 for r in c.job.roles for i in c.active[r] if i in c.role_pods(r))
    if want == 0:
        return
    if have >= want:
        set_cond(c, cond.CREATED, True, "PodsCreated", f"all {want} pods created")
    elif c.status.is_true(cond.CREATED):
        # Created once; now a slot awaits a replacement or a scale-up adds some.
        set_cond(c, cond.CREATED, True, "PodsCreated", f"{have} of {want} pods exist")
    else:
        set_cond(c, cond.CREATED, False, "CreatingPods", f"{have} of {want} pods created")


ROOT_IMAGE_HINT = (
    "; the image runs as root and rpcjob's default securityContext says runAsNonRoot: set "
    "securityContext.runAsUser: 0 (or runAsNonRoot: false) in the role's pod template, or use "
    "an image with a non-root USER"
)


def blocked_condition(c: Cycle) -> None:
    """PodsBlocked: a pod the kubelet cannot start (bad image, refused securityContext, missing
    Secret...) waits forever; say which and why, with a Warning event when that changes."""
    blocked = [p for p in c.obs.pods if p.live and p.blocked_reason]
    if not blocked:
        if c.status.is_true(cond.BLOCKED):
            set_cond(c, cond.BLOCKED, False, "PodsStarting", "no pod is blocked from starting")
        return
    p = min(blocked, key=lambda q: (q.role, q.index))
    message = f"pod {p.name} cannot start ({p.blocked_reason}): {p.blocked_message}"
    if "runAsNonRoot" in p.blocked_message:
        message += ROOT_IMAGE_HINT
    if len(blocked) > 1:
        message += f" (and {len(blocked) - 1} more pod(s))"
    old = c.status.condition(cond.BLOCKED)
    before = old.message if old else None
    if set_cond(c, cond.BLOCKED, True, p.blocked_reason, message) or before != message:
        c.event("Warning", "PodBlocked", message)


def active_conditions(c: Cycle, joined: dict[str, int]) -> None:
    """Created / Running / Degraded and the state of a job that is neither done nor suspended."""
    created_condition(c)
    blocked_condition(c)
    formed, detail = group_formed(c, joined)
    was_running = c.status.is_true(cond.RUNNING)
    if formed or was_running:
        if set_cond(c, cond.RUNNING, True, "GroupFormed", "every role reached minReplicas"):
            c.event("Normal", "GroupFormed", f"the RPC group formed: {detail}")
    else:
        set_cond(c, cond.RUNNING, False, "Forming", f"waiting for members: {detail}")
    # A member whose worker exited 0, or left the group while its pod winds down, has finished
    # its work, not dropped out: no Degraded for the roles winding down as the job succeeds
    # (plan_finish explains the steps of a normal ending).
    done = {r: leaving(c, r) for r in c.job.roles}
    for p in c.obs.pods:
        if p.role in done and clean_exit(p):
            done[p.role] += 1
    settled = formed or all(
        joined[r.name] + done[r.name] >= r.min_replicas for r in c.job.roles.values()
    )
    if was_running or formed:
        if not settled:
            if set_cond(c, cond.DEGRADED, True, "BelowMinReplicas", detail):
                c.event("Warning", "Degraded", f"a role is below minReplicas: {detail}")
        elif c.status.condition(cond.DEGRADED) is not None and set_cond(
            c, cond.DEGRADED, False, "AtMinReplicas", detail
        ):
            c.event("Normal", "Recovered", f"every role is back at minReplicas: {detail}")
    c.status.state = "Running" if c.status.is_true(cond.RUNNING) else "Pending"
