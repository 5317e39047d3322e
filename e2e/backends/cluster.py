"""The ``cluster`` backend (the default): the real control plane and process kubelets of
e2e/cluster, the chart installed with the real ``helm install --wait``, and the operator that
install runs as a pod.

* One such cluster serves the whole pytest session (e2e/backends/shared.py starts it in a server
  process; every xdist worker attaches with ``ClusterBackend.attach``); each test has its own
  namespace, labelled ``pod-security.kubernetes.io/enforce: restricted`` so rpcjob's pods must
  be admitted by the real PodSecurity admission.
* etcd for the jobs: a real etcd on the cluster's API address (the pod bridge, so pods reach
  it), passed as ``etcd.endpoints`` (the chart's default, its bundled etcd, is tested on the
  private cluster: e2e/tests/test_bundled_etcd.py).
* Scenarios that disrupt the operator (a restart, the namespace-scope RBAC check) get their own
  release in namespace scope on this process's private cluster (``OwnReleaseBackend``), so the
  session's shared operator keeps serving the other worker's tests.
* Everything goes through the kubectl built from the pinned release (e2e/cluster/build.py).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from e2e.cluster import audit, build
from e2e.cluster.cluster import E2ECluster
from e2e.cluster.cluster import unavailable as unavailable  # the skip reason, as before
from rpcjob.etcd import Client

from . import chart
from .base import Backend
from .chart import ChartOperator, JobAccount

RELEASE = chart.RELEASE
PSA_LEVEL = "restricted"


def local_gpus() -> int:
    """NVIDIA GPUs on this machine (0 without nvidia-smi): the nodes offer them."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    proc = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=60)
    return sum(1 for line in proc.stdout.splitlines() if line.startswith("GPU "))


def kubectl_run(kubeconfig: str, *args: str, timeout: float = 300) -> str:
    proc = subprocess.run([str(build.binary("kubectl")), "--kubeconfig", kubeconfig, *args],
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {proc.stderr}")
    return proc.stdout


def stop_cluster(k8s: E2ECluster | None, etcd: Any) -> None:
    """Stop a control plane and the jobs' etcd beside it (either may be None: not started)."""
    if k8s is not None:
        k8s.stop()
    if etcd is not None:
        etcd.close()


class _RealCluster(ChartOperator, Backend):
    """What every backend on the real control plane shares (kubectl, etcd, audit, logs)."""

    kubeconfig: str
    etcd_endpoint: str
    audit_log: str
    logs_dir: str
    chart_values: dict[str, str]

    def kubectl_base(self) -> list[str]:
        return [str(build.binary("kubectl")), "--kubeconfig", self.kubeconfig]

    def _kubectl(self, *args: str, timeout: float = 300) -> str:
        return kubectl_run(self.kubeconfig, *args, timeout=timeout)

    def operator_missing(self) -> str | None:
        import importlib.util

        if importlib.util.find_spec("rpcjob_operator.main") is None:
            return "rpcjob_operator.main is not importable: run 'pip install -e .[dev]'"
        return None

    @contextmanager
    def etcd_client(self) -> Iterator[Client]:
        client = Client([self.etcd_endpoint])
        try:
            yield client
        finally:
            client.close()

    def audit_records(self) -> list[audit.AuditRecord]:
        """The API server's audit records of this backend's operator (its ServiceAccount): other
        clients of the cluster — tests, other operators — are not its calls."""
        user = f"system:serviceaccount:{self.operator_namespace}:{self.release}-operator"
        return [r for r in audit.read(Path(self.audit_log)) if r.user == user]

    def collect_logs(self, dest: Path, namespace: str) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "operator.log").write_text(self.operator_logs())
        if self.logs_dir and Path(self.logs_dir).is_dir():
            shutil.copytree(self.logs_dir, dest / "control-plane", dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("audit.log*"))  # fmt: skip


