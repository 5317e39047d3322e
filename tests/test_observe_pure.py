"""Pure parts of rpcjob top/debug/profile: the consistency checker, the top rows and the trace
merger (table-driven; docs/observability.md)."""

from __future__ import annotations

from typing import Any

import pytest

from rpcjob.records import MemberRecord
from rpcjob_operator.observe import cluster, commands, debug, top, trace
from rpcjob_operator.observe.targets import Target, merge_targets


def _view(*workers: tuple[str, int], devices: tuple[str, ...] = (),
          maps: dict[str, dict[str, str]] | None = None) -> dict[str, Any]:  # fmt: skip
    return {
        "worker_infos": [{"name": n, "rank": r} for n, r in workers],
        "devices": list(devices),
        "device_maps": maps or {},
    }


ETCD = {"a": 0, "b": 1}
GPU = ("cuda:0",)
CASES = [
    ("agree", ETCD, {"a": _view(("a", 0), ("b", 1)), "b": _view(("a", 0), ("b", 1))}, []),
    (
        "stale member after a crash",
        ETCD,
        {"a": _view(("a", 0), ("b", 1), ("c", 2)), "b": _view(("a", 0), ("b", 1))},
        ["a lists workers that are not members in etcd: c(rank 2)"],
    ),
    (
        "missing member",
        ETCD,
        {"a": _view(("a", 0)), "b": _view(("a", 0), ("b", 1))},
        ["a does not list members that etcd has: b(rank 1)"],
    ),
    (
        "same name, old rank",
        ETCD,
        {"a": _view(("a", 0), ("b", 7)), "b": _view(("a", 0), ("b", 1))},
        [
            "a lists workers that are not members in etcd: b(rank 7)",
            "a does not list members that etcd has: b(rank 1)",
        ],
    ),
    (
        "silent member",
        ETCD,
        {"a": _view(("a", 0), ("b", 1)), "b": None},
        ["b did not answer: its view cannot be checked"],
    ),
    (
        "member without a pod",
        ETCD,
        {"a": _view(("a", 0), ("b", 1))},
        ["b is a member in etcd but was not asked (no pod found)"],
    ),
    (
        "device map missing one way",
        ETCD,
        {
            "a": _view(("a", 0), ("b", 1), devices=GPU, maps={"b": {"cuda:0": "cuda:0"}}),
            "b": _view(("a", 0), ("b", 1), devices=GPU),
        },
        ["b has no device map to a"],
    ),
    (
        "CPU members need no maps",
        ETCD,
        {"a": _view(("a", 0), ("b", 1), devices=GPU), "b": _view(("a", 0), ("b", 1))},
        [],
    ),
]


@pytest.mark.parametrize(("etcd", "views", "problems"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])  # fmt: skip
def test_consistency(etcd: dict[str, int], views: dict[str, Any], problems: list[str]) -> None:
    result = debug.check(etcd, views)
    assert result.problems == problems
    assert result.ok == (not problems)


def test_consistency_of_one_member_ignores_the_others() -> None:
    result = debug.check(ETCD, {"a": _view(("a", 0), ("b", 1))}, all_asked=False)
    assert result.ok, result.problems


def test_report_says_inconsistent_and_why() -> None:
    res = debug.check(ETCD, {"a": _view(("a", 0)), "b": None})
    text = debug.report("j", ETCD, {"j-a": {"member": {"name": "a"}}, "j-b": {"error": "x"}}, res)
    assert "INCONSISTENT" in text and "b did not answer" in text and "error: x" in text


def _top(name: str, rank: int, calls: dict[str, int], idle: int = 14) -> tuple[int, Any]:
    metrics = {"agent.thread_pool_size": 16, "agent.num_idle_threads": idle,
               "agent.client_active_calls": 1, "agent.server_active_calls": 2}  # fmt: skip
    return 200, {
        "member": {"name": name, "rank": rank, "state": "JOINED", "node": "n1"},
        "worker": {"worker": name, "rank": rank, "metrics": metrics, "calls_out": calls},
    }


