"""Merge the members' profiles into one Chrome/Perfetto trace and a text summary (pure).

Per member (one process lane each): the remote functions it served (sampled ``callee``
spans), the ``rpc_sync`` calls it waited on (``caller`` spans), and torch's server-process
profiler output (one ``rpc request`` span per request callback, its ops inside). A flow arrow
links each caller span to the callee span on its peer that ran the same function within it.
Times are epoch microseconds in the inputs and relative to the earliest event in the trace.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

TORCH_TID_BASE = 1 << 40  # torch's profiler thread ids apart from Python thread idents


def merge(job: str, results: dict[str, dict[str, Any]], seconds: float) -> dict[str, Any]:
    """``results``: member name -> its sidecar's ``/debug/rpc/profile`` answer."""
    names = sorted(results)
    pid_of = {n: i + 1 for i, n in enumerate(names)}
    profiles = {n: results[n].get("profile") or {} for n in names}
    starts = [s["start_us"] for p in profiles.values() for s in p.get("spans", [])]
    starts += [r["start_us"] for p in profiles.values() for r in p.get("requests", [])]
    t0 = min(starts) if starts else 0.0
    events: list[dict[str, Any]] = []
    for n in names:
        member = results[n].get("member") or {}
        label = f"{n} (rank {member.get('rank', '?')}, pod {member.get('pod', '?')})"
        if not results[n].get("complete"):
            label += " PARTIAL"
        events.append(_meta(pid_of[n], "process_name", {"name": label}))
        events.append(_meta(pid_of[n], "process_sort_index", {"sort_index": pid_of[n]}))
    for n in names:
        events.extend(_member_events(pid_of[n], profiles[n], t0))
    events.extend(_flows(profiles, pid_of, t0))
    partial = {
        n: str(results[n].get("error") or "incomplete")
        for n in names
        if not results[n].get("complete")
    }
    return {
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "metadata": {
            "job": job,
            "seconds": seconds,
            "t0_epoch_us": t0,
            "members": names,
            "partial": bool(partial),
            "partial_members": partial,
        },
    }


def _meta(pid: int, name: str, args: dict[str, Any], **ids: int) -> dict[str, Any]:
    return {"ph": "M", "name": name, "pid": pid, **ids, "args": args}


def _x(pid: int, tid: int, name: str, cat: str, span: dict[str, Any], t0: float,
       args: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """A complete event over ``span``'s ``start_us`` .. ``end_us``."""
    start, end = span["start_us"], span["end_us"]
    return {"ph": "X", "pid": pid, "tid": tid, "name": name, "cat": cat, "ts": start - t0,
            "dur": max(0.0, end - start), "args": args or {}}  # fmt: skip


def _member_events(pid: int, p: dict[str, Any], t0: float) -> list[dict[str, Any]]:
    out = []
    threads: set[tuple[int, str]] = set()
    for s in p.get("spans", []):
        tid = int(s["thread"])
        threads.add((tid, "rpc server thread" if s["kind"] == "callee" else "caller thread"))
        name = s["name"] if s["kind"] == "callee" else f"rpc_sync {s['name']} -> {s['peer']}"
        args = {"function": s["name"], "peer": s.get("peer", "")}
        out.append(_x(pid, tid, name, f"rpc.{s['kind']}", s, t0, args))
    for r in p.get("requests", []):
        tid = TORCH_TID_BASE + int(r["thread"])
        threads.add((tid, "torch profiler"))
        out.append(_x(pid, tid, "rpc request", "torch.request", r, t0, {"ops": r["ops"]}))
    for o in p.get("ops", []):
        out.append(_x(pid, TORCH_TID_BASE + int(o["thread"]), o["name"], "torch.op", o, t0))
    for tid, label in sorted(threads):
        out.append(_meta(pid, "thread_name", {"name": f"{label} {tid % TORCH_TID_BASE}"}, tid=tid))
    return out


def _flows(
    profiles: dict[str, dict[str, Any]], pid_of: dict[str, int], t0: float
) -> list[dict[str, Any]]:
    """caller span (A calls f on B) -> B's callee span of f that starts within it."""
    callees: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for n, p in profiles.items():
        for s in p.get("spans", []):
            if s["kind"] == "callee":
                callees[(n, s["name"])].append(s)
    out: list[dict[str, Any]] = []
    used: set[int] = set()
    for n in sorted(profiles):
        for s in profiles[n].get("spans", []):
            if s["kind"] != "caller" or s.get("peer") not in pid_of:
                continue
            match = next(
                (
                    c
                    for c in callees[(s["peer"], s["name"])]
                    if id(c) not in used and s["start_us"] <= c["start_us"] <= s["end_us"]
                ),
                None,
            )
            if match is None:
                continue
            used.add(id(match))
            match.setdefault("caller", n)
            flow: dict[str, Any] = {"id": len(out) // 2 + 1, "name": "rpc", "cat": "rpc.flow"}
            ts = match["start_us"] - t0
            out.append({"ph": "s", **flow, "pid": pid_of[n], "tid": int(s["thread"]),
                        "ts": max(s["start_us"] - t0, ts)})  # fmt: skip
            out.append({"ph": "f", "bp": "e", **flow, "pid": pid_of[s["peer"]],
                        "tid": int(match["thread"]), "ts": ts})  # fmt: skip
    return out


def slowest(results: dict[str, dict[str, Any]], top: int = 5) -> dict[str, list[dict[str, Any]]]:
    """Per member: the remote functions it served, slowest (longest single call) first."""
    out: dict[str, list[dict[str, Any]]] = {}
    for n, res in sorted(results.items()):
        acc: dict[str, list[float]] = defaultdict(list)
        for s in (res.get("profile") or {}).get("spans", []):
            if s["kind"] == "callee":
                acc[s["name"]].append((s["end_us"] - s["start_us"]) / 1000.0)
        rows: list[dict[str, Any]] = [
            {
                "function": f,
                "calls": len(d),
                "max_ms": max(d),
                "total_ms": sum(d),
                "mean_ms": sum(d) / len(d),
            }
            for f, d in acc.items()
        ]
        out[n] = sorted(rows, key=lambda r: (-float(r["max_ms"]), -float(r["total_ms"])))[:top]
    return out


def summary(job: str, results: dict[str, dict[str, Any]], seconds: float) -> str:
    lines = [f"profile of {job}: {len(results)} member(s), {seconds:g}s"]
    bad = {n: r for n, r in results.items() if not r.get("complete")}
    if bad:
        lines.append(
            "PARTIAL RESULT: "
            + "; ".join(f"{n}: {r.get('error') or 'incomplete'}" for n, r in sorted(bad.items()))
        )
    for n, rows in slowest(results).items():
        p = results[n].get("profile") or {}
        note = "" if results[n].get("complete") else "  (partial: no profile)"
        lines.append(f"\n{n}: {len(p.get('requests', []))} request(s) profiled by torch{note}")
        if not rows:
            lines.append(
                "  no remote function was seen running (sampled every "
                f"{p.get('sample_interval_ms', '?')} ms)"
            )
        for r in rows:
            lines.append(
                f"  {r['max_ms']:9.1f} ms max {r['mean_ms']:9.1f} ms mean "
                f"{r['calls']:6d} call(s)  {r['function']}"
            )
    return "\n".join(lines)