class ClusterBackend(JobAccount, _RealCluster):
    name = "cluster"
    job_timeout = 240.0

    def __init__(self, workdir: Path, nodes: int = 2) -> None:
        self.workdir = workdir
        self.nodes = nodes
        self.k8s: E2ECluster | None = None
        self.etcd: Any = None
        self.chart_values = {}

    def start(self) -> ClusterBackend:
        """Start the cluster, the jobs' etcd and the chart (the shared server does this)."""
        from rpcjob_operator.localexec.etcd_server import EmbeddedEtcd

        try:
            # E2ECluster's own temp dir (not under /tmp, see WORK_ROOT), removed at stop.
            self.k8s = E2ECluster(nodes=self.nodes, gpus_per_node=local_gpus()).start()
            assert self.k8s.control is not None and self.k8s.control.slot is not None
            self.kubeconfig = str(self.k8s.kubeconfig)
            self.audit_log = str(self.k8s.control.audit_log)
            self.logs_dir = str(self.k8s.work_dir / "logs") if self.k8s.work_dir else ""
            (self.workdir / "etcd").mkdir(parents=True, exist_ok=True)
            self.etcd = EmbeddedEtcd(host=self.k8s.control.slot.api_address,
                                     data_dir=str(self.workdir / "etcd")).start()  # fmt: skip
            self.etcd_endpoint = self.etcd.endpoint
            self.chart_values = {"etcd.endpoints[0]": self.etcd_endpoint}
            chart.helm_install(self.kubeconfig, self.workdir, self.operator_namespace,
                               self.chart_values, wait=self.operator_missing() is None)  # fmt: skip
        except BaseException:
            self.stop()
            raise
        return self

    def state(self) -> dict[str, Any]:
        """What an attaching process needs (shared.py writes it to the run dir)."""
        assert self.k8s is not None
        return {
            "kubeconfig": self.kubeconfig,
            "etcd": self.etcd_endpoint,
            "audit_log": self.audit_log,
            "logs_dir": self.logs_dir,
            "chart_values": self.chart_values,
            "cluster_started_in": round(self.k8s.started_in, 1),
        }

    @classmethod
    def attach(cls, state: Mapping[str, Any]) -> ClusterBackend:
        """A backend on the shared cluster another process started (it owns nothing)."""
        self = cls(Path(state["kubeconfig"]).parent)
        self.kubeconfig = str(state["kubeconfig"])
        self.etcd_endpoint = str(state["etcd"])
        self.audit_log = str(state["audit_log"])
        self.logs_dir = str(state["logs_dir"])
        self.chart_values = dict(state["chart_values"])
        return self

    def stop(self) -> None:
        stop_cluster(self.k8s, self.etcd)
        self.k8s = self.etcd = None

    # --- namespaces ---------------------------------------------------------------------
    def prepare_namespace(self, namespace: str) -> None:
        """Pod Security ``restricted`` on the job namespace, then the chart's job account."""
        self._kubectl("label", "namespace", namespace, "--overwrite",
                      f"pod-security.kubernetes.io/enforce={PSA_LEVEL}")  # fmt: skip
        super().prepare_namespace(namespace)


class OwnReleaseBackend(_RealCluster):
    """The chart in namespace scope, released into one test's namespaces on this process's
    private cluster (e2e/backends/private.py): its operator watches only those namespaces, so
    restarting it or reading its audit trail concerns this test alone."""

    name = "cluster"
    job_timeout = 240.0

    def __init__(self, namespaces: Sequence[str], values_files: Sequence[str] = ()) -> None:
        from . import private

        self.private = private.get()
        self.kubeconfig = self.private.kubeconfig
        self.etcd_endpoint = self.private.etcd_endpoint
        self.audit_log = self.private.audit_log
        self.logs_dir = self.private.logs_dir
        self.namespaces = list(namespaces)
        self.operator_namespace = self.namespaces[0]
        self.values_files = list(values_files)
        self.release = f"rpcjob-{self.operator_namespace}"  # contains the chart's name
        self.chart_values = {
            "etcd.endpoints[0]": self.etcd_endpoint,
            "rbac.scope": "namespace",
            "rbac.namespaces": "{" + ",".join(self.namespaces) + "}",
            "crds.install": "false",  # the private cluster has the CRD already
        }

    def start(self) -> OwnReleaseBackend:
        for ns in self.namespaces:
            self._kubectl("create", "namespace", ns)
            self._kubectl("label", "namespace", ns, "--overwrite",
                          f"pod-security.kubernetes.io/enforce={PSA_LEVEL}")  # fmt: skip
        chart.helm_install(self.kubeconfig, Path(self.private.workdir), self.operator_namespace,
                           self.chart_values, self.values_files, release=self.release,
                           wait=True)  # fmt: skip
        return self

    def stop(self) -> None:
        """Uninstall the release and delete its namespaces (delete the jobs first: their
        finalizers need the operator)."""
        chart.helm_uninstall(self.kubeconfig, Path(self.private.workdir),
                             self.operator_namespace, self.release)  # fmt: skip
        for ns in self.namespaces:
            self._kubectl("delete", "namespace", ns, "--wait=false", "--ignore-not-found")
