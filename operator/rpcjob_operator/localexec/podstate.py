"""What a pod runner (``podrunner.py``) is configured with, and each container's state in it:
restarts, the kubelet-style ``state``/``lastState``, probes and the status it reports."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rpcjob_operator.localexec.containers import LocalContainer, Spawner
from rpcjob_operator.localexec.probes import ProbeState


@dataclass
class RunnerConfig:
    root: str  # per-pod directories live under here
    default_cwd: str
    image_entrypoints: Mapping[str, Sequence[str]]
    image_workdirs: Mapping[str, str]
    extra_env: Mapping[str, str]
    backoff_base: float = 1.0
    backoff_cap: float = 10.0
    lookup: Callable[[str, str, str, str], str | None] | None = None  # (ns, kind, name, key)
    lookup_all: Callable[[str, str, str], Mapping[str, str] | None] | None = None
    host_ip: str = "127.0.0.1"  # status.hostIP and the downward API's status.hostIP
    # False where the caller mounts volumes for real (the cluster kubelet's mount namespaces):
    # paths in env, command and workingDir then stay as the pod spec wrote them.
    rewrite_mounts: bool = True
    # rpcjob run's fork server for the pods' worker containers (zygote_client.py); None: cold
    spawner: Spawner | None = None


@dataclass
class Slot:
    """One container (or native sidecar) and its history."""

    spec: dict[str, Any]
    sidecar: bool = False
    init: bool = False
    proc: LocalContainer | None = None
    restarts: int = 0
    state: dict[str, Any] = field(
        default_factory=lambda: {"waiting": {"reason": "PodInitializing"}}
    )
    last_state: dict[str, Any] = field(default_factory=dict)
    restart_at: float | None = None
    done: bool = False  # terminated for good
    readiness: ProbeState | None = None
    liveness: ProbeState | None = None
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    @property
    def running(self) -> bool:
        return "running" in self.state

    @property
    def ready(self) -> bool:
        if not self.running:
            return False
        return self.readiness.ok if self.readiness else True

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "image": self.spec.get("image", ""),
            "imageID": "",
            "ready": self.ready,
            "started": self.running,
            "restartCount": self.restarts,
            "state": copy.deepcopy(self.state),
            "lastState": copy.deepcopy(self.last_state),
        }
        if self.proc is not None and self.proc.pid:
            out["containerID"] = f"local://{self.proc.pid}"
        return out
