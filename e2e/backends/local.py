"""The ``local`` backend: the emulated API server + process kubelet (e2e/localcluster) with its
workload controllers, the chart installed with the real ``helm install --wait``, and the
operator that install runs.

* external etcd = a real etcd started here (``etcd.endpoints``); the RpcJob CRD the scenarios
  use is the one the chart installed.
* ``RPCJOB_E2E_OPERATOR=pod`` (default): the chart's Deployment -> ReplicaSet -> Pod, run by the
  process kubelet (the image's entrypoint ``rpcjob-operator`` is a local process); a restart is
  ``kubectl rollout restart`` as on kind. ``RPCJOB_E2E_OPERATOR=process``: the chart is installed
  with ``operator.replicas=0`` and ``LocalCluster.start_operator`` runs the Deployment's args
  and env as a plain process (for debugging the operator outside the kubelet).
* One local adaptation, through chart values: kopf's liveness endpoint (``0.0.0.0:8080`` in the
  chart) and the metrics endpoint (default ``0.0.0.0:9465``) bind the pod's own loopback IP
  (``operator.extraEnv``/``extraArgs``), since every local pod shares the host's network.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from e2e.localcluster.audit import AuditRecord
from e2e.localcluster.cluster import LocalCluster
from rpcjob.etcd import Client
from rpcjob_operator.localexec.etcd_server import EmbeddedEtcd, free_port

from . import chart
from .base import Backend, wait_for

OPERATOR_MODES = ("pod", "process")
COMPONENT_LABEL = "app.kubernetes.io/component"
# kopf's liveness and the metrics endpoint on the pod's own IP (see the module docstring).
POD_LOCAL_VALUES = {
    "operator.extraEnv": '[{"name": "POD_IP", "valueFrom": {"fieldRef": '
    '{"fieldPath": "status.podIP"}}}]',
    "operator.extraArgs": '["--liveness=http://$(POD_IP):8080/healthz", '
    '"--metrics=$(POD_IP):9465"]',
}


def _free_port() -> int:
    """A port reserved for this process without races (localexec/ports.py)."""
    return free_port()


def local_gpus() -> int:
    """NVIDIA GPUs on this machine (0 without nvidia-smi): the local node offers them."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    proc = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=60)
    return sum(1 for line in proc.stdout.splitlines() if line.startswith("GPU "))


