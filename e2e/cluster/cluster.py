"""The e2e cluster: the real control plane plus N process kubelets (e2e/cluster/kubelet.py).

Node ``node-<i>`` authenticates as ``system:node:node-<i>`` (its own client certificate, so the
Node authorizer and NodeRestriction apply), gets its podCIDR from the controller manager's
node-ipam controller, and reports ``nvidia.com/gpu`` capacity plus GPU Feature Discovery labels
when it has GPUs.

With ``network`` (the default) and nodes, the cluster also runs kube-proxy and CoreDNS in its
router namespace and has a default StorageClass (network.py): ClusterIP Services, cluster DNS
(every pod's resolv.conf names the ``kube-dns`` ClusterIP) and PersistentVolumeClaims work.
Several clusters may run on one host at once: each has its own router (router.py).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import build
from .controlplane import ControlPlane, ControlPlaneError
from .network import HOSTPATH_ROOT, ClusterNetwork

# Not under /tmp: a pod that mounts an emptyDir at /tmp would hide the sources of its other
# volumes (they live under the work dir) from the container's mount namespace.
WORK_ROOT = "/var/tmp"


def node_ip(slot: int, index: int) -> str:
    """node-<index>'s InternalIP: a loopback address the API server dials for logs."""
    return f"127.0.{100 + slot}.{index + 1}"


def unavailable() -> str | None:
    """Why a cluster cannot start here (the reason tests skip with), or None."""
    if build.built() is None:
        return (
            f"the pinned Kubernetes binaries are not built: run 'python3 -m e2e.cluster.build' "
            f"({build.pinned_version()} into {build.bin_dir()}; .ci/install runs it)"
        )
    if os.geteuid() != 0:
        return (
            "the real e2e cluster needs root (pod network and mount namespaces): run pytest as "
            "root, as CI does"
        )
    return None


def kubelet_available() -> bool:
    return importlib.util.find_spec("e2e.cluster.kubelet") is not None


def gpu_labels(gpus: int) -> dict[str, str]:
    """What GPU Feature Discovery would label a node with ``gpus`` H100s."""
    if gpus <= 0:
        return {}
    return {
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.count": str(gpus),
        "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
        "nvidia.com/gpu.memory": "81559",
        "nvidia.com/gpu.family": "hopper",
        "nvidia.com/mig.strategy": "none",
    }


@dataclass
class E2ECluster:
    work_dir: Path | None = None
    nodes: int = 1
    gpus_per_node: int = 0
    node_labels: dict[str, str] = field(default_factory=dict)
    network: bool = True
    control: ControlPlane | None = None
    net: ClusterNetwork | None = None
    kubelets: list[Any] = field(default_factory=list)
    started_in: float = 0.0
    _own_dir: bool = False
    _next_index: int = 0  # of the next node: picks its InternalIP (node_ip)

    @property
    def kubeconfig(self) -> Path:
        assert self.control is not None, "the cluster is not started"
        return self.control.admin_kubeconfig

    def start(self, timeout: float = 180.0) -> E2ECluster:
        t0 = time.monotonic()
        if self.work_dir is None:
            self.work_dir = Path(tempfile.mkdtemp(prefix="rpcjob-k8s-", dir=WORK_ROOT))
            self._own_dir = True
        try:
            self.control = ControlPlane(self.work_dir).start(timeout)
            # kube-proxy waits for its Node: no network without nodes (nothing would use it).
            if self.network and self.nodes:
                self.net = ClusterNetwork(self.control).start()
            if self.nodes and kubelet_available():
                self._start_nodes(t0 + timeout)
            if self.net is not None:
                self.net.wait_ready(t0 + timeout)
        except BaseException:
            self.stop()
            raise
        self.started_in = time.monotonic() - t0
        return self

    def _start_nodes(self, deadline: float) -> None:
        for i in range(self.nodes):
            self._kubelet(f"node-{i}", self.gpus_per_node).start()
        for i in range(self.nodes):
            self._wait_node_ready(f"node-{i}", deadline)

    def _kubelet(self, name: str, gpus: int) -> Any:
        """A process kubelet for node ``name`` with its own InternalIP, in ``kubelets`` (so
        ``stop`` stops it), not started yet."""
        from .kubelet import ProcessKubelet

        assert self.control is not None and self.work_dir is not None
        assert self.control.slot is not None
        index, self._next_index = self._next_index, self._next_index + 1
        kubelet = ProcessKubelet(
            self.control.node_kubeconfig(name), name, node_ip(self.control.slot.index, index),
            None, {**gpu_labels(gpus), **self.node_labels}, gpus, self.work_dir / "nodes" / name,
            cluster_dns=self.net.dns_address if self.net else None,
            router=self.control.slot.router.netns,
        )  # fmt: skip
        self.kubelets.append(kubelet)
        return kubelet

    def add_node(self, name: str, gpus: int = 0, timeout: float = 120.0) -> Any:
        """One more node on the running cluster, Ready; its kubelet is returned (stop it with
        ``remove_node``). A test that needs a node unlike the others (GPUs) adds one here
        rather than starting a cluster of its own."""
        kubelet = self._kubelet(name, gpus)
        try:
            kubelet.start()
            self._wait_node_ready(name, time.monotonic() + timeout)
        except BaseException:
            self.remove_node(kubelet)
            raise
        return kubelet

    def remove_node(self, kubelet: Any) -> None:
        """Stop an added node's kubelet (its pods' processes and namespaces); the caller deletes
        its Node object (the node's own credentials may not)."""
        self.kubelets.remove(kubelet)
        kubelet.stop()

    def _wait_node_ready(self, name: str, deadline: float) -> None:
        assert self.control is not None
        while True:
            node = self.control.get_json(f"/api/v1/nodes/{name}")
            conds = ((node or {}).get("status") or {}).get("conditions") or []
            if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds):
                return
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"node {name} did not become Ready; last: {node!r}")
            time.sleep(0.2)

    def stop(self) -> None:
        """Stop the kubelets (their pods, namespaces and interfaces), then the control plane;
        remove the work dir if this object made it."""
        errors: list[BaseException] = []
        while self.kubelets:
            try:
                self.kubelets.pop().stop()
            except BaseException as exc:  # the control plane and the other nodes still go
                errors.append(exc)
        if self.control is not None:
            volumes = self._provisioned_dirs()
            if self.net is not None:
                self.net.stop()
                self.net = None
            self.control.stop()
            self.control = None
            for path in volumes:  # their PVs die with this cluster's etcd
                shutil.rmtree(path, ignore_errors=True)
        if self._own_dir and self.work_dir is not None:
            shutil.rmtree(self.work_dir, ignore_errors=True)
        if errors:
            raise errors[0]

    def _provisioned_dirs(self) -> list[str]:
        """The directories the host-path provisioner made for this cluster's claims."""
        assert self.control is not None
        pvs = (self.control.get_json("/api/v1/persistentvolumes") or {}).get("items") or []
        paths = [str((pv["spec"].get("hostPath") or {}).get("path") or "") for pv in pvs]
        return [p for p in paths if p.startswith(HOSTPATH_ROOT + "/")]

    def __enter__(self) -> E2ECluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
