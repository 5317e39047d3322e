"""``rpcjob top|debug|profile`` on the real control plane (the e2e ``cluster`` backend): every
request goes through the real API server's pod proxy to the sidecars, authenticated with the
kubeconfig's client certificate (the admin) or a ServiceAccount token (a user bound, or not, to
the chart's ``rpcjob-debugger`` ClusterRole). The workload is tests/observe_app: two workers
call the server's deliberately slow remote function (150 ms) in a loop.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.backends import Cluster
from rpcjob import contract
from rpcjob_operator.observe.cluster import cluster_job
from tests.localrun import worker_pid

from .jobs import wait_group

# A cluster with the chart, whole jobs: a job alone takes 1-3 minutes to form on a loaded
# 2-core machine, so the 300 s default is too short for a scenario.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
REPO = Path(__file__).resolve().parents[2]
JOB = "observe-demo"
SLOW = "__main__.slow_remote"
MEMBERS = ["server_0", "worker_0", "worker_1"]


def observe_job(hold_file: str) -> dict[str, Any]:
    def role(replicas: int) -> dict[str, Any]:
        container = {
            "name": contract.WORKER_CONTAINER,
            "image": "example.invalid/observe-app:test",  # the process kubelet runs this host's
            "command": ["python", "tests/observe_app/app.py"],  # python in the repository
            "env": [{"name": "OBSERVE_HOLD_FILE", "value": hold_file}],
            "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
        }
        return {
            "replicas": replicas,
            "restartPolicy": "OnFailure",  # a killed worker restarts in its pod
            "template": {"spec": {"containers": [container]}},
        }

    return {
        "apiVersion": contract.API_VERSION,
        "kind": contract.KIND,
        "metadata": {"name": JOB},
        "spec": {"roles": {"server": role(1), "worker": role(2)}},
    }


def cli(
    c: Cluster, *args: str, kubeconfig: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """The rpcjob CLI against the test namespace, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "rpcjob_operator.cli", *args,
         "--kubeconfig", kubeconfig or c.backend.kubeconfig, "-n", c.namespace],
        capture_output=True, text=True, timeout=timeout, cwd=REPO, check=False,
    )  # fmt: skip


def clis(c: Cluster, *calls: Sequence[str]) -> list[subprocess.CompletedProcess[str]]:
    """Independent CLI calls at once: each is a Python start-up and a few API round trips,
    which overlap."""
    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda args: cli(c, *args), calls))


# A CLI call costs about a second of CPU: waits on one poll once a second (POLL), and a job's
# formation is first awaited in its status (a kubectl read), leaving the CPU to the job.
POLL = 1.0


def top(c: Cluster, kubeconfig: str | None = None) -> dict[str, dict[str, Any]]:
    res = cli(c, "top", JOB, "--json", kubeconfig=kubeconfig)
    assert res.returncode == 0, res.stdout + res.stderr
    return {m["member"]: m for m in json.loads(res.stdout)["members"]}


@pytest.fixture
def hold(tmp_path: Path) -> Iterator[Path]:
    """While this file exists a restarting worker waits before it joins (tests/observe_app).
    Under /var/tmp: the pods see the host's filesystem there (their /tmp may be a volume)."""
    d = Path(tempfile.mkdtemp(prefix="obs-hold-", dir="/var/tmp"))
    try:
        yield d / "hold"
    finally:
        (d / "hold").unlink(missing_ok=True)
        d.rmdir()


@pytest.fixture
def running(cluster: Cluster, hold: Path) -> Cluster:
    if cluster.backend.name != "cluster":
        pytest.skip("the observe scenarios run the repository's app: cluster backend only")
    cluster.apply(observe_job(str(hold)))
    wait_group(cluster, JOB, MEMBERS)

    def busy() -> bool:
        rows = top(cluster)
        return sorted(rows) == MEMBERS and all(r["state"] == "JOINED" for r in rows.values()) \
            and bool(rows["server_0"]["rpcs_in"])  # fmt: skip

    cluster.wait_for(busy, cluster.backend.job_timeout, "every member JOINED, server_0 busy",
                     interval=POLL)  # fmt: skip
    return cluster


def test_observe_via_the_pod_proxy_then_a_member_dies_mid_profile(
    running: Cluster, hold: Path, tmp_path: Path
) -> None:
    """One job for every scenario (a job takes a minute or more to form here): the read-only
    views as the admin (client certificate), then as a ServiceAccount without and with the
    debugger role; last, a member killed mid-profile."""
    views_and_rbac(running, tmp_path)
    member_dies_mid_profile(running, hold, tmp_path)