def test_top_rates_from_call_counters() -> None:
    targets = [Target("p-a", "a", 0), Target("p-b", "b", 1), Target("p-c", "c", 2)]
    before = {"p-a": _top("a", 0, {}), "p-b": _top("b", 1, {"a": 10}),
              "p-c": _top("c", 1, {"a": 5, "b": 1})}  # fmt: skip
    now = {"p-a": _top("a", 0, {"b": 4}), "p-b": _top("b", 1, {"a": 30}),
           "p-c": (0, {"error": "sidecar of p-c unreachable"})}  # fmt: skip
    rows = {r["member"]: r for r in top.rows(targets, now, before, 2.0)}
    assert rows["a"]["rpcs_out"] == 2.0 and rows["a"]["rpcs_in"] == 10.0  # b's 20 calls / 2 s
    assert rows["b"]["rpcs_out"] == 10.0 and rows["b"]["rpcs_in"] == 2.0
    assert rows["a"]["pool_busy"] == 2 and rows["a"]["pending_out"] == 1
    assert rows["c"]["last_error"] == "sidecar of p-c unreachable" and rows["c"]["rpcs_in"] is None
    first = top.rows(targets, now, None, 0.0)
    assert all(r["rpcs_in"] is None for r in first)


def test_targets_merge_pods_and_members() -> None:
    pods = {"j-w-0": {"phase": "Running", "ip": "127.0.0.2"}, "j-w-1": {"phase": "Pending"}}
    recs = [MemberRecord("w_0", 3, pod="j-w-0", node="n", ip="127.0.0.2")]
    got = merge_targets(pods, recs)
    assert [(t.pod, t.name, t.rank) for t in got] == [("j-w-0", "w_0", 3), ("j-w-1", "", -1)]
    # A cluster pod that is not a member (yet) keeps its worker-name label and node.
    pods["j-w-1"].update(name="w_1", node="n2")
    assert [(t.name, t.node) for t in merge_targets(pods, recs)] == [("w_0", "n"), ("w_1", "n2")]


def _span(kind: str, name: str, start: float, end: float, tid: int = 1,
          peer: str = "") -> dict[str, Any]:  # fmt: skip
    return {"kind": kind, "name": name, "peer": peer, "thread": tid,
            "start_us": start, "end_us": end}  # fmt: skip


def _res(spans: list[dict[str, Any]], complete: bool = True, **extra: Any) -> dict[str, Any]:
    return {"member": {"rank": 0, "pod": "p"}, "complete": complete, **extra,
            "profile": {"spans": spans, "requests": [{"thread": 9, "start_us": 1000.0,
                        "end_us": 1200.0, "ops": 1}],
                        "ops": [{"name": "aten::add", "thread": 9, "start_us": 1100.0,
                                 "end_us": 1150.0}]}}  # fmt: skip


def test_trace_lanes_flows_and_times() -> None:
    results = {
        "srv": _res([_span("callee", "m.slow", 1000, 151000, tid=7),
                     _span("callee", "m.fast", 160000, 160500, tid=8)]),
        "cli": _res([_span("caller", "m.slow", 900, 152000, tid=3, peer="srv"),
                     _span("caller", "m.fast", 159000, 161000, tid=3, peer="srv")]),
    }  # fmt: skip
    t = trace.merge("job", results, 1.0)
    ev = t["traceEvents"]
    names = {e["args"]["name"] for e in ev if e["name"] == "process_name"}
    assert names == {"srv (rank 0, pod p)", "cli (rank 0, pod p)"}
    xs = [e for e in ev if e["ph"] == "X"]
    assert min(e["ts"] for e in xs) == 0  # relative to the earliest event
    slow = next(e for e in xs if e["name"] == "m.slow")
    assert slow["dur"] == 150000 and slow["ts"] == 100
    flows = [e for e in ev if e["ph"] in "sf"]
    assert len(flows) == 4  # two RPCs, each an s/f pair
    s, f = flows[0], flows[1]
    assert (s["pid"], f["pid"], s["id"]) == (1, 2, f["id"])  # cli (pid 1) -> srv (pid 2)
    assert any(e["cat"] == "torch.op" for e in xs) and t["metadata"]["partial"] is False


def test_trace_partial_member_is_marked() -> None:
    results = {
        "srv": _res([_span("callee", "m.slow", 0, 10)]),
        "gone": _res([], complete=False, error="profile incomplete: worker died"),
    }
    t = trace.merge("job", results, 1.0)
    assert t["metadata"]["partial"] is True
    assert t["metadata"]["partial_members"] == {"gone": "profile incomplete: worker died"}
    label = next(e["args"]["name"] for e in t["traceEvents"]
                 if e["name"] == "process_name" and e["pid"] == 1)  # fmt: skip
    assert label.endswith("PARTIAL")
    text = trace.summary("job", results, 1.0)
    assert text.splitlines()[1].startswith("PARTIAL RESULT: gone: profile incomplete")


