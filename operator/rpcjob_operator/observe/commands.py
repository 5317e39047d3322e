"""``rpcjob top``, ``rpcjob debug``, ``rpcjob profile`` (docs/observability.md)."""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console
from rich.live import Live

from rpcjob_operator.observe import debug as dbg
from rpcjob_operator.observe import top as tp
from rpcjob_operator.observe import trace as tr
from rpcjob_operator.observe.targets import Job, TargetError, local_job

EXIT_INCONSISTENT = 1
EXIT_PARTIAL = 1
EXIT_USAGE = 2
F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    click.echo(f"rpcjob: error: {message}", err=True)
    raise SystemExit(code)


def cluster_options(f: F) -> F:
    """Cluster mode: any of these options reaches the job through the API server."""
    f = click.option("--context", help="kubeconfig context (cluster mode).")(f)
    f = click.option(
        "--kubeconfig",
        type=click.Path(dir_okay=False),
        help="Reach a cluster job through the API server's pod proxy.",
    )(f)
    f = click.option("-n", "--namespace", help="The job's namespace (cluster mode).")(f)
    return click.option(
        "--cluster", is_flag=True, help="The job is an RpcJob in a cluster (default kubeconfig)."
    )(f)


def _seconds_option(
    flag: str, default: float, low: float, high: float, help: str
) -> Callable[[F], F]:
    """A duration option bounded to [low, high], its default shown in --help."""
    return click.option(
        flag, default=default, show_default=True, type=click.FloatRange(low, high), help=help
    )


def _job(name: str, opts: dict[str, Any]) -> Job:
    try:
        if opts.get("cluster") or opts.get("kubeconfig") or opts.get("namespace"):
            from rpcjob_operator.observe.cluster import cluster_job

            return cluster_job(
                name, opts.get("namespace"), opts.get("kubeconfig"), opts.get("context")
            )
        return local_job(name)
    except TargetError as exc:
        fail(str(exc))


@click.command()
@click.argument("job")
@click.option("--json", "json_mode", is_flag=True, help="Print one snapshot as JSON and exit.")
@click.option("--once", is_flag=True, help="Print the table once and exit.")
@_seconds_option(
    "--interval",
    1.0,
    0.1,
    60,
    "Seconds between refreshes (and between the two polls of --json/--once).",
)
@cluster_options
def top(job: str, json_mode: bool, once: bool, interval: float, **opts: Any) -> None:
    """A live table of JOB's members: rank, pod, node, devices, state, pending RPCs,
    thread-pool use, RPCs/s in and out, last error."""
    j = _job(job, opts)
    before, t_before = tp.poll(j), time.monotonic()
    if json_mode or once:
        time.sleep(interval)  # the rate window
        now = tp.poll(j)
        data = tp.rows(j.targets, now, before, time.monotonic() - t_before)
        if json_mode:
            click.echo(
                json.dumps({"job": j.name, "where": j.where, "time": time.time(), "members": data})
            )
        else:
            Console().print(tp.table(j, data))
        return
    console = Console()
    with Live(console=console, auto_refresh=False, screen=False) as live:
        try:
            while True:
                time.sleep(interval)  # the refresh period
                now, t_now = tp.poll(j), time.monotonic()
                live.update(
                    tp.table(j, tp.rows(j.targets, now, before, t_now - t_before)), refresh=True
                )
                before, t_before = now, t_now
                j = _job(job, opts)  # pods come and go
        except KeyboardInterrupt:
            return


