"""The ``local`` backend: the emulated API server + process kubelet (e2e/localcluster), the chart
installed into it the way `helm install` would, and the operator it installs.

* The chart is installed with the real ``helm install`` (external etcd = a real etcd started
  here; no ``--wait``: no Deployment controller makes the Deployment available); the RpcJob CRD
  the scenarios use is the one the chart installed.
* The operator runs as the installed Deployment would run it. ``RPCJOB_E2E_OPERATOR=pod``
  (default): a Pod made from the Deployment's pod template, run by the process kubelet — the
  image's entrypoint ``rpcjob-operator`` becomes a local process. The local cluster has no
  Deployment controller, so this backend plays the ReplicaSet (creates the pod, re-creates it
  on restart). ``RPCJOB_E2E_OPERATOR=process``: ``LocalCluster.start_operator`` with the
  Deployment's args and env (for debugging the operator outside the kubelet).
* One local adaptation: kopf's liveness endpoint binds ``0.0.0.0:8080`` in the chart; here every
  pod shares the host's network namespace, so the endpoint binds the pod's own loopback IP
  instead (``$(RPCJOB_E2E_POD_IP)``), and the liveness probe still reaches it; likewise its
  metrics endpoint (``--metrics``, default ``0.0.0.0:9465``).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from e2e.localcluster.audit import AuditRecord
from e2e.localcluster.cluster import LocalCluster
from rpcjob import contract
from rpcjob.etcd import Client
from rpcjob_operator.localexec.etcd_server import EmbeddedEtcd

from . import chart
from .base import Backend, wait_for

POD_IP_VAR = "RPCJOB_E2E_POD_IP"
OPERATOR_MODES = ("pod", "process")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
        self.operator_pod_name = ""
        self._generation = 0

    # --- lifecycle ----------------------------------------------------------------------
    def start(self) -> LocalBackend:
        try:
            self.etcd = EmbeddedEtcd()
            self.etcd.start()
            gpus = local_gpus()
            self.cluster = LocalCluster(
                crds=None,
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
            chart.helm_install(self.kubeconfig, self.workdir, self.operator_namespace,
                               self.chart_values, self.values_files)  # fmt: skip
            self.deployment = self._installed_deployment()
            if self.operator_missing() is None:
                self.start_operator()
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
            return "rpcjob_operator.main is not importable yet (the operator, issue 4)"
        return None

    def operator_container(self) -> dict[str, Any]:
        return dict(self.deployment["spec"]["template"]["spec"]["containers"][0])

    def start_operator(self) -> None:
        self._generation += 1
        if self.mode == "process":
            self._start_process()
            return
        self.operator_pod_name = f"{self.deployment['metadata']['name']}-{self._generation}"
        pod = chart.operator_pod(self.deployment, self.operator_pod_name)
        container = pod["spec"]["containers"][0]
        container["args"] = [a.replace("0.0.0.0", f"$({POD_IP_VAR})")
                             for a in container.get("args") or []]  # fmt: skip
        if not any(a.startswith("--metrics") for a in container["args"]):
            container["args"].append(f"--metrics=$({POD_IP_VAR}):{contract.OPERATOR_METRICS_PORT}")
        container["env"] = [
            *(container.get("env") or []),
            {"name": POD_IP_VAR, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        ]
        self.lc.apply_docs([pod])
        wait_for(lambda: self._operator_phase() == "Running", 60, "the operator pod to run")

    def _start_process(self) -> None:
        c = self.operator_container()
        port = _free_port()
        args = [a.replace("0.0.0.0:8080", f"127.0.0.1:{port}") for a in c.get("args") or []]
        args.append(f"--metrics=127.0.0.1:{_free_port()}")
        env = chart.literal_env(c, {"metadata.namespace": self.operator_namespace})
        self.lc.start_operator(args=args, env=env)

    def _operator_phase(self) -> str | None:
        pod = self._operator_pod()
        if pod is None:
            return None
        phase = (pod.get("status") or {}).get("phase")
        if phase in ("Failed", "Succeeded"):
            raise AssertionError(f"the operator pod ended {phase}:\n{self.operator_logs()[-3000:]}")
        return str(phase) if phase else None

    def _operator_pod(self) -> dict[str, Any] | None:
        rt = self.lc.store.registry.by_kind("v1", "Pod")
        assert rt is not None
        return self.lc.store.raw(rt, self.operator_namespace, self.operator_pod_name)

    def operator_pods(self) -> list[dict[str, Any]]:
        pod = self._operator_pod() if self.mode == "pod" else None
        return [pod] if pod else []

    def restart_operator(self) -> None:
        """Stop the operator (graceful: SIGTERM, as a rollout does) and start a new one, never
        two at once (the chart's Deployment uses the Recreate strategy)."""
        if self.mode == "process":
            self.lc.stop_operator()
        else:
            rt = self.lc.store.registry.by_kind("v1", "Pod")
            assert rt is not None
            self.lc.store.delete(rt, self.operator_namespace, self.operator_pod_name)
            wait_for(lambda: self._operator_pod() is None, 60, "the old operator pod to go")
        self.start_operator()

    def operator_logs(self) -> str:
        if self.mode == "process":
            try:
                return Path(self.lc.workdir, "operator.log").read_text()
            except FileNotFoundError:
                return ""
        try:
            return self.lc.pod_logs(self.operator_namespace, self.operator_pod_name, "operator")
        except KeyError:
            return ""

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
