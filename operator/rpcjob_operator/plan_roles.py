"""Per-role decisions: failure accounting, restarts, scale up/down, success evaluation."""

from __future__ import annotations

from rpcjob_operator.cycle import DISRUPTION_REASONS, Cycle
from rpcjob_operator.model import CreatePod, DeletePod, PodView, Slot
from rpcjob_operator.plan_finish import holds_slot
from rpcjob_operator.spec import RoleSpec

WAIT_TERMINATING_S = 2.0  # re-check while a slot waits for its old pod to go


def _needs_restart(role: RoleSpec, p: PodView) -> bool:
    if p.phase == "Failed":
        return role.restart_policy != "Never"
    return p.phase == "Succeeded" and role.restart_policy == "Always"


def _vanished(c: Cycle, seen: set[str]) -> None:
    """A pod of an active slot that disappeared between two cycles without ever being seen
    failing or terminating (``kubectl delete --force``, a lost node's pods being purged):
    counted like any deletion done outside rpcjob."""
    observed = {p.uid for p in c.obs.pods}
    for role, prev in (c.obs.status.roles or {}).items():
        if role not in c.job.roles:
            continue
        for index, uid in sorted(prev.pods.items()):
            if uid in observed or uid in seen or index not in c.active.get(role, set()):
                continue
            gone = PodView(name=Slot(role, index).pod_name(c.job.meta.name), uid=uid,
                           role=role, index=index, phase="Unknown")  # fmt: skip
            c.record_failure(gone, "Vanished")
            c.counter("restarts")
            c.event(
                "Warning",
                "PodVanished",
                f"pod {gone.name} ({role}_{index}) disappeared without terminating "
                "(force-deleted?); replacing it",
            )


def account_pods(c: Cycle) -> None:
    """Record each failure / replacement once (dedup by pod uid in status.failures)."""
    seen = c.seen_uids()
    _vanished(c, seen)
    limit = c.job.run_policy.backoff_limit
    for p in sorted(c.obs.pods, key=lambda x: (x.role, x.index)):
        role = c.job.roles.get(p.role)
        if role is None or p.uid in seen:
            continue
        active = p.index in c.active.get(p.role, set())
        slot = f"pod {p.name} ({p.role}_{p.index})"
        if p.phase == "Failed":
            disrupted = p.reason in DISRUPTION_REASONS
            c.record_failure(p, p.reason or "Error")
            code = f"exit code {p.exit_code}" if p.exit_code is not None else "no exit code"
            what = f"{slot} failed with {code}" + (f" ({p.reason})" if p.reason else "")
            exhausted = False
            if disrupted:
                what += "; a disruption, not counted toward backoffLimit"
            else:
                n = c.counter("failed_pods")
                exhausted = n > limit
                what += f"; failure {n} of backoffLimit {limit}"
            held = holds_slot(c, p.role, p) if active else ""
            if exhausted:
                what += "; not replaced (backoffLimit exceeded)"
            elif active and role.restart_policy != "Never" and not held:
                c.counter("restarts")
                what += "; replacing it"
            elif held:
                what += f"; not replaced ({held})"
            else:
                what += "; not replaced (restartPolicy Never)"
            c.event("Warning", "PodFailed", what)
        # (A pod that exited 0 is no failure and no restart, whatever its restartPolicy:
        # reconcile_role refills an Always slot once plan_finish.holds_slot lets it.)
        elif p.deleting and not p.finished and active:
            # Deleted by someone else (kubectl delete, node drain): our own deletions either
            # retire the index first (scale down, suspend, finish) or follow a recorded failure.
            c.record_failure(p, p.reason or "Deleted")
            c.counter("restarts")
            c.event(
                "Warning",
                "PodDeleted",
                f"{slot} was deleted outside rpcjob; a replacement follows once it is gone",
            )


def _victim_order(pods: dict[int, PodView], index: int) -> tuple[int, int, int]:
    p: PodView | None = pods.get(index)
    named = 0 if p is not None and p.delete_first else 1
    empty = 0 if p is None or not p.live else 1  # an empty or finished slot costs nothing
    return (named, empty, -index)


