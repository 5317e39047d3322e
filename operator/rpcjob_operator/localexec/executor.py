"""``rpcjob run``: the operator's planner and pod renderer, applied to local processes.

Each cycle does what the operator does in a cluster: observe (pods = local PodRunners, members
from etcd), ``reconcile()`` (the same pure planner), write the one new status, apply the
actions. A pod is rendered by the same ``render_pod()`` and run by the same PodRunner as the
test cluster's kubelet: the injected sidecar and the worker get exactly the pod's env and
command, each pod on its own loopback IP. Services and NetworkPolicies have no local meaning
(loopback is one host) and are skipped.
"""

from __future__ import annotations

import copy
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, assert_never

from rpcjob import contract
from rpcjob.etcd import Client, EtcdError
from rpcjob.records import MemberRecord, read_members
from rpcjob_operator import model
from rpcjob_operator.localexec.control import keys
from rpcjob_operator.localexec.loopback import LoopbackPool
from rpcjob_operator.localexec.podrunner import PodRunner, RunnerConfig, now_iso
from rpcjob_operator.localexec.zygote_client import ForkServer
from rpcjob_operator.plan import reconcile
from rpcjob_operator.render import OperatorDefaults, render_pod
from rpcjob_operator.spec import parse_job
from rpcjob_operator.status import JobStatus

TICK = 0.2
NODE = "local"
FINISHED = ("Succeeded", "Failed")
Emit = Callable[[dict[str, Any]], None]


def node_gpu_count(labels: dict[str, str]) -> int:
    """The GPUs this machine offers local pods: rpcjob.dev/gpus, else nvidia.com/gpu.count."""
    for key in (contract.NODE_LABEL_GPUS_OVERRIDE, "nvidia.com/gpu.count"):
        raw = labels.get(key, "")
        if raw.isdigit():
            return int(raw)
    return 0


@dataclass
class LocalPod:
    obj: dict[str, Any]
    runner: PodRunner
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def name(self) -> str:
        return str(self.obj["metadata"]["name"])

    def set_status(self, status: dict[str, Any]) -> None:
        with self.lock:
            self.obj["status"] = status

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return copy.deepcopy(self.obj)

    @property
    def grace(self) -> float:
        return float(self.obj["spec"].get("terminationGracePeriodSeconds", 30))


@dataclass
class RunOptions:
    workdir: str  # the job file's folder: default working dir of containers
    root: str  # temp dir for pod directories and logs
    etcd_endpoint: str
    node_labels: dict[str, str] = field(default_factory=dict)
    lease_ttl: int = 3
    # Fork worker containers from a process that has imported torch (zygote_client.py)
    fork_server: bool = False


