"""Every request the API server answers, for tests (the RBAC scenario compares an operator's
recorded calls against the chart's roles)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class AuditRecord:
    verb: str  # get list watch create update patch delete deletecollection (RBAC verbs)
    group: str  # "" for core
    version: str
    resource: str  # plural, "" for non-resource URLs
    subresource: str  # "" when none
    namespace: str  # "" when cluster-scoped or all namespaces
    name: str
    user_agent: str
    code: int
    path: str
    time: float


class AuditLog:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[AuditRecord] = []

    def add(self, record: AuditRecord) -> None:
        with self._lock:
            self._records.append(record)

    def records(self, user_agent_prefix: str | None = None) -> list[AuditRecord]:
        with self._lock:
            out = list(self._records)
        if user_agent_prefix is not None:
            out = [r for r in out if r.user_agent.startswith(user_agent_prefix)]
        return out

    def clear(self) -> None:
        with self._lock:
            self._records.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)


def now() -> float:
    return time.time()
