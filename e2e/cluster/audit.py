"""The API server's audit log (Metadata level, JSON lines) read back as records for tests: the
RBAC scenario compares the operator's real calls with the chart's roles."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

# Every request at Metadata level, one event per request (its last stage).
POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived", "ResponseStarted"]
rules:
  - level: Metadata
"""


@dataclass(frozen=True)
class AuditRecord:
    verb: str  # get list watch create update patch delete deletecollection (RBAC verbs)
    group: str  # "" for core
    version: str
    resource: str  # plural, "" for non-resource URLs
    subresource: str
    namespace: str
    name: str
    user_agent: str
    code: int
    path: str
    time: float
    user: str = ""  # who made it (a ServiceAccount: system:serviceaccount:<ns>:<name>)


def read(path: Path) -> list[AuditRecord]:
    """The records of ``path`` (a partly written last line is skipped)."""
    out = []
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    for line in lines:
        try:
            ev = json.loads(line)
        except json.JSONDecodeError:
            continue
        ref = ev.get("objectRef") or {}
        stamp = ev.get("stageTimestamp") or ev.get("requestReceivedTimestamp") or ""
        out.append(
            AuditRecord(
                verb=ev.get("verb", ""),
                group=ref.get("apiGroup", ""),
                version=ref.get("apiVersion", ""),
                resource=ref.get("resource", ""),
                subresource=ref.get("subresource", ""),
                namespace=ref.get("namespace", ""),
                name=ref.get("name", ""),
                user_agent=ev.get("userAgent", ""),
                code=int((ev.get("responseStatus") or {}).get("code", 0)),
                path=ev.get("requestURI", ""),
                user=(ev.get("user") or {}).get("username", ""),
                time=datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
                if stamp
                else 0.0,
            )
        )
    return out
