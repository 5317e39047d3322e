"""metav1.Condition helpers: lastTransitionTime only moves when status flips."""

from __future__ import annotations

import datetime as dt
from typing import Any

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


def find(conditions: list[dict[str, Any]], ctype: str) -> dict[str, Any] | None:
    return next((c for c in conditions if c.get("type") == ctype), None)


def is_true(conditions: list[dict[str, Any]], ctype: str) -> bool:
    c = find(conditions, ctype)
    return c is not None and c.get("status") == "True"


def set_condition(
    conditions: list[dict[str, Any]],
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
    old = find(conditions, ctype)
    new = {
        "type": ctype,
        "status": value,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": rfc3339(now),
    }
    if old is None:
        conditions.append(new)
        return True
    flipped = old.get("status") != value
    if not flipped and old.get("lastTransitionTime"):
        new["lastTransitionTime"] = old["lastTransitionTime"]
    old.clear()
    old.update(new)
    return flipped