def views_and_rbac(c: Cluster, tmp_path: Path) -> None:
    rows = top(c)
    pods = {p["metadata"]["name"]: p for p in c.pods(JOB)}
    for name, row in rows.items():
        pod = pods[row["pod"]]
        assert pod["metadata"]["labels"][contract.LABEL_WORKER_NAME] == name
        assert row["node"] == pod["spec"]["nodeName"] and row["last_error"] == ""
    assert sorted(r["rank"] for r in rows.values()) == [0, 1, 2]
    assert rows["server_0"]["pool_size"] == 16 and rows["worker_0"]["rpcs_out"] > 0

    res, one = clis(c, ["debug", JOB], ["debug", JOB, "worker_1", "--json"])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "consistent: every member's agent lists etcd's membership" in res.stdout
    agents = [line for line in res.stdout.splitlines() if "agent workers:" in line]
    assert len(agents) == 3 and all(all(f"{m}(" in a for m in MEMBERS) for a in agents)
    assert one.returncode == 0 and json.loads(one.stdout)["consistent"], one.stdout + one.stderr

    out = tmp_path / "trace.json"
    res = cli(c, "profile", JOB, "--seconds", "3", "-o", str(out))  # alone: it times the job
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    srv = lines.index(next(line for line in lines if line.startswith("server_0:")))
    assert lines[srv + 1].endswith(SLOW), res.stdout  # the slowest remote function first
    ev = json.loads(out.read_text())["traceEvents"]
    lanes = {e["pid"]: e["args"]["name"].split()[0] for e in ev if e["name"] == "process_name"}
    assert sorted(lanes.values()) == MEMBERS
    pid = {n: p for p, n in lanes.items()}
    slow = [e for e in ev if e["ph"] == "X" and e["name"] == SLOW]
    assert slow and {e["pid"] for e in slow} == {pid["server_0"]}
    assert max(e["dur"] for e in slow) >= 100_000  # 150 ms each, sampled every 2 ms
    # Caller -> callee: each flow starts in a worker's rpc_sync and ends in the server's span.
    starts = {e["id"]: e["pid"] for e in ev if e["ph"] == "s"}
    ends = {e["id"]: e["pid"] for e in ev if e["ph"] == "f"}
    assert starts and starts.keys() == ends.keys()
    assert set(starts.values()) == {pid["worker_0"], pid["worker_1"]}
    assert set(ends.values()) == {pid["server_0"]}

    errors = clis(c, ["top", "nosuchjob", "--json"], ["debug", "nosuchjob"],
                  ["profile", "nosuchjob", "--seconds", "1"],
                  ["debug", JOB, "worker_9"])  # fmt: skip
    for res in errors[:3]:
        assert res.returncode == 2, res
        assert f"no RpcJob named 'nosuchjob' in namespace '{c.namespace}'" in res.stderr
    res = errors[3]
    assert res.returncode == 2
    assert f"job '{JOB}' has no member 'worker_9' (members: {', '.join(MEMBERS)})" in res.stderr
    check_debugger_role(c, tmp_path)


def _token_kubeconfig(c: Cluster, account: str, dest: Path) -> str:
    """A kubeconfig for ServiceAccount ``account``: the admin's cluster entry, a token user."""
    c.kubectl("create", "serviceaccount", account)
    token = c.kubectl("create", "token", account, "--duration=1h").stdout.strip()
    cfg = yaml.safe_load(Path(c.backend.kubeconfig).read_text())
    cfg["users"] = [{"name": account, "user": {"token": token}}]
    for ctx in cfg["contexts"]:
        ctx["context"]["user"] = account
    dest.write_text(yaml.safe_dump(cfg))
    return str(dest)


