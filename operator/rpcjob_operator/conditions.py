"""metav1.Condition helpers: lastTransitionTime only moves when status flips."""

from __future__ import annotations

import datetime as dt

from rpcjob_operator.status import Condition

CREATED = "Created"
RUNNING = "Running"
DEGRADED = "Degraded"
SUSPENDED = "Suspended"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
INVALID = "Invalid"
BLOCKED = "PodsBlocked"


def rfc3339(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: list[Condition],
    ctype: str,
    status: bool,
    reason: str,
    message: str,
    *,
    generation: int,
    now: dt.datetime,
) -> bool:
    """Set a condition in place; return True when its status flipped (or it is new)."""
    value = "True" if status else "False"
    old = next((c for c in conditions if c.type == ctype), None)
    new = Condition(
        type=ctype,
        status=value,
        observed_generation=generation,
        last_transition_time=rfc3339(now),
        reason=reason,
        message=message,
    )
    if old is None:
        conditions.append(new)
        return True
    flipped = old.status != value
    if not flipped and old.last_transition_time:
        new.last_transition_time = old.last_transition_time
    conditions[conditions.index(old)] = new
    return flipped
