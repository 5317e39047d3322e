"""Where a job's sidecars are and how to ask them (``rpcjob top|debug|profile``).

Local jobs (``rpcjob run``): found as ``rpcjob status`` finds them (the state file and the
job's embedded etcd); members are read from etcd's ``members/`` keys, pods from the run's
published status; each sidecar answers on ``<pod IP>:9464``. Cluster jobs: pods by the
job-name label, each sidecar reached through the API server's pod proxy
(``pods/<pod>:9464/proxy/...``: RBAC ``pods/proxy`` get and create).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from rpcjob import contract
from rpcjob.etcd import Client, EtcdError
from rpcjob.records import MemberRecord, read_members
from rpcjob_operator.localexec import control


class TargetError(RuntimeError):
    """Bad input (unknown job or member): exit code 2."""


@dataclass(frozen=True)
class Target:
    """One pod of the job: a member (joined, rank >= 0) or a pod that has not joined."""

    pod: str
    name: str = ""  # RPC worker name; "" while not a member
    rank: int = -1
    node: str = ""
    ip: str = ""
    devices: tuple[str, ...] = ()
    phase: str = ""


Answer = tuple[int, dict[str, Any]]  # HTTP status (0: unreachable), JSON body
Fetch = Callable[[Target, str, str, float], Answer]  # (target, method, path?query, timeout)


@dataclass
class Job:
    name: str
    targets: list[Target]
    fetch: Fetch
    etcd_members: dict[str, int] | None = None  # name -> rank from etcd (None: not readable)
    where: str = "local"

    def ask(self, targets: list[Target], method: str, path: str, wait: float) -> dict[str, Answer]:
        """Each target's answer by pod, asked in parallel (a slow sidecar delays only its own)."""
        if not targets:
            return {}
        with ThreadPoolExecutor(max_workers=min(64, len(targets))) as pool:
            futs = {t.pod: pool.submit(self.fetch, t, method, path, wait) for t in targets}
            return {pod: f.result() for pod, f in futs.items()}

    def members(self) -> list[Target]:
        return [t for t in self.targets if t.rank >= 0]

    def select(self, member: str | None) -> list[Target]:
        if member is None:
            return self.targets
        hits = [t for t in self.targets if member in (t.name, t.pod)]
        if not hits:
            known = ", ".join(sorted(t.name or t.pod for t in self.targets)) or "none"
            raise TargetError(f"job {self.name!r} has no member {member!r} (members: {known})")
        return hits


def _decode(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        return {"error": raw.decode(errors="replace").strip()[:300]}
    return body if isinstance(body, dict) else {"error": f"unexpected answer {body!r}"}


def http_fetch(t: Target, method: str, path: str, timeout: float) -> Answer:
    if not t.ip:
        return 0, {"error": f"pod {t.pod} has no IP yet"}
    url = f"http://{t.ip}:{contract.SIDECAR_HTTP_PORT}{path}"
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status), _decode(resp.read())
    except urllib.error.HTTPError as err:
        return int(err.code), _decode(err.read())
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        return 0, {"error": f"sidecar of {t.pod} unreachable at {url}: {reason}"}


def local_job(name: str) -> Job:
    try:
        reg = control.find(name)
    except control.ControlError as exc:
        raise TargetError(str(exc)) from None
    spec_key, status_key, _ = control.keys(name)
    try:
        with Client(reg.etcd, timeout=5.0) as client:
            status = control.read_json(client, status_key)
            spec = control.read_json(client, spec_key)
            ns = str(spec.get("metadata", {}).get("namespace") or "default")
            members = read_members(client, contract.JobKeys(ns, name, reg.uid))
    except (EtcdError, control.ControlError) as exc:
        raise TargetError(f"cannot read local job {name!r}: {exc}") from None
    targets = merge_targets(status.get("pods") or {}, members)
    return Job(name, targets, http_fetch, {m.name: m.rank for m in members})


def merge_targets(pods: dict[str, Any], members: Iterable[MemberRecord]) -> list[Target]:
    """One target per pod; members carry their record (rank, node, devices). ``pods``:
    pod -> {ip, phase, and in a cluster node and the pod's worker-name label}."""
    by_pod = {m.pod: m for m in members}
    out = []
    for pod in sorted(set(pods) | set(by_pod)):
        info = pods.get(pod) or {}
        m = by_pod.get(pod)
        out.append(
            Target(
                pod=pod,
                name=(m.name if m else "") or str(info.get("name") or ""),
                rank=m.rank if m else -1,
                node=(m.node if m else "") or str(info.get("node") or ""),
                ip=(m.ip if m else "") or str(info.get("ip") or ""),
                devices=m.devices if m else (),
                phase=str(info.get("phase") or ("Running" if m else "")),
            )
        )
    return sorted(out, key=lambda t: (t.rank < 0, t.rank, t.pod))