@click.command()
@click.argument("job")
@click.argument("member", required=False)
@click.option("--json", "json_mode", is_flag=True, help="Print the answers and verdict as JSON.")
@cluster_options
def debug(job: str, member: str | None, json_mode: bool, **opts: Any) -> None:
    """Every member's get_debug_info(), worker list and device maps, and whether the group's
    views agree with etcd's membership (exit code 1 when they do not)."""
    j = _job(job, opts)
    try:
        chosen = j.select(member)
    except TargetError as exc:
        fail(str(exc))
    answers = j.ask(chosen, "GET", "/debug/rpc/info", 15.0)
    for t in chosen:  # a sidecar that did not answer: what the pod list and status say
        _code, body = answers[t.pod]
        body.setdefault("member", _unanswered(t))
    views = {
        (b.get("member") or {}).get("name") or t: (b.get("worker") if c == 200 else None)
        for t, (c, b) in answers.items()
    }
    etcd = j.etcd_members
    if etcd is None:  # cluster: the sidecars' own view of etcd's members/ keys
        etcd = _etcd_from_sidecars(answers)
    # One MEMBER: its own view against etcd (the others were not asked).
    result = dbg.check(etcd, views, all_asked=member is None)
    bodies = {t: b for t, (_c, b) in answers.items()}
    if json_mode:
        click.echo(
            json.dumps(
                {
                    "job": j.name,
                    "etcd_members": etcd,
                    "members": bodies,
                    "consistent": result.ok,
                    "problems": result.problems,
                    "missing_maps": result.missing_maps,
                }
            )
        )
    else:
        click.echo(dbg.report(j.name, etcd, bodies, result))
    if not result.ok:
        raise SystemExit(EXIT_INCONSISTENT)


def _unanswered(t: Any) -> dict[str, Any]:
    return {
        "name": t.name or t.pod,
        "pod": t.pod,
        "rank": t.rank if t.rank >= 0 else "-",
        "node": t.node,
        "state": f"no answer (pod {t.phase or 'unknown'})",
    }


def _etcd_from_sidecars(answers: dict[str, tuple[int, dict[str, Any]]]) -> dict[str, int]:
    """Cluster mode (no etcd client): etcd's membership as the sidecars read it, the view
    most of them report (they differ only while a change propagates). A sidecar without
    ``etcd_ranks`` (older) contributes itself when joined."""
    views: Counter[tuple[tuple[str, int], ...]] = Counter()
    joined: dict[str, int] = {}
    for _code, body in answers.values():
        m = body.get("member") or {}
        if isinstance(m.get("etcd_ranks"), dict):
            views[tuple(sorted((str(n), int(r)) for n, r in m["etcd_ranks"].items()))] += 1
        elif m.get("state") == "JOINED" and m.get("name"):
            joined[str(m["name"])] = int(m.get("rank", -1))
    if views:
        return dict(views.most_common(1)[0][0])
    return joined


@click.command()
@click.argument("job")
@_seconds_option("--seconds", 5.0, 0.1, 300, "How long the profiler runs on every member.")
@click.option(
    "-o",
    "--output",
    default="trace.json",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="The merged Chrome/Perfetto trace.",
)
@_seconds_option(
    "--interval-ms", 2.0, 0.5, 1000, "Stack sampling period that names the remote functions."
)
@cluster_options
def profile(job: str, seconds: float, output: str, interval_ms: float, **opts: Any) -> None:
    """Profile every member of JOB at once for --seconds: one trace (a process lane per
    member, RPCs linked caller -> callee) and the slowest remote functions per member."""
    j = _job(job, opts)
    members = j.members()
    if not members:
        fail(f"job {job!r} has no joined member to profile (see 'rpcjob top {job}')", 1)
    path = f"/debug/rpc/profile?seconds={seconds:g}&interval_ms={interval_ms:g}"
    click.echo(f"profiling {len(members)} member(s) of {job} for {seconds:g}s ...", err=True)
    answers = j.ask(members, "POST", path, seconds + 60.0)
    results: dict[str, dict[str, Any]] = {}
    for t in members:
        code, body = answers[t.pod]
        body = dict(body)
        body.setdefault("member", {"name": t.name, "pod": t.pod, "rank": t.rank})
        if code != 200:
            body["complete"] = False
            body.setdefault("error", f"HTTP {code}")
        results[t.name or t.pod] = body
    trace = tr.merge(j.name, results, seconds)
    Path(output).write_text(json.dumps(trace))
    click.echo(tr.summary(j.name, results, seconds))
    click.echo(f"\ntrace: {output} (open in https://ui.perfetto.dev or chrome://tracing)")
    if trace["metadata"]["partial"]:
        click.echo(
            "rpcjob: profile is PARTIAL: "
            + "; ".join(f"{n}: {e}" for n, e in trace["metadata"]["partial_members"].items()),
            err=True,
        )
        sys.exit(EXIT_PARTIAL)


COMMANDS = (top, debug, profile)