class LocalJob:
    def __init__(self, obj: dict[str, Any], opts: RunOptions, emit: Emit) -> None:
        self.emit = emit
        self.obj = copy.deepcopy(obj)
        md = self.obj.setdefault("metadata", {})
        md.setdefault("namespace", "default")
        md["uid"] = str(uuid.uuid4())
        md["generation"] = 1
        md["creationTimestamp"] = now_iso()
        self.obj.setdefault("status", {})
        self.name = str(md["name"])
        self.namespace = str(md["namespace"])
        self.uid = str(md["uid"])
        self.keys = contract.JobKeys(self.namespace, self.name, self.uid)
        self.pods: dict[str, LocalPod] = {}
        self.ips = LoopbackPool()
        self.wake = threading.Event()
        self.defaults = OperatorDefaults(
            sidecar_image="local", etcd_endpoints=(opts.etcd_endpoint,), lease_ttl=opts.lease_ttl
        )
        self.client = Client(opts.etcd_endpoint, timeout=5.0)
        self.fork_server = ForkServer(opts.root, self.warn) if opts.fork_server else None
        self.runner_cfg = RunnerConfig(
            root=opts.root,
            default_cwd=opts.workdir,
            image_entrypoints={},
            image_workdirs={},
            extra_env={
                contract.ENV_NODE_LABELS: json.dumps(opts.node_labels),
                contract.ENV_LEASE_TTL: str(opts.lease_ttl),
            },
            backoff_base=0.5,
            spawner=self.fork_server,
        )
        self.stopping = False
        self.members: tuple[MemberRecord, ...] = ()
        self.gpu_total = node_gpu_count(opts.node_labels)
        self.gpus_used: dict[str, tuple[int, ...]] = {}  # pod name -> GPU indices
        self.gpu_waiting: set[str] = set()

    def warn(self, message: str) -> None:
        self.emit({"type": "warning", "message": message})

    # --- observe ----------------------------------------------------------------------------
    def _read_members(self) -> tuple[MemberRecord, ...] | None:
        try:
            return read_members(self.client, self.keys)
        except EtcdError as exc:
            self.warn(f"etcd: {exc}")
            return None

    def observe(self) -> model.Observed:
        pods = tuple(model.PodView.from_pod(p.snapshot()) for p in list(self.pods.values()))
        members = self._read_members()
        if members is not None:
            self.members = members
        return model.Observed(
            pods=pods, members=members, status=JobStatus.from_dict(self.obj["status"])
        )

    # --- act ----------------------------------------------------------------------------------
    def _create(self, action: model.CreatePod) -> None:
        job = parse_job(self.obj)
        pod = render_pod(job, action.slot, defaults=self.defaults)
        md = pod["metadata"]
        md.update(uid=str(uuid.uuid4()), creationTimestamp=now_iso(), resourceVersion="1")
        md.setdefault("namespace", self.namespace)
        pod["spec"]["nodeName"] = NODE
        pod["status"] = {"phase": "Pending"}
        name = str(md["name"])
        if name in self.pods:
            return  # like a 409 on create: the pod exists
        gpu_env = self._take_gpus(name, job.roles[action.slot.role].gpus or 0)
        if gpu_env is None:
            return  # Pending: the planner asks again next cycle
        ip = self.ips.take()
        holder: dict[str, LocalPod] = {}

        def write_status(_uid: str, status: dict[str, Any]) -> None:
            holder["pod"].set_status(status)
            self.wake.set()

        def finalize() -> None:
            self._forget(holder["pod"])
            self.wake.set()

        runner = PodRunner(pod, ip, self.runner_cfg, write_status, finalize, gpu_env)
        holder["pod"] = LocalPod(pod, runner)
        self.pods[name] = holder["pod"]
        runner.start()
        self.emit(
            {
                "type": "pod",
                "action": "created",
                "pod": name,
                "slot": action.slot.worker_name,
                "ip": ip,
                "replacement": action.replacement,
                "log": runner.log_path(runner.worker_container),
                "sidecar_log": runner.log_path(contract.SIDECAR_CONTAINER),
            }
        )

    def _take_gpus(self, pod: str, need: int) -> dict[str, str] | None:
        """Whole GPUs for a pod, as the device plugin gives them; None: not enough free."""
        if need <= 0:
            return {}
        used = {i for devs in self.gpus_used.values() for i in devs}
        free = [i for i in range(self.gpu_total) if i not in used]
        if len(free) < need:
            if pod not in self.gpu_waiting:
                self.gpu_waiting.add(pod)
                self.warn(
                    f"pod {pod} waits for {need} GPU(s): {len(free)} of {self.gpu_total} free "
                    "(--node-labels sets the count)"
                )
            return None
        self.gpu_waiting.discard(pod)
        ids = ",".join(map(str, free[:need]))
        self.gpus_used[pod] = tuple(free[:need])
        return {"CUDA_VISIBLE_DEVICES": ids, "NVIDIA_VISIBLE_DEVICES": ids}

    def _delete(self, action: model.DeletePod) -> None:
        pod = self.pods.get(action.name)
        if pod is None or pod.obj["metadata"]["uid"] != action.uid:
            return  # 404 / precondition failed: nothing to do
        with pod.lock:
            if pod.obj["metadata"].get("deletionTimestamp"):
                return
            pod.obj["metadata"]["deletionTimestamp"] = now_iso()
        grace = pod.grace if action.grace_seconds is None else float(action.grace_seconds)
        self.emit({"type": "pod", "action": "deleted", "pod": action.name, "reason": action.reason})
        if pod.runner.is_alive():
            pod.runner.request_stop(grace)
        else:
            self._forget(pod)  # already finished: nothing to stop

    def _forget(self, pod: LocalPod) -> None:
        """The pod object is gone: drop it and give its GPUs back."""
        if self.pods.get(pod.name) is pod:
            del self.pods[pod.name]
            self.gpus_used.pop(pod.name, None)

    def apply_scale_requests(self) -> None:
        """Apply ``rpcjob scale`` requests (validated by the scaler) to the spec."""
        _spec_key, _status_key, scale_prefix = keys(self.name)
        try:
            kvs = self.client.get_prefix(scale_prefix)
        except EtcdError:
            return
        for kv in kvs:
            role = kv.key.decode()[len(scale_prefix) :]
            roles = self.obj["spec"]["roles"]
            if role in roles and kv.value.isdigit():
                old = roles[role].get("replicas")
                roles[role]["replicas"] = int(kv.value)
                self.obj["metadata"]["generation"] += 1
                self.emit({"type": "scale", "role": role, "from": old, "to": int(kv.value)})
            self.client.delete(kv.key)
        if kvs:
            self.publish(spec=True)

    def publish(self, spec: bool = False) -> None:
        spec_key, status_key, _ = keys(self.name)
        try:
            if spec:
                fields = ("apiVersion", "kind", "metadata", "spec")
                self.client.put(spec_key, json.dumps({k: self.obj[k] for k in fields}))
            summary = {
                "name": self.name,
                "status": self.obj["status"],
                "pods": {
                    n: {"phase": p.obj.get("status", {}).get("phase"), "ip": p.runner.pod_ip}
                    for n, p in list(self.pods.items())
                },
                "members": [m.__dict__ for m in self.members],
            }
            self.client.put(status_key, json.dumps(summary, default=list))
        except EtcdError as exc:
            self.warn(f"etcd: {exc}")

    def cycle(self) -> None:
        self.apply_scale_requests()
        plan = reconcile(self.obj, self.observe())
        status = plan.status.to_dict()  # the one serialisation of the cycle's status
        if status != self.obj["status"]:
            self.obj["status"] = status
            self.emit({"type": "status", "status": status})
            self.publish()
        for action in plan.actions:
            self._apply(action)

    def _apply(self, action: model.Action) -> None:
        """Every action the planner can decide, each applied or skipped for a stated reason."""
        match action:
            case model.CreatePod():
                if not self.stopping:  # Ctrl-C: the pods are going, none is added
                    self._create(action)
            case model.DeletePod():
                self._delete(action)
            case model.RecordEvent():
                self.emit(
                    {
                        "type": "event",
                        "event": action.type,
                        "reason": action.reason,
                        "message": action.message,
                    }
                )
            case model.EnsureService() | model.EnsureNetworkPolicy():
                # Loopback is one host: pods reach each other by IP (no DNS names to publish)
                # and no other host can reach them (nothing to fence off).
                pass
            case model.DeleteJob():
                pass  # locally the run ends with the job; there is nothing to collect
            case _:
                assert_never(action)

    @property
    def state(self) -> str:
        return str(self.obj["status"].get("state", ""))

    def rows(self) -> list[tuple[str, str, str]]:
        """(slot, pod, phase) of every pod, for the live table."""
        out = []
        for pod in list(self.pods.values()):
            obj = pod.snapshot()
            labels = obj["metadata"].get("labels", {})
            phase = str(obj.get("status", {}).get("phase", "Pending"))
            if obj["metadata"].get("deletionTimestamp"):
                phase = "Terminating"
            out.append((str(labels.get(contract.LABEL_WORKER_NAME, "")), pod.name, phase))
        return sorted(out)

    def finished(self) -> bool:
        return self.state in FINISHED and not any(
            p.runner.is_alive() for p in list(self.pods.values())
        )

    def run(self, interrupted: threading.Event) -> str:
        """Run until the job finishes or ``interrupted`` is set; returns the final state."""
        self.publish(spec=True)
        while not self.finished():
            if interrupted.is_set():
                return "Interrupted"
            self.cycle()
            self.wake.wait(TICK)
            self.wake.clear()
        self.publish()
        return self.state

    def stop_all(self, timeout: float = 60.0) -> None:
        """Ctrl-C: every worker drains and leaves (SIGTERM), then sidecars stop."""
        self.stopping = True
        for pod in list(self.pods.values()):
            pod.obj["metadata"].setdefault("deletionTimestamp", now_iso())
            pod.runner.request_stop(pod.grace)
        deadline = time.monotonic() + timeout
        for pod in list(self.pods.values()):
            pod.runner.join(max(0.0, deadline - time.monotonic()))
        for pod in list(self.pods.values()):
            if pod.runner.is_alive():
                pod.runner.kill_now()
                pod.runner.join(5.0)

    def cleanup_keys(self) -> None:
        """The run is over: stop the fork server, remove the job's keys."""
        if self.fork_server is not None:
            self.fork_server.close()
        try:
            self.client.delete(self.keys.root, prefix=True)
            self.client.delete(contract.local_control_prefix(self.name), prefix=True)
        except EtcdError:
            pass
        self.client.close()
