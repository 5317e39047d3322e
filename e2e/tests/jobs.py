"""RpcJobs and checks the scenarios share: the examples, an elastic workload that runs until it
is deleted, and readers of a job's membership (status and the workers' own view)."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

from e2e.backends import Cluster
from rpcjob import contract

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p.parent for p in (REPO / "examples").glob("*/rpcjob.yaml"))
# Every example folder with an app (a folder with app.py but no rpcjob.yaml is reported too).
EXAMPLE_APPS = sorted(p.parent for p in (REPO / "examples").glob("*/app.py"))

# The elastic workload: every worker joins, then prints which members answer an RPC whenever
# that set changes ("reachable: worker_0,worker_1"). It runs until the job is deleted or scaled
# down (SIGTERM: rpcjob drains and leaves). Inline, so it runs unchanged from any image that
# has torch and rpcjob (the example worker image on kind, this machine's python locally).
ELASTIC_APP = """
import os, time
import torch.distributed.rpc as rpc
import rpcjob
from rpcjob.devices.agent import current_members

rpcjob.init_rpc()
last = None
while True:
    ok = []
    for name, _rank in current_members():
        try:
            rpc.rpc_sync(name, os.getpid, timeout=10)
            ok.append(name)
        except Exception:
            pass
    line = ",".join(sorted(ok))
    if line != last:
        print("reachable:", line, flush=True)
        last = line
    time.sleep(0.5)
"""
from e2e.backends.kind import WORKER_IMAGE  # noqa: E402  (ignored by the local kubelet)


def load(path: Path) -> dict[str, Any]:
    return dict(yaml.safe_load(path.read_text()))


def elastic_job(name: str, replicas: int, max_replicas: int = 4) -> dict[str, Any]:
    container = {
        "name": contract.WORKER_CONTAINER,
        "image": WORKER_IMAGE,
        "command": ["python", "-c", ELASTIC_APP],
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
    }
    return {
        "apiVersion": contract.API_VERSION,
        "kind": contract.KIND,
        "metadata": {"name": name},
        "spec": {
            "roles": {
                "worker": {
                    "replicas": replicas,
                    "minReplicas": 1,
                    "maxReplicas": max_replicas,
                    "template": {"spec": {"containers": [copy.deepcopy(container)]}},
                }
            },
            "rpc": {"timeoutSeconds": 30},
            "runPolicy": {"backoffLimit": 10},
        },
    }


def members(c: Cluster, job: str) -> list[str]:
    """Worker names in status.members, sorted."""
    return sorted(m["name"] for m in c.job_status(job).get("members") or [])


def workers(n: int, role: str = "worker") -> list[str]:
    return [contract.worker_name(role, i) for i in range(n)]


def reachable(c: Cluster, pod: str) -> list[str] | None:
    """The last set of members this worker could call (its own log), None before the first."""
    lines = re.findall(r"^reachable: (.*)$", c.logs(pod), re.MULTILINE)
    return lines[-1].split(",") if lines else None


def wait_group(c: Cluster, job: str, expected: list[str], timeout: float | None = None,
               observer: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Wait until status.members is exactly ``expected``, the role counts agree, and (with
    ``observer``, a pod name) that worker reaches exactly those members over RPC."""
    want = sorted(expected)

    def settled() -> dict[str, Any] | None:
        status = c.job_status(job)
        got = sorted(m["name"] for m in status.get("members") or [])
        if got != want:
            return None
        worker = (status.get("roles") or {}).get("worker") or {}
        if worker.get("joined") != sum(1 for n in want if n.startswith("worker_")):
            return None
        if observer is not None and reachable(c, observer) != want:
            return None
        return status

    return c.wait_for(
        settled,
        timeout or c.backend.job_timeout,
        f"{job}: members {want}" + (f" seen by {observer}" if observer else ""),
    )


def pod_by_index(c: Cluster, job: str, index: int, role: str = "worker") -> dict[str, Any]:
    pods = [p for p in c.live_pods(job, role)
            if p["metadata"]["labels"].get(contract.LABEL_INDEX) == str(index)]  # fmt: skip
    assert len(pods) == 1, f"expected one live pod for {role} {index}, got {len(pods)}"
    return pods[0]


def printer_table(c: Cluster) -> list[list[str]]:
    """`kubectl get rpj` split into cells (the header first)."""
    out = c.kubectl("get", contract.SHORT_NAME).stdout
    return [line.split() for line in out.splitlines() if line.strip()]
