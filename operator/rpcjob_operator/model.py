"""What the planner sees (Observed) and what it decides (Plan of Actions) — plain data.

Both the kopf handlers (cluster) and the local executor (``rpcjob run``) build an
:class:`Observed` from their world, call ``plan.reconcile`` and apply the :class:`Plan`:

1. write ``plan.status`` (the one status write of the cycle) — before the actions, so that a
   crash between the two never loses a failure record or re-counts a restart;
2. apply ``plan.actions`` in order. ``CreatePod`` renders ``render.render_pod(job, slot,
   defaults=...)``; a 409 AlreadyExists on create means a previous cycle already did it (pod
   names are deterministic) and is success. ``DeletePod`` passes ``uid`` as a precondition and
   treats 404 as success;
3. reconcile again after ``plan.requeue_after`` seconds (None: on the next watch event).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Literal

from rpcjob import contract
from rpcjob.records import MemberRecord
from rpcjob_operator.spec import parse_time
from rpcjob_operator.status import JobStatus


@dataclass(frozen=True, order=True)
class Slot:
    role: str
    index: int

    def pod_name(self, job: str) -> str:
        return contract.pod_name(job, self.role, self.index)

    @property
    def worker_name(self) -> str:
        return contract.worker_name(self.role, self.index)


@dataclass(frozen=True)
class PodView:
    """The facts the planner needs about one of the job's pods."""

    name: str
    uid: str
    role: str
    index: int
    phase: str = "Pending"  # Pending | Running | Succeeded | Failed | Unknown
    deleting: bool = False  # metadata.deletionTimestamp is set
    exit_code: int | None = None  # the worker container's, once terminated
    reason: str = ""  # e.g. Error, OOMKilled, Evicted
    message: str = ""
    ready: bool = False  # the sidecar's /readyz: the worker joined the group
    delete_first: bool = False  # annotated contract.ANNOTATION_DELETE_FIRST
    finished_at: dt.datetime | None = None  # when the worker container terminated
    # A container the kubelet cannot start (CANNOT_START): its waiting reason and message.
    blocked_reason: str = ""
    blocked_message: str = ""

    @property
    def finished(self) -> bool:
        return self.phase in ("Succeeded", "Failed")

    @property
    def live(self) -> bool:
        return not self.deleting and not self.finished

    @classmethod
    def from_pod(cls, pod: dict[str, Any]) -> PodView:
        """Read a pod dict (API JSON, camelCase) into a PodView."""
        md = pod.get("metadata") or {}
        worker = worker_container_name(pod)
        labels = md.get("labels") or {}
        annotations = md.get("annotations") or {}
        st = pod.get("status") or {}
        exit_code: int | None = None
        finished_at: dt.datetime | None = None
        reason = str(st.get("reason") or "")
        message = str(st.get("message") or "")
        for cs in st.get("containerStatuses") or []:
            if cs.get("name") != worker:
                continue
            term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get(
                "terminated"
            )
            if term:
                exit_code = term.get("exitCode")
                finished_at = parse_time(term.get("finishedAt"))
                reason = reason or str(term.get("reason") or "")
                message = message or str(term.get("message") or "")
        blocked_reason, blocked_message = _cannot_start(st)
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in st.get("conditions") or []
        )
        return cls(
            name=str(md.get("name", "")),
            uid=str(md.get("uid", "")),
            role=str(labels.get(contract.LABEL_ROLE, "")),
            index=int(labels.get(contract.LABEL_INDEX, -1)),
            phase=str(st.get("phase") or "Pending"),
            deleting=bool(md.get("deletionTimestamp")),
            exit_code=exit_code,
            reason=reason,
            message=message,
            ready=ready,
            delete_first=str(annotations.get(contract.ANNOTATION_DELETE_FIRST, "")).lower()
            in ("true", "1", "yes"),
            finished_at=finished_at,
            blocked_reason=blocked_reason,
            blocked_message=blocked_message,
        )


# Waiting reasons that do not clear by themselves: the pod's spec or image must change.
CANNOT_START = frozenset(
    {
        "CreateContainerConfigError",  # e.g. runAsNonRoot and an image that runs as root
        "CreateContainerError",
        "RunContainerError",
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
    }
)


def worker_container_name(pod: dict[str, Any]) -> str:
    """The name of the pod's worker container: the template rule (contract.worker_container)
    applied to the pod's containers; a template may name its only container anything."""
    names = [c.get("name") for c in (pod.get("spec") or {}).get("containers") or []]
    idx = contract.worker_container(names)
    name = names[idx] if idx is not None else None
    return str(name) if name else contract.WORKER_CONTAINER


def _cannot_start(st: dict[str, Any]) -> tuple[str, str]:
    for cs in [*(st.get("initContainerStatuses") or []), *(st.get("containerStatuses") or [])]:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in CANNOT_START:
            what = f"container {cs.get('name')}: {waiting.get('message') or waiting['reason']}"
            return str(waiting["reason"]), what
    return "", ""


@dataclass(frozen=True)
class Observed:
    pods: tuple[PodView, ...] = ()
    # None: etcd was not read this cycle — joined counts then fall back to pod readiness.
    members: tuple[MemberRecord, ...] | None = None
    status: JobStatus = field(default_factory=JobStatus)  # the job's current .status
    now: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))


# --- actions ------------------------------------------------------------------------------
@dataclass(frozen=True)
class CreatePod:
    slot: Slot
    replacement: bool = False  # the slot had a pod before (restart), for logs/metrics


@dataclass(frozen=True)
class DeletePod:
    name: str
    uid: str  # delete precondition: never delete a newer pod of the same name
    grace_seconds: int | None  # None: the pod's terminationGracePeriodSeconds
    reason: str  # ScaleDown | Restart | Suspend | JobSucceeded | JobFailed | OutOfRange


@dataclass(frozen=True)
class EnsureService:
    """Create the headless Service (render.render_service) if missing."""


@dataclass(frozen=True)
class EnsureNetworkPolicy:
    """Create the NetworkPolicy (render.render_network_policy) if missing."""


EventType = Literal["Normal", "Warning"]


@dataclass(frozen=True)
class RecordEvent:
    """Record a Kubernetes Event on the RpcJob (what ``kubectl describe`` shows)."""

    type: EventType
    reason: str
    message: str


@dataclass(frozen=True)
class DeleteJob:
    """ttlSecondsAfterFinished elapsed: delete the RpcJob (pods go by ownerReference)."""

    reason: str = "TTLExpired"


Action = CreatePod | DeletePod | EnsureService | EnsureNetworkPolicy | RecordEvent | DeleteJob


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...]
    status: JobStatus  # the whole new .status (one write per cycle: ``to_dict()`` it once)
    requeue_after: float | None = None  # seconds

    def of(self, kind: type[Any]) -> list[Any]:
        """The actions of one type, in order (handy for executors and tests)."""
        return [a for a in self.actions if isinstance(a, kind)]
