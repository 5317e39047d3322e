"""The working state of one planning cycle (internal to plan.py and its helpers)."""

from __future__ import annotations

import copy
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from rpcjob_operator.conditions import rfc3339
from rpcjob_operator.model import Action, Observed, PodView, RecordEvent
from rpcjob_operator.spec import RpcJob

MAX_FAILURES = 20  # status.failures keeps the most recent ones (and dedups by pod uid)
# Pods that failed because the platform took them away: replaced, but not a backoff failure.
DISRUPTION_REASONS = frozenset(
    {
        "Evicted",
        "Preempted",
        "Preempting",
        "Shutdown",
        "NodeShutdown",
        "Terminated",
        "DeletionByTaintManager",
        "NodeLost",
        "UnexpectedAdmissionError",
    }
)


@dataclass
class Cycle:
    job: RpcJob
    obs: Observed
    status: dict[str, Any] = field(default_factory=dict)
    actions: list[Action] = field(default_factory=list)
    requeue: list[float] = field(default_factory=list)
    # role -> slot indices the operator keeps pods for (its memory, status.roles.*.indices)
    active: dict[str, set[int]] = field(default_factory=dict)
    prev_active: dict[str, set[int]] = field(default_factory=dict)
    pods: dict[str, dict[int, PodView]] = field(default_factory=lambda: defaultdict(dict))
    # role -> slot index -> {"uid", "since"}: workers that left the group while their pod kept
    # running (plan_finish.track_leaves); written to status.roles.<role>.left
    left: dict[str, dict[int, dict[str, str]]] = field(default_factory=dict)
    # Why the job is winding down ("" when it is not): other roles' slots are not refilled
    finishing: str = ""

    @classmethod
    def start(cls, job: RpcJob, obs: Observed) -> Cycle:
        c = cls(job=job, obs=obs, status=copy.deepcopy(obs.status or {}))
        c.status.setdefault("conditions", [])
        for p in obs.pods:
            c.pods[p.role][p.index] = p
        prev_roles = c.status.get("roles") or {}
        for name in job.roles:
            prev = {int(i) for i in (prev_roles.get(name) or {}).get("indices") or []}
            c.prev_active[name] = set(prev)
            # Adopt pods this operator created but whose status write was lost.
            adopted = {i for i, p in c.pods[name].items() if not p.deleting}
            c.active[name] = prev | adopted
        return c

    @property
    def now_str(self) -> str:
        return rfc3339(self.obs.now)

    @property
    def generation(self) -> int:
        return self.job.meta.generation

    def event(self, etype: str, reason: str, message: str) -> None:
        assert etype in ("Normal", "Warning")
        self.actions.append(RecordEvent(etype, reason, message))  # type: ignore[arg-type]

    def role_pods(self, role: str) -> dict[int, PodView]:
        return self.pods.get(role, {})

    def counter(self, key: str, delta: int = 1) -> int:
        self.status[key] = int(self.status.get(key) or 0) + delta
        return int(self.status[key])

    def record_failure(self, p: PodView, reason: str) -> None:
        entry: dict[str, Any] = {
            "pod": p.name,
            "uid": p.uid,
            "role": p.role,
            "index": p.index,
            "reason": reason,
            "time": self.now_str,
        }
        if p.exit_code is not None:
            entry["exitCode"] = p.exit_code
        if p.message:
            entry["message"] = p.message[:1024]
        failures = [*self.status.get("failures", []), entry]
        # Keep the newest MAX_FAILURES, plus older ones whose pod still exists: the uid is
        # what stops a kept pod (restartPolicy Never) from being counted again.
        present = {p.uid for p in self.obs.pods}
        cut = len(failures) - MAX_FAILURES
        self.status["failures"] = [
            f for i, f in enumerate(failures) if i >= cut or f.get("uid") in present
        ]

    def seen_uids(self) -> set[str]:
        return {str(f.get("uid")) for f in self.status.get("failures", []) if f.get("uid")}