def test_summary_puts_the_slowest_function_first() -> None:
    spans = [_span("callee", "m.fast", i * 1000, i * 1000 + 300) for i in range(50)]
    spans += [_span("callee", "m.slow", 10**6, 10**6 + 150000)]
    rows = trace.slowest({"srv": _res(spans)})["srv"]
    assert [r["function"] for r in rows] == ["m.slow", "m.fast"]
    assert rows[1]["calls"] == 50 and rows[0]["max_ms"] == 150.0


def test_cluster_mode_bad_kubeconfig_is_a_usage_error(tmp_path: Any) -> None:
    from click.testing import CliRunner

    from rpcjob_operator.cli import cli

    missing = str(tmp_path / "nope.yaml")
    res = CliRunner().invoke(cli, ["debug", "j", "--kubeconfig", missing])
    assert res.exit_code == 2
    assert f"cannot load the kubeconfig ({missing})" in res.output
    assert "pass --kubeconfig" in res.output


FORBIDDEN = [
    (
        'pods "p" is forbidden: User "system:serviceaccount:ml:bob" cannot create resource '
        '"pods/proxy" in API group "" in the namespace "ml"',
        "kubectl create rolebinding bob-rpcjob-debug -n ml --clusterrole=rpcjob-debugger "
        "--serviceaccount=ml:bob",
    ),
    (
        'rpcjobs.rpcjob.dev "j" is forbidden: User "Alice@Example" cannot get resource',
        "kubectl create rolebinding alice-example-rpcjob-debug -n ml "
        "--clusterrole=rpcjob-debugger --user=Alice@Example",
    ),
    ("forbidden", "--clusterrole=rpcjob-debugger --user=<you>"),
]


@pytest.mark.parametrize(("message", "command"), FORBIDDEN)
def test_forbidden_names_the_role_and_the_binding(message: str, command: str) -> None:
    hint = cluster.forbidden_hint(message, "ml")
    assert hint.startswith("ask a cluster admin to bind the chart's ClusterRole rpcjob-debugger")
    assert command in hint


def test_api_server_status_becomes_an_error() -> None:
    status = {"kind": "Status", "code": 503, "message": "error trying to reach service: refused"}
    assert cluster.api_error(503, status, "ml") == {
        "error": "API server: error trying to reach service: refused"
    }
    denied = {"kind": "Status", "message": 'User "u" cannot create resource "pods/proxy"'}
    err = cluster.api_error(403, denied, "ml")["error"]
    assert err.startswith('API server: User "u" cannot') and "--user=u" in err
    sidecar = {"error": "use GET"}  # the sidecar's own answers pass through
    assert cluster.api_error(405, sidecar, "ml") is sidecar


def _member(name: str, state: str = "JOINED", **extra: Any) -> tuple[int, dict[str, Any]]:
    return 200, {"member": {"name": name, "rank": 0, "state": state, **extra}}


ETCD_VIEWS = [
    ("one member asked", {"p1": _member("w_1", etcd_ranks={"w_0": 0, "w_1": 1})},
     {"w_0": 0, "w_1": 1}),
    ("most sidecars' view wins", {
        "p0": _member("w_0", etcd_ranks={"w_0": 0}),
        "p1": _member("w_1", etcd_ranks={"w_0": 0, "w_1": 1}),
        "p2": _member("w_2", etcd_ranks={"w_0": 0, "w_1": 1}),
    }, {"w_0": 0, "w_1": 1}),
    ("older sidecars: the joined ones themselves", {
        "p0": _member("w_0"), "p1": _member("w_1", "NO_WORKER"),
    }, {"w_0": 0}),
    ("nobody answered", {"p0": (0, {"error": "unreachable"})}, {}),
]  # fmt: skip


@pytest.mark.parametrize(("answers", "want"), [c[1:] for c in ETCD_VIEWS],
                         ids=[c[0] for c in ETCD_VIEWS])  # fmt: skip
def test_cluster_debug_reads_etcd_through_the_sidecars(
    answers: dict[str, Any], want: dict[str, int]
) -> None:
    assert commands._etcd_from_sidecars(answers) == want
