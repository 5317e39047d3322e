"""``rpcjob top``: one row per pod from each sidecar's ``/debug/rpc/top``.

torch's agent metrics are gauges (active calls, idle threads); RPCs/s come from the workers'
outgoing call counters: out = my count's delta, in = the deltas of every peer's count
towards me (``rpc_sync``/``rpc_async``; ``remote()`` calls are not counted).
"""

from __future__ import annotations

import time
from typing import Any

from rich.table import Table

from rpcjob_operator.observe.targets import Answer, Job, Target


def poll(job: Job) -> dict[str, Answer]:
    return job.ask(job.targets, "GET", "/debug/rpc/top", 5.0)


def _num(d: dict[str, Any], key: str) -> float | None:
    v = d.get(key)
    return float(v) if isinstance(v, int | float) else None


def rows(
    targets: list[Target], now: dict[str, Answer], before: dict[str, Answer] | None, dt: float
) -> list[dict[str, Any]]:
    """Pure: the table's rows from two polls ``dt`` seconds apart (``before`` None: no rates)."""

    def worker(answers: dict[str, Answer] | None, pod: str) -> dict[str, Any]:
        code, body = (answers or {}).get(pod, (0, {}))
        w = body.get("worker") if code == 200 else None
        return w if isinstance(w, dict) else {}

    def calls(answers: dict[str, Answer] | None) -> dict[str, dict[str, int]]:
        out = {}
        for t in targets:
            w = worker(answers, t.pod)
            if w:
                out[str(w.get("worker"))] = {
                    str(k): int(v) for k, v in (w.get("calls_out") or {}).items()
                }
        return out

    c_now, c_before = calls(now), calls(before) if before is not None else None
    result = []
    for t in targets:
        code, body = now.get(t.pod, (0, {}))
        member = body.get("member") or {}
        w = worker(now, t.pod)
        m = w.get("metrics") or {}
        name = str(w.get("worker") or member.get("name") or t.name)
        size, idle = _num(m, "agent.thread_pool_size"), _num(m, "agent.num_idle_threads")
        row: dict[str, Any] = {
            "rank": w.get("rank", member.get("rank", t.rank)),
            "member": name,
            "pod": t.pod,
            "node": member.get("node") or t.node,
            "devices": list(member.get("devices") or t.devices),
            "state": member.get("state") or (t.phase or "UNKNOWN"),
            "pending_out": _num(m, "agent.client_active_calls"),
            "serving": _num(m, "agent.server_active_calls"),
            "pool_busy": None if size is None or idle is None else int(size - idle),
            "pool_size": size,
            "rpcs_in": None,
            "rpcs_out": None,
            "last_error": "" if code == 200 else str(body.get("error") or f"HTTP {code}"),
        }
        if c_before is not None and dt > 0 and name in c_now and name in c_before:
            row["rpcs_out"] = _delta(c_now[name], c_before[name]) / dt
            row["rpcs_in"] = (
                sum(
                    max(0, c_now[p].get(name, 0) - c_before[p].get(name, 0))
                    for p in c_now
                    if p in c_before and p != name
                )
                / dt
            )
        result.append(row)
    return result


def _delta(now: dict[str, int], before: dict[str, int]) -> int:
    return max(0, sum(now.values()) - sum(before.values()))


def _cell(v: Any, fmt: str = "{:g}") -> str:
    if v is None or v == "":
        return "-"
    if isinstance(v, list):
        return ",".join(v) or "-"
    return fmt.format(v) if isinstance(v, int | float) else str(v)


def table(job: Job, data: list[dict[str, Any]]) -> Table:
    t = Table(
        title=f"rpcjob top — {job.name} ({job.where}) — {time.strftime('%H:%M:%S')}",
        title_justify="left",
        expand=False,
    )
    numbers = ("PENDING OUT", "SERVING", "POOL BUSY", "RPC/s IN", "RPC/s OUT")
    for h in ("RANK", "MEMBER", "POD", "NODE", "DEVICES", "STATE", *numbers, "LAST ERROR"):
        t.add_column(h, justify="right" if h in ("RANK", *numbers) else "left", overflow="fold")
    for r in data:
        busy = "-" if r["pool_busy"] is None else f"{r['pool_busy']}/{int(r['pool_size'])}"
        state = r["state"]
        style = "green" if state == "JOINED" else "yellow" if not r["last_error"] else "red"
        t.add_row(
            _cell(r["rank"]),
            r["member"] or "-",
            r["pod"],
            _cell(r["node"]),
            _cell(r["devices"]),
            f"[{style}]{state}[/{style}]",
            _cell(r["pending_out"]),
            _cell(r["serving"]),
            busy,
            _cell(r["rpcs_in"], "{:.1f}"),
            _cell(r["rpcs_out"], "{:.1f}"),
            r["last_error"][:60] or "",
        )
    return t
