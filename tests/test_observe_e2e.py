"""rpcjob top / debug / profile end to end on ``rpcjob run``: real etcd, sidecars, workers
(tests/observe_app: workers call the server's deliberately slow remote function)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from etcd_waits import wait_until
from localrun import REPO, LocalRun, base_env, rpcjob, worker_pid

from rpcjob_operator.observe import targets

pytestmark = pytest.mark.slow
JOB = "observe-demo"
APP = "tests/observe_app/rpcjob.yaml"
SLOW = "__main__.slow_remote"


@dataclass
class Running:
    run: LocalRun
    env: dict[str, str]
    uid: str


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    tmp = tmp_path_factory.mktemp("observe")
    env = base_env(tmp)
    run = LocalRun(APP, env=env)
    try:
        ev = run.wait_event(lambda e: e.get("type") == "job", 60, "the job line")
        run.wait_event(lambda e: e.get("reason") == "GroupFormed", 240, "the group to form")
        yield Running(run, env, str(ev["uid"]))
    finally:
        run.kill()


def _top(job: Running) -> dict[str, dict[str, object]]:
    res = rpcjob("top", JOB, "--json", env=job.env)
    assert res.returncode == 0, res.stderr
    return {m["member"]: m for m in json.loads(res.stdout)["members"]}


def test_top_json_shows_every_member_and_rates(job: Running) -> None:
    rows: dict[str, dict[str, object]] = {}

    def busy() -> bool:
        nonlocal rows
        rows = _top(job)
        return all(r["state"] == "JOINED" for r in rows.values()) and bool(
            rows.get("server_0", {}).get("rpcs_in")
        )

    wait_until(busy, 60, "every member JOINED and the server receiving RPCs")
    assert set(rows) == {"server_0", "worker_0", "worker_1"}
    assert len({r["rank"] for r in rows.values()}) == 3
    srv = rows["server_0"]
    assert srv["pod"] == "observe-demo-server-0" and srv["pool_size"] == 16
    assert float(rows["worker_0"]["rpcs_out"] or 0) > 0  # type: ignore[arg-type]
    assert all(r["last_error"] == "" for r in rows.values())


def test_top_once_prints_the_table(job: Running) -> None:
    res = rpcjob("top", JOB, "--once", env=dict(job.env, COLUMNS="200"))
    assert res.returncode == 0, res.stderr
    assert "rpcjob top" in res.stdout and "server_0" in res.stdout and "JOINED" in res.stdout


def test_debug_healthy_group_is_consistent(job: Running) -> None:
    res = rpcjob("debug", JOB, env=job.env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "consistent: every member's agent lists etcd's membership" in res.stdout
    workers = [line for line in res.stdout.splitlines() if "agent workers:" in line]
    assert len(workers) == 3 and all("server_0(" in w and "worker_1(" in w for w in workers)
    assert "agent.thread_pool_size = 16" in res.stdout
    one = rpcjob("debug", JOB, "worker_1", "--json", env=job.env)
    assert one.returncode == 0, one.stdout + one.stderr
    body = json.loads(one.stdout)
    assert body["consistent"] and list(body["members"]) == ["observe-demo-worker-1"]


def test_unknown_member_and_job(job: Running) -> None:
    res = rpcjob("debug", JOB, "worker_9", env=job.env)
    assert res.returncode == 2
    want = "job 'observe-demo' has no member 'worker_9' (members: server_0, worker_0, worker_1)"
    assert want in res.stderr
    for cmd in (["top", "nosuchjob", "--json"], ["debug", "nosuchjob"],
                ["profile", "nosuchjob", "--seconds", "1"]):  # fmt: skip
        res = rpcjob(*cmd, env=job.env)
        assert res.returncode == 2, cmd
        assert "no local job named 'nosuchjob' is running (running: observe-demo)" in res.stderr


def test_profile_puts_the_slow_function_first(job: Running, tmp_path: Path) -> None:
    out = tmp_path / "trace.json"
    res = rpcjob("profile", JOB, "--seconds", "3", "-o", str(out), env=job.env, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    srv = lines.index(next(line for line in lines if line.startswith("server_0:")))
    assert lines[srv + 1].endswith(SLOW), res.stdout  # the slowest remote function first
    trace = json.loads(out.read_text())
    assert trace["metadata"]["partial"] is False
    ev = trace["traceEvents"]
    lanes = {e["pid"]: e["args"]["name"] for e in ev if e["name"] == "process_name"}
    assert sorted(n.split()[0] for n in lanes.values()) == ["server_0", "worker_0", "worker_1"]
    srv_pid = next(p for p, n in lanes.items() if n.startswith("server_0"))
    slow = [e for e in ev if e["ph"] == "X" and e["name"] == SLOW]
    assert slow and all(e["pid"] == srv_pid for e in slow)
    assert max(e["dur"] for e in slow) >= 100_000  # 150 ms each, sampled every 2 ms
    flows = [e for e in ev if e["ph"] == "f"]
    assert flows and all(e["pid"] == srv_pid for e in flows)  # workers -> server
    assert any(e.get("cat") == "torch.op" and e["pid"] == srv_pid for e in ev)


def test_sidecar_endpoints_bad_input(job: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RPCJOB_STATE_DIR", job.env["RPCJOB_STATE_DIR"])
    srv = targets.local_job(JOB).select("server_0")[0]
    for method, path, code, message in (
        ("POST", "/debug/rpc/profile?seconds=0", 400, "seconds must be in (0, 300]"),
        ("POST", "/debug/rpc/profile?seconds=5&interval_ms=0.1", 400, "interval_ms in [0.5, 1000]"),
        ("POST", "/debug/rpc/profile?seconds=abc", 400, "seconds and interval_ms must be numbers"),
        ("GET", "/debug/rpc/profile?seconds=1", 405, "use POST /debug/rpc/profile?seconds=N"),
        ("POST", "/debug/rpc/top", 405, "use GET"),
    ):
        got = targets.http_fetch(srv, method, path, 10.0)
        assert got[0] == code and message in got[1]["error"], (method, path, got)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(targets.http_fetch, srv, "POST", "/debug/rpc/profile?seconds=3", 60)

        def profiling() -> bool:
            code, body = targets.http_fetch(srv, "GET", "/debug/rpc/top", 5.0)
            return code == 200 and bool(body["worker"].get("profiling"))

        wait_until(profiling, 30, "server_0's profiler to be on")
        second = targets.http_fetch(srv, "POST", "/debug/rpc/profile?seconds=1", 10.0)
        assert second == (409, {"error": "a profile of server_0 is already running"})
        assert first.result(60)[0] == 200


def test_member_killed_mid_profile_gives_a_partial_result(
    job: Running, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RPCJOB_STATE_DIR", job.env["RPCJOB_STATE_DIR"])
    out = tmp_path / "trace.json"
    prof = subprocess.Popen(
        [sys.executable, "-m", "rpcjob_operator.cli", "profile", JOB, "--seconds", "20",
         "-o", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=job.env, cwd=REPO,
    )  # fmt: skip
    try:
        j = targets.local_job(JOB)
        victim = j.select("worker_1")[0]

        def profiling() -> bool:
            code, body = targets.http_fetch(victim, "GET", "/debug/rpc/top", 5.0)
            return code == 200 and bool(body["worker"].get("profiling"))

        wait_until(profiling, 60, "worker_1's profiler to be on")
        os.kill(worker_pid(victim.pod, job.uid), signal.SIGKILL)
        stdout, stderr = prof.communicate(timeout=120)
    finally:
        if prof.poll() is None:
            prof.kill()
    assert prof.returncode == 1, stdout + stderr
    assert "PARTIAL RESULT: worker_1: profile incomplete: the worker's incarnation ended" in stdout
    assert "rpcjob: profile is PARTIAL: worker_1" in stderr
    meta = json.loads(out.read_text())["metadata"]
    assert meta["partial"] is True and list(meta["partial_members"]) == ["worker_1"]
    assert SLOW in stdout  # the survivors' profiles are still there
