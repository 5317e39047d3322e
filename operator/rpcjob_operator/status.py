"""The RpcJob's ``.status`` as typed data: what the planner reads and decides.

The executors read the API's JSON once (:meth:`JobStatus.from_dict`) and write it once
(:meth:`JobStatus.to_dict`); in between, the planner works on these types. ``to_dict`` gives
the same JSON the CRD's status schema describes (camelCase, optional fields left out), so a
status the operator wrote reads back unchanged. Unknown top-level fields are kept as they came.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


def _opt_int(d: dict[str, Any], key: str) -> int | None:
    v = d.get(key)
    return None if v is None else int(v)


def _opt_str(d: dict[str, Any], key: str) -> str | None:
    v = d.get(key)
    return None if v is None else str(v)


@dataclass
class Condition:
    """A metav1.Condition (``status`` is "True" or "False")."""

    type: str
    status: str
    reason: str = ""
    message: str = ""
    observed_generation: int | None = None
    last_transition_time: str = ""

    @property
    def true(self) -> bool:
        return self.status == "True"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Condition:
        return cls(
            type=str(d.get("type", "")),
            status=str(d.get("status", "")),
            reason=str(d.get("reason", "")),
            message=str(d.get("message", "")),
            observed_generation=_opt_int(d, "observedGeneration"),
            last_transition_time=str(d.get("lastTransitionTime", "")),
        )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "type": self.type,
            "status": self.status,
            "reason": self.reason,
            "message": self.message,
        }
        if self.observed_generation is not None:
            d["observedGeneration"] = self.observed_generation
        if self.last_transition_time:
            d["lastTransitionTime"] = self.last_transition_time
        return d


@dataclass
class Failure:
    """One entry of ``status.failures`` (the uid stops a kept pod being counted twice)."""

    pod: str
    uid: str
    role: str
    index: int
    reason: str
    time: str
    exit_code: int | None = None
    message: str = ""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Failure:
        return cls(
            pod=str(d.get("pod", "")),
            uid=str(d.get("uid", "")),
            role=str(d.get("role", "")),
            index=int(d.get("index", -1)),
            reason=str(d.get("reason", "")),
            time=str(d.get("time", "")),
            exit_code=_opt_int(d, "exitCode"),
            message=str(d.get("message", "")),
        )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "pod": self.pod,
            "uid": self.uid,
            "role": self.role,
            "index": self.index,
            "reason": self.reason,
            "time": self.time,
        }
        if self.exit_code is not None:
            d["exitCode"] = self.exit_code
        if self.message:
            d["message"] = self.message
        return d


@dataclass
class LeftWorker:
    """A worker that left the group while its pod keeps running (``roles.<r>.left.<i>``)."""

    uid: str
    since: str


@dataclass
class RoleStatus:
    """``status.roles.<role>``: counts, the slot indices kept and their pods' uids."""

    desired: int = 0
    running: int = 0
    joined: int = 0
    failed: int = 0
    succeeded: int = 0
    indices: list[int] = field(default_factory=list)
    pods: dict[int, str] = field(default_factory=dict)  # slot index -> pod uid
    left: dict[int, LeftWorker] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RoleStatus:
        left = d.get("left") or {}
        return cls(
            desired=int(d.get("desired") or 0),
            running=int(d.get("running") or 0),
            joined=int(d.get("joined") or 0),
            failed=int(d.get("failed") or 0),
            succeeded=int(d.get("succeeded") or 0),
            indices=[int(i) for i in d.get("indices") or []],
            pods={int(i): str(u) for i, u in (d.get("pods") or {}).items()},
            left={
                int(i): LeftWorker(str(e.get("uid", "")), str(e.get("since") or ""))
                for i, e in left.items()
                if isinstance(e, dict)
            },
        )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "desired": self.desired,
            "running": self.running,
            "joined": self.joined,
            "failed": self.failed,
            "succeeded": self.succeeded,
            "indices": list(self.indices),
            "pods": {str(i): u for i, u in sorted(self.pods.items())},
        }
        if self.left:
            d["left"] = {
                str(i): {"uid": e.uid, "since": e.since} for i, e in sorted(self.left.items())
            }
        return d


@dataclass
class MemberStatus:
    """``status.members[]``: a live member as etcd says."""

    name: str
    rank: int
    pod: str = ""
    node: str = ""
    devices: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MemberStatus:
        return cls(
            name=str(d.get("name", "")),
            rank=int(d.get("rank", -1)),
            pod=str(d.get("pod", "")),
            node=str(d.get("node", "")),
            devices=[str(x) for x in d.get("devices") or []],
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "rank": self.rank,
            "pod": self.pod,
            "node": self.node,
            "devices": list(self.devices),
        }


# JSON name of each scalar JobStatus field (None: not written).
_SCALARS = {
    "state": "state",
    "start_time": "startTime",
    "completion_time": "completionTime",
    "observed_generation": "observedGeneration",
    "replicas": "replicas",
    "selector": "selector",
    "ready": "ready",
    "restarts": "restarts",
    "failed_pods": "failedPods",
}
_INTS = {"observed_generation", "replicas", "restarts", "failed_pods"}
_LISTS = {"conditions", "roles", "members", "failures"}


@dataclass
class JobStatus:
    state: str | None = None  # Pending | Running | Suspended | Succeeded | Failed | Invalid
    conditions: list[Condition] = field(default_factory=list)
    roles: dict[str, RoleStatus] | None = None
    members: list[MemberStatus] | None = None  # None: not read yet (etcd unreachable)
    failures: list[Failure] | None = None
    restarts: int | None = None
    failed_pods: int | None = None
    start_time: str | None = None
    completion_time: str | None = None
    observed_generation: int | None = None
    replicas: int | None = None  # the scale subresource's fields
    selector: str | None = None
    ready: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # fields this model does not know

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> JobStatus:
        d = d or {}
        st = cls(
            conditions=[Condition.from_dict(x) for x in d.get("conditions") or []],
            extra={k: v for k, v in d.items() if k not in _LISTS and k not in _SCALARS.values()},
        )
        for attr, key in _SCALARS.items():
            setattr(st, attr, _opt_int(d, key) if attr in _INTS else _opt_str(d, key))
        if "roles" in d:
            st.roles = {r: RoleStatus.from_dict(v or {}) for r, v in (d["roles"] or {}).items()}
        if "members" in d:
            st.members = [MemberStatus.from_dict(m) for m in d["members"] or []]
        if "failures" in d:
            st.failures = [Failure.from_dict(f) for f in d["failures"] or []]
        return st

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = dict(self.extra)
        for attr, key in _SCALARS.items():
            if (v := getattr(self, attr)) is not None:
                d[key] = v
        d["conditions"] = [c.to_dict() for c in self.conditions]
        if self.roles is not None:
            d["roles"] = {r: v.to_dict() for r, v in self.roles.items()}
        if self.members is not None:
            d["members"] = [m.to_dict() for m in self.members]
        if self.failures is not None:
            d["failures"] = [f.to_dict() for f in self.failures]
        return d

    def condition(self, ctype: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == ctype), None)

    def is_true(self, ctype: str) -> bool:
        c = self.condition(ctype)
        return c is not None and c.true


assert {f.name for f in fields(JobStatus)} == set(_SCALARS) | _LISTS | {"extra"}
