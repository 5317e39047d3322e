"""The Node object and Lease of the process kubelet (pure renderers)."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from typing import Any

GPU = "nvidia.com/gpu"
LEASE_NAMESPACE = "kube-node-lease"
LEASE_SECONDS = 40
KUBELET_PORT = 10250


def now_iso(micro: bool = False) -> str:
    t = dt.datetime.now(dt.UTC)
    if micro:
        return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def node_labels(name: str, labels: Mapping[str, str]) -> dict[str, str]:
    """The labels a kubelet sets on its Node, then the caller's (GFD labels and the like)."""
    out = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
    }
    out.update(labels)
    return out


def capacity(gpus: int) -> dict[str, str]:
    cap = {"cpu": "16", "memory": "64Gi", "pods": "110", "ephemeral-storage": "100Gi"}
    if gpus:
        cap[GPU] = str(gpus)
    return cap


def node_status(
    node_ip: str, gpus: int, version: str, port: int = KUBELET_PORT, ready: bool = True
) -> dict[str, Any]:
    """Only an InternalIP address: the API server dials the first of its preferred address
    types (Hostname first by default), and a node name does not resolve here."""
    t = now_iso()
    cap = capacity(gpus)
    return {
        "capacity": cap,
        "allocatable": dict(cap),
        "conditions": [
            {
                "type": "Ready",
                "status": "True" if ready else "False",
                "reason": "KubeletReady" if ready else "KubeletNotReady",
                "message": "rpcjob process kubelet is posting ready status",
                "lastHeartbeatTime": t,
                "lastTransitionTime": t,
            }
        ]
        + [
            {
                "type": kind,
                "status": "False",
                "reason": reason,
                "message": f"kubelet has {text}",
                "lastHeartbeatTime": t,
                "lastTransitionTime": t,
            }
            for kind, reason, text in (
                ("MemoryPressure", "KubeletHasSufficientMemory", "sufficient memory available"),
                ("DiskPressure", "KubeletHasNoDiskPressure", "no disk pressure"),
                ("PIDPressure", "KubeletHasSufficientPID", "sufficient PID available"),
            )
        ],
        "addresses": [{"type": "InternalIP", "address": node_ip}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
        "nodeInfo": {
            "kubeletVersion": version,
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": "amd64",
            "containerRuntimeVersion": "rpcjob-process://1",
            "kernelVersion": os.uname().release,
            "osImage": "rpcjob process kubelet",
            "bootID": "",
            "machineID": "",
            "systemUUID": "",
        },
    }


def node_object(
    name: str,
    labels: Mapping[str, str],
    node_ip: str,
    gpus: int,
    version: str,
    pod_cidr: str | None,
    port: int = KUBELET_PORT,
) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if pod_cidr:
        spec = {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": node_labels(name, labels)},
        "spec": spec,
        "status": node_status(node_ip, gpus, version, port),
    }


def lease_object(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "namespace": LEASE_NAMESPACE},
        "spec": {
            "holderIdentity": name,
            "leaseDurationSeconds": LEASE_SECONDS,
            "renewTime": now_iso(micro=True),
        },
    }


def pod_gpus(pod: Mapping[str, Any]) -> int:
    """Whole GPUs a pod needs: the sum over its containers, or the largest init container."""

    def req(c: Mapping[str, Any]) -> int:
        res = c.get("resources") or {}
        return int((res.get("limits") or {}).get(GPU) or (res.get("requests") or {}).get(GPU) or 0)

    spec = pod.get("spec") or {}
    mains = sum(req(c) for c in spec.get("containers") or [])
    inits = max([req(c) for c in spec.get("initContainers") or []] or [0])
    return max(mains, inits)