def check_debugger_role(c: Cluster, tmp_path: Path) -> None:
    """A user without a binding is refused with the binding to ask for; with pods but not
    pods/proxy the API server refuses the proxy; with the debugger role top and profile work."""
    ns = c.namespace
    alice = _token_kubeconfig(c, "alice", tmp_path / "alice.yaml")
    bind = (f"kubectl create rolebinding alice-rpcjob-debug -n {ns} "
            f"--clusterrole=rpcjob-debugger --serviceaccount={ns}:alice")  # fmt: skip

    res = cli(c, "top", JOB, "--json", kubeconfig=alice)
    assert res.returncode == 2, res.stdout + res.stderr
    assert f'User "system:serviceaccount:{ns}:alice" cannot get resource "rpcjobs"' in res.stderr
    assert "bind the chart's ClusterRole rpcjob-debugger" in res.stderr and bind in res.stderr

    # Pods readable but no pods/proxy: the API server refuses the proxy itself.
    c.apply({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "pod-reader", "namespace": ns},
        "rules": [{"apiGroups": [contract.GROUP], "resources": [contract.PLURAL],
                   "verbs": ["get"]},
                  {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}],
    })  # fmt: skip
    c.kubectl("create", "rolebinding", "alice-reader", "--role=pod-reader",
              f"--serviceaccount={ns}:alice")  # fmt: skip
    rows = c.wait_for(lambda: top(c, alice), 60, "alice to read pods", interval=POLL)
    assert sorted(rows) == MEMBERS
    for row in rows.values():
        assert 'cannot get resource "pods/proxy"' in row["last_error"], row
        assert bind in row["last_error"]

    c.kubectl("create", "rolebinding", "alice-rpcjob-debug", "--clusterrole=rpcjob-debugger",
              f"--serviceaccount={ns}:alice")  # fmt: skip

    def joined() -> bool:
        return all(r["state"] == "JOINED" for r in top(c, alice).values())

    c.wait_for(joined, 60, "alice's rpcjob top to show every member", interval=POLL)
    res = cli(c, "profile", JOB, "--seconds", "1", "-o", str(tmp_path / "t.json"), kubeconfig=alice)
    assert res.returncode == 0, res.stdout + res.stderr  # pods/proxy create: the POST


def member_dies_mid_profile(c: Cluster, hold: Path, tmp_path: Path) -> None:
    """The profile is partial, ``debug`` reports the group inconsistent while the replacement
    is held, and consistent once it rejoins."""
    uid = c.job(JOB)["metadata"]["uid"]  # type: ignore[index]
    victim = cluster_job(JOB, c.namespace, c.backend.kubeconfig, None).select("worker_1")[0]
    out = tmp_path / "partial.json"
    prof = subprocess.Popen(
        [sys.executable, "-m", "rpcjob_operator.cli", "profile", JOB, "--seconds", "30",
         "-o", str(out), "--kubeconfig", c.backend.kubeconfig, "-n", c.namespace],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    try:
        j = cluster_job(JOB, c.namespace, c.backend.kubeconfig, None)

        def profiling() -> bool:
            code, body = j.fetch(victim, "GET", "/debug/rpc/top", 10.0)
            return code == 200 and bool(body["worker"].get("profiling"))

        c.wait_for(profiling, 60, "worker_1's profiler to be on")
        hold.touch()  # its restart waits until the group has been looked at
        os.kill(worker_pid(victim.pod, uid), signal.SIGKILL)
        stdout, stderr = prof.communicate(timeout=120)
    finally:
        if prof.poll() is None:
            prof.kill()
    assert prof.returncode == 1, stdout + stderr
    # Its sidecar answers "profile incomplete: the worker's incarnation ended ... into the 30s
    # window" at once; the operator then replaces the failed pod (pods are restartPolicy
    # Never), so a slow answer may instead be lost with the pod: partial either way.
    assert "PARTIAL RESULT: worker_1: " in stdout, stdout
    assert "rpcjob: profile is PARTIAL: worker_1" in stderr, stderr
    meta = json.loads(out.read_text())["metadata"]
    assert meta["partial"] is True and list(meta["partial_members"]) == ["worker_1"]
    assert SLOW in stdout  # the survivors' profiles are kept

    # The replacement pod's sidecar is up, its worker held before joining.
    c.wait_for(lambda: top(c)["worker_1"]["state"] == "NO_WORKER", c.backend.job_timeout,
               "worker_1's new sidecar to report no worker", interval=POLL)  # fmt: skip
    res = cli(c, "debug", JOB)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "INCONSISTENT:" in res.stdout and "worker_1 has no running worker" in res.stdout
    assert "  - worker_1 did not answer: its view cannot be checked" in res.stdout

    hold.unlink()
    wait_group(c, JOB, MEMBERS)  # worker_1 back in the job's status
    c.wait_for(lambda: cli(c, "debug", JOB).returncode == 0, c.backend.job_timeout,
               "the restarted worker_1 to rejoin and the group to agree again",
               interval=POLL)  # fmt: skip