def reconcile_role(c: Cycle, role: RoleSpec) -> None:
    """Restart, scale down, scale up and create pods for one role."""
    name = c.job.meta.name
    pods = c.role_pods(role.name)
    active = c.active[role.name]
    for idx, p in sorted(pods.items()):
        if idx >= role.max_replicas and not p.deleting:
            active.discard(idx)
            c.actions.append(DeletePod(p.name, p.uid, None, "OutOfRange"))
            c.event(
                "Warning",
                "SuccessfulDelete",
                f"deleted pod {p.name}: index {idx} is outside maxReplicas {role.max_replicas}",
            )
    for idx in sorted(active):
        q = pods.get(idx)
        if q is not None and not q.deleting and _needs_restart(role, q):
            if holds_slot(c, role.name, q):
                continue
            c.actions.append(DeletePod(q.name, q.uid, 0, "Restart"))
            c.event(
                "Normal",
                "SuccessfulDelete",
                f"deleted {q.phase.lower()} pod {q.name} to "
                f"restart slot {role.name}_{idx} (restartPolicy {role.restart_policy})",
            )
    excess = len(active) - role.replicas
    if excess > 0:
        victims = sorted(active, key=lambda i: _victim_order(pods, i))[:excess]
        for idx in victims:
            active.discard(idx)
            q = pods.get(idx)
            if q is not None and not q.deleting:
                c.actions.append(DeletePod(q.name, q.uid, None, "ScaleDown"))
        c.event(
            "Normal",
            "ScaledDown",
            (
                f"{role.name}: {len(active) + excess} -> {role.replicas} replicas; removing slots "
                + ", ".join(f"{role.name}_{i}" for i in victims)
                + " (their workers drain and leave the group)"
            ),
        )
    need = role.replicas - len(active)
    if need > 0:
        free = [i for i in range(role.max_replicas) if i not in active and i not in pods]
        added = free[:need]
        active.update(added)
        if len(added) < need:
            c.requeue.append(WAIT_TERMINATING_S)  # indices still held by terminating pods
        if c.prev_active[role.name] and added:
            slots = ", ".join(f"{role.name}_{i}" for i in sorted(added))
            msg = f"{role.name}: adding slots {slots} toward {role.replicas} replicas"
            c.event("Normal", "ScaledUp", msg)
    created: list[str] = []
    for idx in sorted(active):
        q = pods.get(idx)
        if q is None:
            if idx in c.prev_active[role.name] and holds_slot(c, role.name, None):
                continue  # a replacement while the job is finishing: nothing is refilled
            slot = Slot(role.name, idx)
            c.actions.append(CreatePod(slot, replacement=idx in c.prev_active[role.name]))
            created.append(slot.pod_name(name))
        elif q.deleting:
            c.requeue.append(WAIT_TERMINATING_S)
    # The events follow all of the role's creates: the executor sends consecutive creates at
    # once, and an event between two of them would make each create a round trip of its own.
    for pod_name in created:
        c.event("Normal", "SuccessfulCreate", f"created pod {pod_name}")


def _dead(role: RoleSpec, p: PodView | None) -> bool:
    return p is not None and p.phase == "Failed" and role.restart_policy == "Never"


def success_state(c: Cycle) -> tuple[bool, bool, str]:
    """(succeeded, unreachable, message) under spec.successPolicy."""
    sp = c.job.success_policy
    roles = [c.job.roles[sp.role]] if sp.role else list(c.job.roles.values())
    use_any = sp.role is not None and sp.operator == "Any"
    done_roles: list[str] = []
    for role in roles:
        pods = c.role_pods(role.name)
        slots = [pods.get(i) for i in sorted(c.active[role.name])]
        ok = [p for p in slots if p is not None and p.phase == "Succeeded"]
        dead = [p for p in slots if p is not None and _dead(role, p)]
        if use_any:
            if ok:
                return True, False, f"pod {ok[0].name} of role {role.name} succeeded"
            if slots and len(dead) == len(slots):
                return False, True, f"every {role.name} pod failed (restartPolicy Never)"
            return False, False, ""
        if dead:
            return (
                False,
                True,
                (
                    f"pod {dead[0].name} failed with restartPolicy Never, so "
                    f"every {role.name} pod can no longer succeed"
                ),
            )
        if role.replicas == 0:
            continue
        if len(ok) < role.replicas or len(ok) < len(slots):
            return False, False, ""
        done_roles.append(role.name)
    if not done_roles:
        return False, False, ""
    return True, False, "all pods of " + ", ".join(done_roles) + " succeeded"
