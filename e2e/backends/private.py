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

Tests of the cluster itself (pods, Services, DNS, storage, the API server's behaviour, a chart
install of their own) run here too, each in a namespace of its own (``namespace``), rather than
on a control plane of their own (a start costs 15-35 s of a 2-core machine): the namespace goes
at the test's end and its pods are waited for, so the next test of this process (perhaps an
operator test counting pods) starts on an idle cluster. A test that needs a node unlike node-0
and node-1 (GPUs) adds one for its duration (``extra_node``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from e2e.cluster.cluster import E2ECluster
from rpcjob import contract

from . import shared
from .api import Api
from .base import REPO, wait_for

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

    def kubectl(self, *args: str, timeout: float = 300) -> str:
        from .cluster import kubectl_run

        return kubectl_run(self.kubeconfig, *args, timeout=timeout)

    @contextmanager
    def namespace(self, prefix: str, labels: Mapping[str, str] | None = None) -> Iterator[str]:
        """A fresh namespace ``<prefix>-<random>`` with ``labels``; at exit it is deleted and its
        pods are waited for (gone from the API and from every kubelet: processes, network
        namespaces and mounts with them)."""
        name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        self.kubectl("create", "namespace", name)
        try:
            if labels:
                self.kubectl("label", "namespace", name, "--overwrite",
                             *(f"{k}={v}" for k, v in labels.items()))  # fmt: skip
            yield name
        finally:
            self.delete_namespace(name)

    def delete_namespace(self, name: str, timeout: float = 240.0) -> None:
        """Delete the namespace's RpcJobs and pods at once (not when the namespace controller
        gets to them), then the namespace; wait for both to be gone: an operator a later test
        starts here (every namespace) must find none of them."""
        api = Api(self.kubeconfig)
        jobs = f"/apis/{contract.GROUP}/{contract.VERSION}/namespaces/{name}/{contract.PLURAL}"
        pods = f"/api/v1/namespaces/{name}/pods"
        for path in (jobs, pods, f"/api/v1/namespaces/{name}"):
            api.call("DELETE", path)  # a collection's DELETE deletes every item (gracefully)

        def idle() -> bool:
            running = [e for k in self.kubelets() for e in list(k.pods.values())
                       if e.pod["metadata"]["namespace"] == name]  # fmt: skip
            return not running and not api.items(pods) and not api.items(jobs)

        wait_for(idle, timeout, f"the RpcJobs and pods of namespace {name} to go")

    def hand_crds_to_release(self, release: str, namespace: str) -> None:
        """Let a release of the chart with ``crds.install`` (the default) own the RpcJob CRD
        this cluster was started with: Helm's adoption label and annotations, as a user sets
        them who applied crds/ with kubectl first. ``helm uninstall`` keeps the CRD."""
        crd = f"crd/{contract.CRD_NAME}"
        self.kubectl("label", crd, "--overwrite", "app.kubernetes.io/managed-by=Helm")
        self.kubectl("annotate", crd, "--overwrite", f"meta.helm.sh/release-name={release}",
                     f"meta.helm.sh/release-namespace={namespace}")  # fmt: skip

    @contextmanager
    def extra_node(self, prefix: str, gpus: int = 0) -> Iterator[Any]:
        """One more node ``<prefix>-<random>`` (its process kubelet) for the block; then its
        kubelet stops and its Node and Lease are deleted. Delete what runs there first."""
        assert self.k8s is not None
        name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        try:
            kubelet = self.k8s.add_node(name, gpus)
            yield kubelet
        finally:
            if self.k8s is not None and name in [k.name for k in self.k8s.kubelets]:
                self.k8s.remove_node(next(k for k in self.k8s.kubelets if k.name == name))
            self.kubectl("delete", "node", name, "--ignore-not-found")
            self.kubectl("delete", "lease", name, "-n", "kube-node-lease", "--ignore-not-found")

    def stop(self) -> None:
        from .cluster import stop_cluster

        stop_cluster(self.k8s, self.etcd)
        self.k8s = self.etcd = None
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
