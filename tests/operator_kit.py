"""Test kit for the operator integration tests (no tests here).

``OperatorEnv`` runs the real ``rpcjob-operator`` process (kopf) against this pytest process's
private real cluster (e2e/backends/private.py: the pinned kube-apiserver, controllers,
scheduler and process kubelets) with the cluster's real etcd, and offers reads of the cluster
state (direct API GETs as the admin: cheap to poll) and user actions through kubectl.

One test at a time uses a process's private cluster, so an operator here may serve every
namespace; ``operator_env`` leaves the cluster as it found it (no jobs, pods, peerings or
namespaces of the test).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

from e2e.backends import private
from e2e.backends.api import Api
from e2e.backends.base import wait_for
from e2e.cluster import audit, build
from e2e.cluster.cluster import unavailable
from rpcjob import contract
from rpcjob_operator.localexec import ports

T = TypeVar("T")
HERE = Path(__file__).resolve().parent
WORKER = [sys.executable, str(HERE / "operator_worker.py")]
SLEEPER = [sys.executable, "-c", "import signal; signal.sigwait([signal.SIGTERM])"]
JOBS = f"/apis/{contract.GROUP}/{contract.VERSION}"


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
    opt = {
        "maxReplicas": max_replicas,
        "minReplicas": min_replicas,
        "restartPolicy": restart_policy,
    }
    role |= {k: v for k, v in opt.items() if v is not None}
    return {
        "apiVersion": contract.API_VERSION,
        "kind": contract.KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"roles": {"worker": role}},
    }


class AuditView:
    """The API server's audit records since ``since`` (the test's own calls: a process's
    private cluster serves one test at a time)."""

    def __init__(self, log: str, since: float) -> None:
        self.log, self.since = Path(log), since

    def records(self) -> list[audit.AuditRecord]:
        return [r for r in audit.read(self.log) if r.time >= self.since]


class ClusterView:
    """The private cluster as the tests see it (what they used of the emulator's LocalCluster):
    kubectl, namespaces, applying documents, the audit log, the operator process."""

    def __init__(self, cluster: private.PrivateCluster, workdir: str) -> None:
        self.private = cluster
        self.kubeconfig = cluster.kubeconfig
        self.workdir = workdir
        self.api = Api(self.kubeconfig)
        self.audit = AuditView(cluster.audit_log, time.time())
        self.namespaces: list[str] = []
        self.operator: subprocess.Popen[bytes] | None = None
        self.extra: list[subprocess.Popen[bytes]] = []  # operators started with a log_name

    def kubectl(self, *args: str, check: bool = False, timeout: float = 60,
                input: str | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
        proc = subprocess.run(
            [str(build.binary("kubectl")), "--kubeconfig", self.kubeconfig, *args],
            capture_output=True, text=True, timeout=timeout, input=input,
        )  # fmt: skip
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {proc.stderr}")
        return proc

    def create_namespace(self, name: str) -> None:
        # A namespace of that name from an earlier test may still be terminating.
        wait_until(lambda: self.api.get(f"/api/v1/namespaces/{name}") is None, 120,
                   f"namespace {name} from an earlier test to go")  # fmt: skip
        self.kubectl("create", "namespace", name, check=True)
        self.namespaces.append(name)

    def apply_file(self, path: str | Path) -> None:
        self.kubectl("apply", "--server-side", "-f", str(path), check=True)

    def apply_docs(self, docs: Sequence[dict[str, Any]]) -> None:
        body = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(docs)})
        self.kubectl("apply", "-f", "-", input=body, check=True)

    def wait_for(self, predicate: Callable[[], T], timeout: float = 30, interval: float = 0.1,
                 message: str = "the condition") -> T:  # fmt: skip
        return wait_until(predicate, timeout, message, interval)

    def start_operator(self, args: Sequence[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with open(Path(self.workdir) / "operator.log", "ab") as out:
            self.operator = subprocess.Popen(
                [sys.executable, "-m", "rpcjob_operator.main", *args],
                env={**os.environ, "KUBECONFIG": self.kubeconfig, **env},
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        return self.operator

    def stop_operator(self, grace: float = 10) -> int | None:
        proc, self.operator = self.operator, None
        return _stop(proc, grace)

    def clean(self) -> None:
        """Remove what the test left: RpcJobs (finalizers dropped: no operator runs now), their
        pods (waited for, so their processes are gone), quotas, kopf peerings, namespaces."""
        namespaces = ["default", *self.namespaces]
        for ns in namespaces:
            for job in self.api.items(f"{JOBS}/namespaces/{ns}/{contract.PLURAL}"):
                path = f"{JOBS}/namespaces/{ns}/{contract.PLURAL}/{job['metadata']['name']}"
                self.api.call("PATCH", path, {"metadata": {"finalizers": None}},
                              "application/merge-patch+json")  # fmt: skip
                self.api.call("DELETE", path)
            self.kubectl("-n", ns, "delete", "pods", "--all", "--grace-period=0", "--force",
                         "--wait=false")  # fmt: skip
            self.kubectl("-n", ns, "delete", "resourcequotas", "--all")
        self.kubectl("delete", "clusterkopfpeerings", "--all", "--ignore-not-found")
        self.kubectl("delete", "kopfpeerings", "--all", "-A", "--ignore-not-found")

        def idle() -> bool:
            running = [e for k in self.private.kubelets() for e in list(k.pods.values())
                       if e.pod["metadata"]["namespace"] in namespaces]  # fmt: skip
            return not any(self.api.items(f"/api/v1/namespaces/{ns}/pods") for ns in namespaces) \
                and not running  # fmt: skip

        try:
            wait_until(idle, 120, "the test's pods and their processes to go")
        finally:
            for ns in self.namespaces:
                self.kubectl("delete", "namespace", ns, "--wait=false")


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """e2e's wait_for, polling every 0.1 s (its WaitTimeout is an AssertionError)."""
    return wait_for(predicate, timeout, what, interval)


def _stop(proc: subprocess.Popen[bytes] | None, grace: float) -> int | None:
    if proc is None:
        return None
    if proc.poll() is None:
        proc.terminate()
        try:
            return proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait()


class OperatorEnv:
    def __init__(self, cluster: ClusterView, etcd_endpoint: str) -> None:
        self.cluster = cluster
        self.etcd_endpoint = etcd_endpoint
        self.health_port = free_port()
        self.metrics_port = free_port()
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
            self.cluster.extra.append(self.proc)  # stopped at operator_env's exit
        else:
            self.proc = self.cluster.start_operator(args=args, env=full_env)
        self.wait_for(self.healthy, 60, "the operator's liveness endpoint")
        return self.proc

    def stop(self) -> int | None:
        if self.proc is not None and self.proc is not self.cluster.operator:
            return _stop(self.proc, 30)
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

    # --- reads (direct API GETs: cheap to poll) ----------------------------------------------
    def job(self, name: str, ns: str = "default") -> dict[str, Any] | None:
        return self.cluster.api.get(f"{JOBS}/namespaces/{ns}/{contract.PLURAL}/{name}")  # type: ignore[no-any-return]

    def status(self, name: str, ns: str = "default") -> dict[str, Any]:
        return dict((self.job(name, ns) or {}).get("status") or {})

    def pods(self, name: str, ns: str = "default") -> list[dict[str, Any]]:
        selector = urllib.parse.quote(f"{contract.LABEL_JOB_NAME}={name}")
        return self.cluster.api.items(f"/api/v1/namespaces/{ns}/pods?labelSelector={selector}")

    def pod(self, name: str, ns: str = "default") -> dict[str, Any] | None:
        return self.cluster.api.get(f"/api/v1/namespaces/{ns}/pods/{name}")  # type: ignore[no-any-return]

    def events(self, name: str, ns: str = "default") -> list[dict[str, Any]]:
        field = urllib.parse.quote(f"involvedObject.name={name}")
        return self.cluster.api.items(f"/api/v1/namespaces/{ns}/events?fieldSelector={field}")

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
        """Signal the worker container's processes (the kubelet reports its process group's
        leader as ``local://<pid>``)."""
        pod = self.pod(pod_name, ns) or {}
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            if cs.get("name") == contract.WORKER_CONTAINER and cs.get("containerID"):
                os.killpg(int(cs["containerID"].rsplit("/", 1)[-1]), sig)
                return
        raise AssertionError(f"no running worker container in pod {pod_name}")

    # --- waiting -----------------------------------------------------------------------------
    def wait_for(self, predicate: Callable[[], T], timeout: float, what: str) -> T:
        try:
            return wait_until(predicate, timeout, what)
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- operator log (tail) ---\n{self.log()[-4000:]}") from e


@contextlib.contextmanager
def operator_env(etcd_endpoint: str | None = None, *, start: bool = True) -> Iterator[OperatorEnv]:
    """The private cluster + the operator process (on the cluster's own etcd, which its pods
    reach; ``etcd_endpoint`` is not used: the session's etcd listens where pods cannot reach
    it); the operator is stopped and the test's objects removed at exit."""
    del etcd_endpoint
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    cluster = private.get()
    workdir = tempfile.mkdtemp(prefix="rpjop-", dir=cluster.workdir)
    view = ClusterView(cluster, workdir)
    env = OperatorEnv(view, cluster.etcd_endpoint)
    try:
        if start:
            env.start()
        yield env
    finally:
        for proc in [view.operator, *view.extra]:
            _stop(proc, 10)
        view.operator = None
        view.clean()


def running_operator(etcd_endpoint: str) -> Iterator[OperatorEnv]:
    """A started operator for one test; a module uses it as its ``env`` fixture with
    ``env = pytest.fixture(running_operator, name="env")``."""
    with operator_env(etcd_endpoint) as e:
        yield e


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
