"""The working state of one planning cycle (internal to plan.py and its helpers)."""

from __future__ import annotations

import copy
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Literal

from rpcjob_operator.conditions import rfc3339
from rpcjob_operator.model import Action, EventType, Observed, PodView, RecordEvent
from rpcjob_operator.spec import RpcJob
from rpcjob_operator.status import Failure, JobStatus, LeftWorker

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
    status: JobStatus = field(default_factory=JobStatus)
    actions: list[Action] = field(default_factory=list)
    requeue: list[float] = field(default_factory=list)
    # role -> slot indices the operator keeps pods for (its memory, status.roles.*.indices)
    active: dict[str, set[int]] = field(default_factory=dict)
    prev_active: dict[str, set[int]] = field(default_factory=dict)
    pods: dict[str, dict[int, PodView]] = field(default_factory=lambda: defaultdict(dict))
    # role -> slot index -> workers that left the group while their pod kept running
    # (plan_finish.track_leaves); written to status.roles.<role>.left
    left: dict[str, dict[int, LeftWorker]] = field(default_factory=dict)
    # Why the job is winding down ("" when it is not): other roles' slots are not refilled
    finishing: str = ""

    @classmethod
    def start(cls, job: RpcJob, obs: Observed) -> Cycle:
        c = cls(job=job, obs=obs, status=copy.deepcopy(obs.status))
        for p in obs.pods:
            c.pods[p.role][p.index] = p
        prev_roles = c.status.roles or {}
        for name in job.roles:
            prev = set(prev_roles[name].indices) if name in prev_roles else set()
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

    def event(self, etype: EventType, reason: str, message: str) -> None:
        self.actions.append(RecordEvent(etype, reason, message))

    def role_pods(self, role: str) -> dict[int, PodView]:
        return self.pods.get(role, {})

    def counter(self, key: Literal["restarts", "failed_pods"], delta: int = 1) -> int:
        n = int(getattr(self.status, key) or 0) + delta
        setattr(self.status, key, n)
        return n

    def record_failure(self, p: PodView, reason: str) -> None:
        entry = Failure(p.name, p.uid, p.role, p.index, reason, self.now_str, p.exit_code,
                        p.message[:1024])  # fmt: skip
        failures = [*(self.status.failures or []), entry]
        # Keep the newest MAX_FAILURES, plus older ones whose pod still exists: the uid is
        # what stops a kept pod (restartPolicy Never) from being counted again.
        present = {p.uid for p in self.obs.pods}
        cut = len(failures) - MAX_FAILURES
        self.status.failures = [f for i, f in enumerate(failures) if i >= cut or f.uid in present]

    def seen_uids(self) -> set[str]:
        return {f.uid for f in self.status.failures or [] if f.uid}
