"""A job that winds down is not failing: graceful leaves, clean exits and the finishing job.

When its work is done a group ends in a few steps that are each visible a little apart: the
success role tells the others, the workers leave the group (their member records go) while
their pods still run for a moment, they exit 0, and the success role's own pods succeed last.
Seen one cycle at a time, the middle looks like members dropping out and pods completing
under ``restartPolicy: Always``. The rules here keep that from being read as a degradation
or a restart:

* a worker that left the group while its pod keeps running is *leaving*, not missing, for up
  to ``LEFT_GRACE_S`` (it is winding down; a crash shows up as the pod failing);
* the job is *finishing* once a pod of a success role exited 0 or its worker left: from then
  on no slot of another role is refilled (exit 0 or a failure alike);
* a clean exit (exit 0) under ``restartPolicy: Always`` is replaced only ``CLEAN_EXIT_HOLD_S``
  after it, the kubelet's own first restart back-off, so a success role that finishes right
  after its helpers is not raced by their replacements; and it is never a failure.
"""

from __future__ import annotations

from rpcjob_operator.conditions import rfc3339
from rpcjob_operator.cycle import Cycle
from rpcjob_operator.model import PodView
from rpcjob_operator.spec import parse_time
from rpcjob_operator.status import LeftWorker

CLEAN_EXIT_HOLD_S = 10.0
LEFT_GRACE_S = 30.0


def success_roles(c: Cycle) -> list[str]:
    """The roles whose pods decide success: the policy's role, else every role that can
    finish at all (an Always role's pods are replaced on every exit)."""
    role = c.job.success_policy.role
    if role is not None:
        return [role]
    return [r.name for r in c.job.roles.values() if r.restart_policy != "Always"]


def _joined_pods(c: Cycle) -> set[str] | None:
    if c.obs.members is None:
        return None  # etcd not read: nobody is newly seen leaving this cycle
    return {m.pod for m in c.obs.members}


def track_leaves(c: Cycle) -> None:
    """Fill ``c.left``: live pods whose worker was a member last cycle and is not now (or was
    already recorded as left), keyed by slot and bound to the pod's uid."""
    joined = _joined_pods(c)
    before = {m.pod for m in c.obs.status.members or []}
    prev_roles = c.obs.status.roles or {}
    for role in c.job.roles:
        prev_role = prev_roles.get(role)
        prev = prev_role.left if prev_role else {}
        out: dict[int, LeftWorker] = {}
        for idx, p in c.role_pods(role).items():
            if not p.live or (joined is not None and p.name in joined):
                continue
            if p.exit_code not in (None, 0):
                continue  # its worker crashed: a failure on its way, not a leave
            entry = prev.get(idx)
            same_pod = prev_role is not None and prev_role.pods.get(idx) == p.uid
            if entry is not None and entry.uid == p.uid:
                out[idx] = LeftWorker(p.uid, entry.since or c.now_str)
            elif joined is not None and same_pod and p.name in before:
                # (same_pod: a replacement of the same name never counts as its
                # predecessor's member)
                out[idx] = LeftWorker(p.uid, c.now_str)
        c.left[role] = out


def leaving(c: Cycle, role: str) -> int:
    """How many of the role's pods are leaving within the grace (and asks to look again when
    the grace of one runs out, so that a pod that never exits does become missing)."""
    n = 0
    for entry in c.left.get(role, {}).values():
        since = parse_time(entry.since)
        left = LEFT_GRACE_S - (c.obs.now - since).total_seconds() if since else 0.0
        if left > 0:
            n += 1
            c.requeue.append(left)
    return n


def clean_exit(p: PodView) -> bool:
    return p.phase == "Succeeded" or (p.exit_code == 0 and p.phase != "Failed")


def find_finishing(c: Cycle) -> str:
    """Why the job is winding down, or "" (see the module docstring)."""
    for role in success_roles(c):
        for idx, p in sorted(c.role_pods(role).items()):
            if idx not in c.active.get(role, set()):
                continue
            if clean_exit(p):
                return f"pod {p.name} of role {role} exited 0"
            if idx in c.left.get(role, {}):
                return f"the worker of pod {p.name} (role {role}) left the group"
    return ""


def holds_slot(c: Cycle, role: str, p: PodView | None) -> str:
    """Why a finished pod's slot is not refilled now ("": refill it)."""
    if c.finishing and role not in success_roles(c):
        return f"the job is finishing: {c.finishing}"
    if p is not None and p.phase == "Succeeded":
        if p.finished_at is None:
            return ""  # no time to count from: refill now, as before the hold existed
        wait = CLEAN_EXIT_HOLD_S - (c.obs.now - p.finished_at).total_seconds()
        if wait > 0:
            c.requeue.append(wait)
            return (
                f"it exited 0 at {rfc3339(p.finished_at)}; "
                f"replaced {CLEAN_EXIT_HOLD_S:.0f}s after a clean exit"
            )
    return ""
