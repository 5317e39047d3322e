"""The process kubelet: Node objects, a small scheduler, and one PodRunner per bound pod.

It talks to the store in-process (not over HTTP) so that its own traffic does not show up in
the audit log that the RBAC scenario inspects.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import logging
import os
import queue
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rpcjob_operator.localexec.loopback import LoopbackPool
from rpcjob_operator.localexec.podrunner import PodRunner, RunnerConfig

from . import errors
from .resources import ResourceType
from .store import Event, Obj, Store, now_iso

log = logging.getLogger("e2e.localcluster.kubelet")
GPU = "nvidia.com/gpu"
GPU_PRODUCT = "NVIDIA-H100-80GB-HBM3"


@dataclass
class NodeSpec:
    name: str
    labels: dict[str, str] = field(default_factory=dict)
    capacity: dict[str, str] = field(default_factory=dict)

    @classmethod
    def make(
        cls,
        index: int,
        gpus: int = 0,
        labels: Mapping[str, str] | None = None,
        product: str = GPU_PRODUCT,
    ) -> NodeSpec:
        name = f"local-node-{index}"
        lb = {
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
        }
        cap = {"cpu": "16", "memory": "64Gi", "pods": "110", "ephemeral-storage": "100Gi"}
        if gpus:
            lb.update(
                {
                    "nvidia.com/gpu.present": "true",
                    "nvidia.com/gpu.count": str(gpus),
                    "nvidia.com/gpu.product": product,
                }
            )
            cap[GPU] = str(gpus)
        lb.update(labels or {})
        return cls(name, lb, cap)

    def obj(self) -> Obj:
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.name, "labels": dict(self.labels)},
            "spec": {},
            "status": {
                "capacity": dict(self.capacity),
                "allocatable": dict(self.capacity),
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "KubeletReady",
                        "message": "local process kubelet is posting ready status",
                        "lastHeartbeatTime": now_iso(),
                        "lastTransitionTime": now_iso(),
                    }
                ],
                "addresses": [
                    {"type": "InternalIP", "address": "127.0.0.1"},
                    {"type": "Hostname", "address": self.name},
                ],
                # Every field: the kubernetes client (pydantic models) rejects missing ones.
                "nodeInfo": {
                    "kubeletVersion": "v1.32.0-local",
                    "operatingSystem": "linux",
                    "architecture": "amd64",
                    "containerRuntimeVersion": "local-process://1",
                    "bootID": self.name,
                    "kernelVersion": os.uname().release,
                    "kubeProxyVersion": "",
                    "machineID": self.name,
                    "osImage": "rpcjob local cluster",
                    "systemUUID": self.name,
                },
            },
        }


def pod_gpus(pod: Obj) -> int:
    def req(c: dict[str, Any]) -> int:
        res = c.get("resources") or {}
        return int((res.get("limits") or {}).get(GPU) or (res.get("requests") or {}).get(GPU) or 0)

    spec = pod.get("spec") or {}
    mains = sum(req(c) for c in spec.get("containers") or [])
    inits = max([req(c) for c in spec.get("initContainers") or []] or [0])
    return max(mains, inits)


class Kubelet:
    def __init__(
        self,
        store: Store,
        nodes: Sequence[NodeSpec],
        root: str,
        *,
        default_cwd: str | None = None,
        image_entrypoints: Mapping[str, Sequence[str]] | None = None,
        image_workdirs: Mapping[str, str] | None = None,
        extra_env: Mapping[str, str] | None = None,
        backoff_base: float = 1.0,
        backoff_cap: float = 10.0,
        set_cuda_visible_devices: bool = False,
    ) -> None:
        self.store = store
        self.nodes = {n.name: n for n in nodes}
        self.cfg = RunnerConfig(
            root=root,
            default_cwd=default_cwd or os.getcwd(),
            image_entrypoints=dict(image_entrypoints or {}),
            image_workdirs=dict(image_workdirs or {}),
            extra_env=dict(extra_env or {}),
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            lookup=self._lookup,
            lookup_all=self._lookup_all,
        )
        self.set_cuda = set_cuda_visible_devices
        self.runners: dict[str, PodRunner] = {}  # uid -> runner
        self.gpus: dict[str, tuple[str, list[int]]] = {}  # uid -> (node, device indices)
        self.pending: dict[str, tuple[str, str]] = {}  # uid -> (namespace, name), unbound pods
        self.ips = LoopbackPool()
        self.events: queue.Queue[Event | None] = queue.Queue()
        self._cancel: Any = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        rt = store.registry.get("", "v1", "pods")
        nrt = store.registry.get("", "v1", "nodes")
        assert rt is not None and nrt is not None
        self.pod_rt: ResourceType = rt
        self.node_rt: ResourceType = nrt

    # --- lifecycle ----------------------------------------------------------------------
    def start(self) -> Kubelet:
        os.makedirs(self.cfg.root, exist_ok=True)
        for node in self.nodes.values():
            self.add_node(node)
        self._cancel = self.store.watch(
            self.pod_rt, None, None, lambda _lb: True, lambda _o: True, self.events.put
        )
        self._thread = threading.Thread(target=self._loop, name="localcluster-kubelet", daemon=True)
        self._thread.start()
        return self

    def add_node(self, node: NodeSpec) -> None:
        self.nodes[node.name] = node
        try:
            self.store.create(self.node_rt, None, node.obj(), keep_status=True)
        except errors.ApiError as exc:
            if exc.code != 409:
                raise
        self.events.put(None)  # re-try pending pods

    def stop(self, grace: float = 2.0) -> None:
        self._stopping = True
        if self._cancel:
            self._cancel()
        self.events.put(None)
        if self._thread:
            self._thread.join(10)
        runners = list(self.runners.values())
        for r in runners:
            r.stop_for_shutdown(grace)
        for r in runners:
            r.join(grace + 10)

    # --- secrets and configmaps for env and volumes --------------------------------------
    def _object(self, ns: str, kind: str, name: str) -> Obj | None:
        plural = "secrets" if kind == "secret" else "configmaps"
        rt = self.store.registry.get("", "v1", plural)
        assert rt is not None
        return self.store.raw(rt, ns, name)

    def _lookup_all(self, ns: str, kind: str, name: str) -> dict[str, str] | None:
        obj = self._object(ns, kind, name)
        if obj is None:
            return None
        if kind == "secret":
            data = {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
            data.update(obj.get("stringData") or {})
            return data
        return dict(obj.get("data") or {})

    def _lookup(self, ns: str, kind: str, name: str, key: str) -> str | None:
        return (self._lookup_all(ns, kind, name) or {}).get(key)

    # --- event loop -------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stopping:
            try:
                ev = self.events.get(timeout=0.2)
            except queue.Empty:
                ev = None
            try:
                if ev is not None:
                    self._on_pod(ev)
                self._schedule_pending()
                self._reap()
            except Exception:  # keep the kubelet alive; the failing pod shows in the log
                log.exception("local kubelet: error handling %s", ev.type if ev else "tick")

    def _on_pod(self, ev: Event) -> None:
        pod = ev.obj
        uid = pod["metadata"]["uid"]
        runner = self.runners.get(uid)
        if ev.type == "DELETED":
            if runner is not None:
                runner.kill_now()
            self._release(uid)
            return
        spec = pod.get("spec") or {}
        meta = pod["metadata"]
        if (
            not spec.get("nodeName")
            and not meta.get("deletionTimestamp")
            and spec.get("schedulerName", "default-scheduler") == "default-scheduler"
        ):
            self.pending[uid] = (meta["namespace"], meta["name"])
        else:
            self.pending.pop(uid, None)
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            self.gpus.pop(uid, None)  # terminal pods hold no devices
        node = spec.get("nodeName")
        if not node or node not in self.nodes:
            return
        if pod["metadata"].get("deletionTimestamp"):
            grace = float(pod["metadata"].get("deletionGracePeriodSeconds") or 0)
            if runner is None:
                self._finalize(pod["metadata"]["namespace"], pod["metadata"]["name"], uid)
            else:
                runner.request_stop(grace)
            return
        if runner is None and (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
            self._run(pod)

    def _run(self, pod: Obj) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        ip = "127.0.0.1" if pod["spec"].get("hostNetwork") else self.ips.take()
        devices = self.gpus.get(uid, ("", []))[1]
        gpu_env = {}
        if devices:
            gpu_env["NVIDIA_VISIBLE_DEVICES"] = ",".join(map(str, devices))
            if self.set_cuda:
                gpu_env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, devices))
        ns, name = meta["namespace"], meta["name"]
        runner = PodRunner(
            pod,
            ip,
            self.cfg,
            write_status=lambda u, status: self._write_status(ns, name, u, status),
            finalize=lambda: self._finalize(ns, name, uid),
            gpu_env=gpu_env,
        )
        self.runners[uid] = runner
        runner.start()

    def _write_status(self, ns: str, name: str, uid: str, status: dict[str, Any]) -> None:
        def apply(o: Obj) -> None:
            if o["metadata"]["uid"] == uid:
                o["status"] = status

        self.store.mutate(self.pod_rt, ns, name, apply, subresource="status")

    def _finalize(self, ns: str, name: str, uid: str) -> None:
        """The kubelet's final delete (grace 0) once the pod's processes are gone."""
        with self.store.lock:
            obj = self.store.raw(self.pod_rt, ns, name)
            if obj is None or obj["metadata"]["uid"] != uid:
                return
            with contextlib.suppress(errors.ApiError):
                self.store.delete(self.pod_rt, ns, name, grace=0, precondition_uid=uid)

    def _reap(self) -> None:
        """Terminating pods whose runner already ended (e.g. deleted after it Succeeded)."""
        for uid, runner in list(self.runners.items()):
            if runner.stop_grace is not None and not runner.is_alive() and not runner.shutdown:
                meta = runner.pod["metadata"]
                self._finalize(meta["namespace"], meta["name"], uid)

    def _release(self, uid: str) -> None:
        self.pending.pop(uid, None)
        self.runners.pop(uid, None)
        self.gpus.pop(uid, None)

    # --- scheduling -------------------------------------------------------------------------
    def _schedule_pending(self) -> None:
        for uid, (ns, name) in list(self.pending.items()):
            with self.store.lock:
                pod = self.store.raw(self.pod_rt, ns, name)
                pod = copy.deepcopy(pod) if pod is not None else None
            if pod is None or pod["metadata"]["uid"] != uid or pod["spec"].get("nodeName"):
                self.pending.pop(uid, None)
                continue
            self._schedule(pod)

    def _free_gpus(self, node: str) -> list[int]:
        used = {d for n, devs in self.gpus.values() if n == node for d in devs}
        total = int(self.nodes[node].capacity.get(GPU, "0"))
        return [i for i in range(total) if i not in used]

    def _schedule(self, pod: Obj) -> None:
        meta = pod["metadata"]
        need = pod_gpus(pod)
        selector = (pod.get("spec") or {}).get("nodeSelector") or {}
        fits, reasons = [], []
        for name, spec in sorted(self.nodes.items()):
            if any(spec.labels.get(k) != v for k, v in selector.items()):
                reasons.append("didn't match Pod's node affinity/selector")
            elif len(self._free_gpus(name)) < need:
                reasons.append(f"Insufficient {GPU}")
            else:
                fits.append(name)
        if not fits:
            summary = ", ".join(f"{reasons.count(r)} {r}" for r in sorted(set(reasons)))
            message = f"0/{len(self.nodes)} nodes are available: {summary}."

            def unschedulable(o: Obj) -> None:
                if o["metadata"]["uid"] != meta["uid"]:
                    return
                o.setdefault("status", {})["phase"] = "Pending"
                o["status"]["conditions"] = [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": message,
                    }
                ]

            self.store.mutate(self.pod_rt, meta["namespace"], meta["name"], unschedulable, "status")
            return
        # Spread: the node with the fewest pods of ours.
        load = {n: 0 for n in fits}
        for r in self.runners.values():
            n = r.pod["spec"].get("nodeName")
            if n in load:
                load[n] += 1
        node = min(fits, key=lambda n: (load[n], n))
        if need:
            self.gpus[meta["uid"]] = (node, self._free_gpus(node)[:need])

        def bind(o: Obj) -> None:
            if o["metadata"]["uid"] == meta["uid"] and not o["spec"].get("nodeName"):
                o["spec"]["nodeName"] = node

        self.store.mutate(self.pod_rt, meta["namespace"], meta["name"], bind)

    # --- logs ---------------------------------------------------------------------------------
    def logs(self, ns: str, name: str, container: str | None = None) -> str:
        for runner in self.runners.values():
            meta = runner.pod["metadata"]
            if meta["namespace"] == ns and meta["name"] == name:
                c = container or runner.mains[0].name
                try:
                    with open(runner.log_path(c)) as f:
                        return f.read()
                except FileNotFoundError:
                    return ""
        raise KeyError(f"{ns}/{name}")
