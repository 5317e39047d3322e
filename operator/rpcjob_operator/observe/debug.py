"""``rpcjob debug``: every member's agent view and the group's consistency.

A group is consistent when every member answers, every member's agent lists exactly etcd's
membership (names and ranks; etcd's ``members/`` keys, docs/contract.md §4) and every member
with devices has a device map to every other member with devices (docs/devices.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Consistency:
    ok: bool
    problems: list[str] = field(default_factory=list)
    missing_maps: dict[str, list[str]] = field(default_factory=dict)


def check(
    etcd: dict[str, int], views: dict[str, dict[str, Any] | None], all_asked: bool = True
) -> Consistency:
    """Pure. ``etcd``: name -> rank; ``views``: member name -> its worker snapshot
    (``worker_infos``, ``devices``, ``device_maps``), None when it did not answer;
    ``all_asked`` False when only some members were asked (``rpcjob debug JOB MEMBER``)."""
    problems: list[str] = []
    missing_maps: dict[str, list[str]] = {}
    want = {(n, r) for n, r in etcd.items()}
    for name in sorted(etcd) if all_asked else ():
        if name not in views:
            problems.append(f"{name} is a member in etcd but was not asked (no pod found)")
    for name, view in sorted(views.items()):
        if view is None:
            problems.append(f"{name} did not answer: its view cannot be checked")
            continue
        seen = {(str(w["name"]), int(w["rank"])) for w in view.get("worker_infos") or []}
        extra, missing = sorted(seen - want), sorted(want - seen)
        if extra:
            problems.append(
                f"{name} lists workers that are not members in etcd: "
                + ", ".join(f"{n}(rank {r})" for n, r in extra)
            )
        if missing:
            problems.append(
                f"{name} does not list members that etcd has: "
                + ", ".join(f"{n}(rank {r})" for n, r in missing)
            )
    with_devices = {n for n, v in views.items() if v and v.get("devices")}
    for name in sorted(with_devices):
        maps = views[name].get("device_maps") or {}  # type: ignore[union-attr]
        gaps = sorted(p for p in with_devices if p != name and not maps.get(p))
        if gaps:
            missing_maps[name] = gaps
            problems.append(f"{name} has no device map to " + ", ".join(gaps))
    return Consistency(not problems, problems, missing_maps)


def report(
    job: str, etcd: dict[str, int], answers: dict[str, dict[str, Any]], result: Consistency
) -> str:
    """The readable report: one block per member, then the verdict."""
    members = ", ".join(f"{n}(rank {r})" for n, r in sorted(etcd.items(), key=lambda x: x[1]))
    lines = [f"job {job}: {len(etcd)} member(s) in etcd: {members or 'none'}"]
    for pod, body in answers.items():
        member, w = body.get("member") or {}, body.get("worker") or {}
        lines.append("")
        lines.append(
            f"== {member.get('name') or pod}  pod {pod}  rank {member.get('rank', '-')}"
            f"  node {member.get('node') or '-'}  state {member.get('state', '?')}"
        )
        if body.get("error"):
            lines.append(f"   error: {body['error']}")
        if not w:
            continue
        infos = ", ".join(f"{i['name']}({i['rank']})" for i in w.get("worker_infos") or [])
        lines.append(f"   agent workers: {infos or '-'}")
        lines.append(f"   devices: {', '.join(w.get('devices') or []) or 'none (CPU)'}")
        for peer, m in sorted((w.get("device_maps") or {}).items()):
            pairs = ", ".join(f"{a}->{b}" for a, b in sorted(m.items())) or "none"
            lines.append(f"   device map to {peer}: {pairs}")
        for k, v in sorted((w.get("debug_info") or {}).items()):
            lines.append(f"   {k} = {v}")
    lines.append("")
    if result.ok:
        lines.append("consistent: every member's agent lists etcd's membership")
    else:
        lines.append("INCONSISTENT:")
        lines.extend(f"  - {p}" for p in result.problems)
    return "\n".join(lines)