class LocalBackend(Backend):
    name = "local"
    job_timeout = 240.0

    def __init__(
        self,
        workdir: Path,
        operator_mode: str | None = None,
        values_files: Sequence[str] = (),
        namespaces: Sequence[str] = (),
    ) -> None:
        """``values_files``: extra chart values (e.g. charts/rpcjob/ci/namespaced-values.yaml);
        ``namespaces``: created before the install (namespace scope puts Roles in them)."""
        mode = operator_mode or os.environ.get("RPCJOB_E2E_OPERATOR", "pod")
        if mode not in OPERATOR_MODES:
            raise ValueError(
                f"RPCJOB_E2E_OPERATOR={mode!r}: use one of {', '.join(OPERATOR_MODES)}"
            )
        self.mode = mode
        self.workdir = workdir
        self.etcd: EmbeddedEtcd | None = None
        self.cluster: LocalCluster | None = None
        self.chart_values: dict[str, str] = {}  # --set values the chart was installed with
        self.values_files = list(values_files)
        self.namespaces = list(namespaces)
        self.deployment: dict[str, Any] = {}

    # --- lifecycle ----------------------------------------------------------------------
    def start(self) -> LocalBackend:
        try:
            self.etcd = EmbeddedEtcd()
            self.etcd.start()
            gpus = local_gpus()
            self.cluster = LocalCluster(
                crds=None,
                workloads=True,
                workdir=str(self.workdir),
                backoff_base=0.2,
                backoff_cap=2.0,
                gpus_per_node=gpus,
            ).start()
            if gpus:  # each GPU pod sees only the devices the kubelet gave it
                assert self.cluster.kubelet is not None
                self.cluster.kubelet.set_cuda = True
            self.kubeconfig = self.cluster.kubeconfig
            self.chart_values = {"etcd.endpoints[0]": self.etcd.endpoint}
            for ns in self.namespaces:
                self.cluster.create_namespace(ns)
            run_pod = self.mode == "pod" and self.operator_missing() is None
            chart.helm_install(
                self.kubeconfig, self.workdir, self.operator_namespace,
                {**self.chart_values, **({} if run_pod else {"operator.replicas": "0"})},
                self.values_files, POD_LOCAL_VALUES, wait=run_pod,
            )  # fmt: skip
            self.deployment = self._installed_deployment()
            if self.mode == "process" and self.operator_missing() is None:
                self._start_process()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()  # stops the kubelet's pods (the operator pod too)
            self.cluster = None
        if self.etcd is not None:
            self.etcd.close()
            self.etcd = None

    @property
    def lc(self) -> LocalCluster:
        assert self.cluster is not None, "the local backend is not started"
        return self.cluster

    def _installed_deployment(self) -> dict[str, Any]:
        """The operator Deployment as helm installed it (read back from the API server)."""
        rt = self.lc.store.registry.by_kind("apps/v1", "Deployment")
        assert rt is not None
        items, _ = self.lc.store.list(rt, self.operator_namespace, lambda _l: True, lambda _o: True)
        return chart.operator_deployment(items)

    # --- operator -----------------------------------------------------------------------
    def operator_missing(self) -> str | None:
        if importlib.util.find_spec("rpcjob_operator.main") is None:
            return "rpcjob_operator.main is not importable: run 'pip install -e .[dev]'"
        return None

    def operator_container(self) -> dict[str, Any]:
        return dict(self.deployment["spec"]["template"]["spec"]["containers"][0])

    def _start_process(self) -> None:
        c = self.operator_container()
        port = _free_port()
        args = [a for a in c.get("args") or [] if not a.startswith(("--liveness", "--metrics"))]
        args += [f"--liveness=http://127.0.0.1:{port}/healthz",
                 f"--metrics=127.0.0.1:{_free_port()}"]  # fmt: skip
        env = chart.literal_env(c, {"metadata.namespace": self.operator_namespace,
                                    "status.podIP": "127.0.0.1"})  # fmt: skip
        self.lc.start_operator(args=args, env=env)

    def operator_pods(self) -> list[dict[str, Any]]:
        rt = self.lc.store.registry.by_kind("v1", "Pod")
        assert rt is not None
        items, _ = self.lc.store.list(rt, self.operator_namespace, lambda _l: True, lambda _o: True)
        return [p for p in items
                if p["metadata"].get("labels", {}).get(COMPONENT_LABEL) == "operator"]  # fmt: skip

    def restart_operator(self) -> None:
        """`kubectl rollout restart` (the chart's Recreate strategy: the old pod is gone before
        the new one starts); process mode: stop and start the process."""
        if self.mode == "process":
            self.lc.stop_operator()
            self._start_process()
            return
        old = {p["metadata"]["uid"] for p in self.operator_pods()}
        deploy = f"deployment/{self.deployment['metadata']['name']}"
        kubectl = [*self.kubectl_base(), "-n", self.operator_namespace]
        subprocess.run([*kubectl, "rollout", "restart", deploy], check=True,
                       capture_output=True, timeout=120)  # fmt: skip

        def replaced() -> bool:
            pods = self.operator_pods()
            return (
                bool(pods)
                and not {p["metadata"]["uid"] for p in pods} & old
                and all((p.get("status") or {}).get("phase") == "Running" for p in pods)
            )

        wait_for(replaced, 120, "the restarted operator pod to run (and the old one to go)")

    def operator_logs(self) -> str:
        """Every operator incarnation's log, oldest first (pod directories outlive the pods)."""
        if self.mode == "process":
            try:
                return Path(self.lc.workdir, "operator.log").read_text()
            except FileNotFoundError:
                return ""
        name = self.deployment["metadata"]["name"]
        logs = sorted(
            Path(self.lc.workdir, "pods").glob(f"{self.operator_namespace}_{name}-*/operator.log"),
            key=lambda p: p.stat().st_mtime,
        )
        return "".join(f"==> {p.parent.name} <==\n{p.read_text()}" for p in logs)

    # --- etcd, audit, logs ----------------------------------------------------------------
    @contextmanager
    def etcd_client(self) -> Iterator[Client]:
        assert self.etcd is not None
        client = Client([self.etcd.endpoint])
        try:
            yield client
        finally:
            client.close()

    def audit_records(self) -> list[AuditRecord]:
        return self.lc.audit.records()

    def collect_logs(self, dest: Path, namespace: str) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "operator.log").write_text(self.operator_logs())
        pods_dir = Path(self.lc.workdir, "pods")
        for pod_dir in pods_dir.glob(f"{namespace}_*"):
            shutil.copytree(pod_dir, dest / "pods" / pod_dir.name, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("*.sock"))  # fmt: skip
