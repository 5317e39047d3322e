"""Test kit for the operator integration tests (no tests here).

``OperatorEnv`` runs the real ``rpcjob-operator`` process (kopf) against a ``LocalCluster``
(emulated API server + process kubelet) with a real etcd, and offers reads of the cluster
state (in-process, cheap to poll) and user actions through the real API (kubectl).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from e2e.localcluster.cluster import LocalCluster
from rpcjob import contract
from rpcjob_operator.localexec import ports

T = TypeVar("T")
HERE = Path(__file__).resolve().parent
WORKER = [sys.executable, str(HERE / "operator_worker.py")]
SLEEPER = [sys.executable, "-c", "import signal; signal.sigwait([signal.SIGTERM])"]


def short_workdir() -> str:
    """Pod directories hold the sidecar's unix socket: keep the path under 108 bytes (pytest's
    tmp_path is too deep for it)."""
    return tempfile.mkdtemp(prefix="rpjop-", dir="/tmp")


def free_port() -> int:
    """A port reserved for this test process without races (localexec/ports.py)."""
    return ports.reserve_port()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def job_manifest(
    name: str,
    replicas: int = 2,
    *,
    command: list[str] | None = None,
    max_replicas: int | None = 4,
    min_replicas: int | None = None,
    restart_policy: str | None = None,
    env: dict[str, str] | None = None,
    namespace: str = "default",
    lease_ttl: int | None = None,
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "worker",
        "image": "ghcr.io/rpcjob/examples:0.1.0",
        "command": list(command or WORKER),
        "env": [{"name": k, "value": v} for k, v in (env or {}).items()],
    }
    role: dict[str, Any] = {"replicas": replicas, "template": {"spec": {"containers": [container]}}}
    if max_replicas is not None:
        role["maxReplicas"] = max_replicas
    if min_replicas is not None:
        role["minReplicas"] = min_replicas
    if restart_policy is not None:
        role["restartPolicy"] = restart_policy
    return {
        "apiVersion": contract.API_VERSION,
        "kind": contract.KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"roles": {"worker": role}},
    }


class OperatorEnv:
    def __init__(self, cluster: LocalCluster, etcd_endpoint: str) -> None:
        self.cluster = cluster
        self.etcd_endpoint = etcd_endpoint
        self.health_port = free_port()
        self.metrics_port = free_port()
        reg = cluster.store.registry
        pod_rt = reg.get("", "v1", "pods")
        job_rt = reg.get(contract.GROUP, contract.VERSION, contract.PLURAL)
        event_rt = reg.get("", "v1", "events")
        assert pod_rt and job_rt and event_rt, "the local cluster serves pods, events, RpcJobs"
        self.pod_rt, self.job_rt, self.event_rt = pod_rt, job_rt, event_rt
        self.proc: Any = None
        self.log_path = Path(cluster.workdir) / "operator.log"

    # --- the operator process -------------------------------------------------------------
    def start(
        self,
        *extra: str,
        env: dict[str, str] | None = None,
        all_namespaces: bool = True,
        standalone: bool = True,
        log_name: str = "",
    ) -> Any:
        """Start the operator process; ``log_name`` starts one more (not the cluster's own)."""
        args = [
            *(["--all-namespaces"] if all_namespaces else []),
            *(["--standalone"] if standalone else []),
            f"--liveness=http://127.0.0.1:{self.health_port}/healthz",
            f"--metrics=127.0.0.1:{self.metrics_port}",
            "--resync=30",
            "--verbose",
            *extra,
        ]
        full_env = {contract.ENV_DEFAULT_ETCD_ENDPOINTS: self.etcd_endpoint, **(env or {})}
        if log_name:
            self.log_path = Path(self.cluster.workdir) / log_name
            with open(self.log_path, "ab") as out:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "rpcjob_operator.main", *args],
                    env={**os.environ, "KUBECONFIG": self.cluster.kubeconfig, **full_env},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        else:
            self.proc = self.cluster.start_operator(args=args, env=full_env)
        self.wait_for(self.healthy, 60, "the operator's liveness endpoint")
        return self.proc

    def stop(self) -> int | None:
        if self.proc is not None and self.proc is not self.cluster.operator:
            self.proc.terminate()
            return int(self.proc.wait(30))
        return self.cluster.stop_operator()

    def kill(self) -> None:
        """SIGKILL the operator (a crash: no cleanup, no graceful stop)."""
        proc, self.cluster.operator = self.cluster.operator, None
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()

    def healthy(self) -> bool:
        try:
            url = f"http://127.0.0.1:{self.health_port}/healthz"
            with urllib.request.urlopen(url, timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            return str(r.read().decode())

    def log(self) -> str:
        p = self.log_path
        return p.read_text(errors="replace") if p.exists() else ""

    # --- reads (in-process: cheap to poll) --------------------------------------------------
    def job(self, name: str, ns: str = "default") -> dict[str, Any] | None:
        return self.cluster.store.raw(self.job_rt, ns, name)

    def status(self, name: str, ns: str = "default") -> dict[str, Any]:
        return dict((self.job(name, ns) or {}).get("status") or {})

    def pods(self, name: str, ns: str = "default") -> list[dict[str, Any]]:
        items, _ = self.cluster.store.list(
            self.pod_rt, ns, lambda lb: lb.get(contract.LABEL_JOB_NAME) == name, lambda o: True
        )
        return items

    def pod(self, name: str, ns: str = "default") -> dict[str, Any] | None:
        return self.cluster.store.raw(self.pod_rt, ns, name)

    def events(self, name: str, ns: str = "default") -> list[dict[str, Any]]:
        items, _ = self.cluster.store.list(
            self.event_rt,
            ns,
            lambda lb: True,
            lambda o: (o.get("involvedObject") or {}).get("name") == name,
        )
        return items

    def event_reasons(self, name: str, ns: str = "default") -> list[str]:
        return [str(e.get("reason")) for e in self.events(name, ns)]

    def wait_event(self, name: str, reason: str, timeout: float = 30, ns: str = "default") -> None:
        """Events are posted asynchronously (kopf's poster): wait for one with ``reason``."""
        self.wait_for(
            lambda: reason in self.event_reasons(name, ns),
            timeout,
            f"a {reason} event on {name} (seen: {self.event_reasons(name, ns)})",
        )

    def condition(self, name: str, ctype: str, ns: str = "default") -> dict[str, Any] | None:
        for c in self.status(name, ns).get("conditions") or []:
            if c.get("type") == ctype:
                return dict(c)
        return None

    # --- user actions through the real API ---------------------------------------------------
    def kubectl(self, *args: str) -> str:
        r = self.cluster.kubectl(*args, timeout=120)
        assert r.returncode == 0, f"kubectl {' '.join(args)} failed: {r.stderr}"
        return r.stdout

    def apply(self, manifest: dict[str, Any]) -> None:
        r = self.cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest), timeout=120)
        assert r.returncode == 0, f"kubectl apply failed: {r.stderr}"

    def kill_worker(self, pod_name: str, sig: int = signal.SIGKILL, ns: str = "default") -> None:
        """Signal the worker container's process (the kubelet exposes its pid)."""
        pod = self.pod(pod_name, ns) or {}
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            if cs.get("name") == contract.WORKER_CONTAINER and cs.get("containerID"):
                os.kill(int(cs["containerID"].rsplit("/", 1)[-1]), sig)
                return
        raise AssertionError(f"no running worker container in pod {pod_name}")

    # --- waiting -----------------------------------------------------------------------------
    def wait_for(self, predicate: Callable[[], T], timeout: float, what: str) -> T:
        try:
            return self.cluster.wait_for(predicate, timeout=timeout, interval=0.1, message=what)
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- operator log (tail) ---\n{self.log()[-4000:]}") from e


@contextlib.contextmanager
def operator_env(
    etcd_endpoint: str, *, start: bool = True, **cluster: Any
) -> Iterator[OperatorEnv]:
    """A started LocalCluster (short workdir) + the operator process; all stopped at exit."""
    workdir = short_workdir()
    kw: dict[str, Any] = {"backoff_base": 0.2, "backoff_cap": 2.0, **cluster}
    lc = LocalCluster(workdir=workdir, **kw).start()
    env = OperatorEnv(lc, etcd_endpoint)
    try:
        if start:
            env.start()
        yield env
    finally:
        lc.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def joined(env: OperatorEnv, name: str, n: int) -> bool:
    st = env.status(name)
    return (st.get("roles") or {}).get("worker", {}).get("joined") == n and len(
        st.get("members") or []
    ) == n


def running_pods(env: OperatorEnv, name: str, ns: str = "default") -> list[str]:
    return sorted(
        p["metadata"]["name"]
        for p in env.pods(name, ns)
        if not p["metadata"].get("deletionTimestamp")
    )


def wait_gone(env: OperatorEnv, name: str, timeout: float = 60) -> None:
    env.wait_for(lambda: not env.pods(name), timeout, f"the pods of {name} to be gone")


def now() -> float:
    return time.monotonic()
