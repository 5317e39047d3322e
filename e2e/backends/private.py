"""This process's private real cluster: no operator, for tests that run their own.

The shared session cluster (shared.py) runs the chart's cluster-scope operator, which serves
every namespace: a second operator there would reconcile the same jobs. Tests that run an
operator of their own (tests/operator_kit.py's process, a release whose operator is restarted,
the namespace-scope RBAC check) use this cluster instead: started on first use, one per pytest
process (an xdist worker runs one test at a time, so one operator at a time runs here), stopped
at the session's end (``stop``, from the root conftest) or with the process.

It has the control plane and two process-kubelet nodes, the RpcJob CRD (``crds/``) and kopf's
peering CRDs, a real etcd on the cluster's API address (reachable from the pods), and one grant:
every ServiceAccount may read Nodes (what the chart's ``<release>-node-reader`` gives the job
ServiceAccount; the sidecar reads its Node's labels).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from e2e.cluster.cluster import E2ECluster

from . import shared
from .base import REPO

CRDS = [REPO / "crds", REPO / "charts" / "rpcjob" / "crds" / "kopf-peerings.yaml"]
NODE_READER = """
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: rpcjob-e2e-node-reader}
rules: [{apiGroups: [""], resources: [nodes], verbs: [get, list, watch]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: rpcjob-e2e-node-reader}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: rpcjob-e2e-node-reader}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: Group, name: "system:serviceaccounts"}]
"""


class PrivateCluster:
    def __init__(self) -> None:
        # In the session's run dir: the controller removes it even if this process is killed.
        self.workdir = tempfile.mkdtemp(prefix=f"private-{os.getpid()}-", dir=shared.run_dir())
        self.k8s: E2ECluster | None = None
        self.etcd: Any = None
        self.started_in = 0.0

    def start(self) -> PrivateCluster:
        from rpcjob_operator.localexec.etcd_server import EmbeddedEtcd

        from .cluster import kubectl_run, local_gpus

        t0 = time.monotonic()
        try:
            self.k8s = E2ECluster(nodes=2, gpus_per_node=local_gpus()).start()
            assert self.k8s.control is not None and self.k8s.control.slot is not None
            (Path(self.workdir) / "etcd").mkdir()
            self.etcd = EmbeddedEtcd(host=self.k8s.control.slot.api_address,
                                     data_dir=str(Path(self.workdir) / "etcd")).start()  # fmt: skip
            for path in CRDS:
                kubectl_run(self.kubeconfig, "apply", "--server-side", "-f", str(path))
            kubectl_run(self.kubeconfig, "wait", "--for=condition=Established", "crd", "--all")
            rbac = Path(self.workdir) / "node-reader.yaml"
            rbac.write_text(NODE_READER)
            kubectl_run(self.kubeconfig, "apply", "-f", str(rbac))
        except BaseException:
            self.stop()
            raise
        self.started_in = time.monotonic() - t0
        return self

    @property
    def kubeconfig(self) -> str:
        assert self.k8s is not None
        return str(self.k8s.kubeconfig)

    @property
    def etcd_endpoint(self) -> str:
        return str(self.etcd.endpoint)

    @property
    def audit_log(self) -> str:
        assert self.k8s is not None and self.k8s.control is not None
        return str(self.k8s.control.audit_log)

    @property
    def logs_dir(self) -> str:
        assert self.k8s is not None and self.k8s.work_dir is not None
        return str(self.k8s.work_dir / "logs")

    def kubelets(self) -> list[Any]:
        """The process kubelets (their ``pods``: what runs on each node now)."""
        return list(self.k8s.kubelets) if self.k8s is not None else []

    def stop(self) -> None:
        if self.k8s is not None:
            self.k8s.stop()
            self.k8s = None
        if self.etcd is not None:
            self.etcd.close()
            self.etcd = None
        shutil.rmtree(self.workdir, ignore_errors=True)


_instance: PrivateCluster | None = None
_failed: list[str] = []  # why the first start failed: later tests fail at once with it


def get() -> PrivateCluster:
    """This process's private cluster, started on first use."""
    global _instance
    if _failed:
        raise RuntimeError(f"the private e2e cluster did not start: {_failed[0]}")
    if _instance is None:
        try:
            _instance = PrivateCluster().start()
        except Exception as exc:
            _failed.append(f"{type(exc).__name__}: {exc}")
            raise
    return _instance


def stop() -> None:
    global _instance
    if _instance is not None:
        instance, _instance = _instance, None
        instance.stop()
