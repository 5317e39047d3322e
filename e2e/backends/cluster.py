"""The ``cluster`` backend: the real control plane and process kubelets of e2e/cluster, the chart
installed with the real ``helm install --wait``, and the operator that install runs as a pod.

* etcd for the jobs: a real etcd started here on the cluster's API address (the pod bridge, so
  pods reach it), passed as ``etcd.endpoints``. The chart's default bundled etcd needs cluster
  DNS (its Service name), which this cluster does not run yet (docs/testing.md).
* Job namespaces are labelled ``pod-security.kubernetes.io/enforce: restricted``; rpcjob's pods
  must be admitted by the real PodSecurity admission.
* Everything goes through the kubectl built from the pinned release (e2e/cluster/build.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from e2e.cluster import audit, build
from e2e.cluster.cluster import E2ECluster
from rpcjob.etcd import Client
from rpcjob_operator.localexec.etcd_server import EmbeddedEtcd

from . import chart
from .base import Backend
from .chart import ChartOperator
from .local import local_gpus

RELEASE = chart.RELEASE
PSA_LEVEL = "restricted"


def unavailable() -> str | None:
    if build.built() is None:
        return (
            f"the pinned Kubernetes binaries are not built: run 'python3 -m e2e.cluster.build' "
            f"({build.pinned_version()} into {build.bin_dir()}; .ci/install runs it)"
        )
    if os.geteuid() != 0:
        return "the real e2e cluster needs root (pod network and mount namespaces)"
    return None


class ClusterBackend(ChartOperator, Backend):
    name = "cluster"
    job_timeout = 240.0

    def __init__(
        self,
        workdir: Path,
        nodes: int = 2,
        values_files: Sequence[str] = (),
        namespaces: Sequence[str] = (),
    ) -> None:
        """``values_files``: extra chart values (e.g. charts/rpcjob/ci/namespaced-values.yaml);
        ``namespaces``: created before the install (namespace scope puts Roles in them)."""
        self.workdir = workdir
        self.nodes = nodes
        self.values_files = list(values_files)
        self.namespaces = list(namespaces)
        self.k8s: E2ECluster | None = None
        self.etcd: EmbeddedEtcd | None = None

    def start(self) -> ClusterBackend:
        try:
            # E2ECluster's own temp dir (not under /tmp, see WORK_ROOT), removed at stop.
            self.k8s = E2ECluster(nodes=self.nodes, gpus_per_node=local_gpus()).start()
            assert self.k8s.control is not None and self.k8s.control.slot is not None
            self.kubeconfig = str(self.k8s.kubeconfig)
            (self.workdir / "etcd").mkdir()
            self.etcd = EmbeddedEtcd(host=self.k8s.control.slot.api_address,
                                     data_dir=str(self.workdir / "etcd")).start()  # fmt: skip
            for ns in self.namespaces:
                self._kubectl("create", "namespace", ns)
            self.chart_values = {"etcd.endpoints[0]": self.etcd.endpoint}
            chart.helm_install(self.kubeconfig, self.workdir, self.operator_namespace,
                               self.chart_values, self.values_files,
                               wait=self.operator_missing() is None)  # fmt: skip
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.k8s is not None:
            self.k8s.stop()
            self.k8s = None
        if self.etcd is not None:
            self.etcd.close()
            self.etcd = None

    def kubectl_base(self) -> list[str]:
        return [str(build.binary("kubectl")), "--kubeconfig", self.kubeconfig]

    def _kubectl(self, *args: str, timeout: float = 300) -> str:
        proc = subprocess.run([*self.kubectl_base(), *args], capture_output=True, text=True,
                              timeout=timeout)  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {proc.stderr}")
        return proc.stdout

    # --- namespaces ---------------------------------------------------------------------
    def prepare_namespace(self, namespace: str) -> None:
        """Pod Security ``restricted`` on the job namespace; the job ServiceAccount and its
        `get nodes` grant, as `jobs.serviceAccount.namespaces` would."""
        self._kubectl("label", "namespace", namespace, "--overwrite",
                      f"pod-security.kubernetes.io/enforce={PSA_LEVEL}")  # fmt: skip
        self._kubectl("-n", namespace, "create", "serviceaccount", "rpcjob-job")
        self._kubectl("create", "clusterrolebinding", f"rpcjob-e2e-{namespace}",
                      f"--clusterrole={RELEASE}-node-reader",
                      f"--serviceaccount={namespace}:rpcjob-job")  # fmt: skip

    def cleanup_namespace(self, namespace: str) -> None:
        self._kubectl("delete", "clusterrolebinding", f"rpcjob-e2e-{namespace}",
                      "--ignore-not-found")  # fmt: skip

    # --- operator -----------------------------------------------------------------------
    def operator_missing(self) -> str | None:
        import importlib.util

        if importlib.util.find_spec("rpcjob_operator.main") is None:
            return "rpcjob_operator.main is not importable"
        return None

    # --- etcd, logs ---------------------------------------------------------------------
    @contextmanager
    def etcd_client(self) -> Iterator[Client]:
        assert self.etcd is not None
        client = Client([self.etcd.endpoint])
        try:
            yield client
        finally:
            client.close()

    def audit_records(self) -> list[audit.AuditRecord]:
        assert self.k8s is not None and self.k8s.control is not None
        return audit.read(self.k8s.control.audit_log)

    def collect_logs(self, dest: Path, namespace: str) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "operator.log").write_text(self.operator_logs())
        logs = self.k8s.work_dir / "logs" if self.k8s and self.k8s.work_dir else None
        if logs is not None and logs.is_dir():
            shutil.copytree(logs, dest / "control-plane", dirs_exist_ok=True)
