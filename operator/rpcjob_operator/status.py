"""The RpcJob's ``.status`` as typed data: what the planner reads and decides.

The executors read the API's JSON once (:meth:`JobStatus.from_dict`) and write it once
(:meth:`JobStatus.to_dict`); in between, the planner works on these types. ``to_dict`` gives
the JSON the CRD's status schema describes (camelCase, unset optional fields left out), so a
status the operator wrote reads back unchanged. Unknown top-level fields are kept as they came.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, TypeVar

T = TypeVar("T", bound="_Json")


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


class _Json:
    """Flat records of JSON scalars and lists: snake_case fields <-> camelCase keys."""

    # Fields left out of the JSON while None or "" (the others are always written).
    OPTIONAL: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def from_dict(cls: type[T], d: dict[str, Any]) -> T:
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{n: d[_camel(n)] for n in names if d.get(_camel(n)) is not None})

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if f.name not in self.OPTIONAL or v not in (None, ""):
                out[_camel(f.name)] = list(v) if isinstance(v, list) else v
        return out


@dataclass
class Condition(_Json):
    """A metav1.Condition (``status`` is "True" or "False"), its fields in metav1's order."""

    OPTIONAL = frozenset({"observed_generation", "last_transition_time"})
    type: str = ""
    status: str = ""
    observed_generation: int | None = None
    last_transition_time: str = ""
    reason: str = ""
    message: str = ""

    @property
    def true(self) -> bool:
        return self.status == "True"


@dataclass
class Failure(_Json):
    """One entry of ``status.failures`` (the uid stops a kept pod being counted twice)."""

    OPTIONAL = frozenset({"exit_code", "message"})
    pod: str = ""
    uid: str = ""
    role: str = ""
    index: int = -1
    reason: str = ""
    time: str = ""
    exit_code: int | None = None
    message: str = ""


@dataclass
class MemberStatus(_Json):
    """``status.members[]``: a live member as etcd says."""

    name: str = ""
    rank: int = -1
    pod: str = ""
    node: str = ""
    devices: list[str] = field(default_factory=list)


@dataclass
class LeftWorker:
    """A worker that left the group while its pod keeps running (``roles.<r>.left.<i>``)."""

    uid: str
    since: str


_COUNTS = ("desired", "running", "joined", "failed", "succeeded")


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
        return cls(
            **{k: int(d.get(k) or 0) for k in _COUNTS},
            indices=[int(i) for i in d.get("indices") or []],
            pods={int(i): str(u) for i, u in (d.get("pods") or {}).items()},
            left={int(i): LeftWorker(str(e.get("uid", "")), str(e.get("since") or ""))
                  for i, e in (d.get("left") or {}).items() if isinstance(e, dict)},
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {k: getattr(self, k) for k in _COUNTS}
        d.update(indices=list(self.indices), pods={str(i): u for i, u in sorted(self.pods.items())})
        if self.left:
            d["left"] = {str(i): {"uid": e.uid, "since": e.since} for i, e in self.left.items()}
        return d


# JobStatus's scalar fields (None: not written).
_SCALARS = ("state", "start_time", "completion_time", "observed_generation", "replicas",
            "selector", "ready", "restarts", "failed_pods")  # fmt: skip
_KNOWN = {_camel(n) for n in _SCALARS} | {"conditions", "roles", "members", "failures"}


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
            extra={k: v for k, v in d.items() if k not in _KNOWN},
            **{n: d[_camel(n)] for n in _SCALARS if d.get(_camel(n)) is not None},
        )
        if "roles" in d:
            st.roles = {r: RoleStatus.from_dict(v or {}) for r, v in (d["roles"] or {}).items()}
        if "members" in d:
            st.members = [MemberStatus.from_dict(m) for m in d["members"] or []]
        if "failures" in d:
            st.failures = [Failure.from_dict(f) for f in d["failures"] or []]
        return st

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = dict(self.extra)
        d.update({_camel(n): getattr(self, n) for n in _SCALARS if getattr(self, n) is not None})
        d["conditions"] = [c.to_dict() for c in self.conditions]
        if self.roles is not None:
            d["roles"] = {r: v.to_dict() for r, v in self.roles.items()}
        for name, items in (("members", self.members), ("failures", self.failures)):
            if items is not None:
                d[name] = [x.to_dict() for x in items]
        return d

    def condition(self, ctype: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == ctype), None)

    def is_true(self, ctype: str) -> bool:
        c = self.condition(ctype)
        return c is not None and c.true
