"""One pod's lifecycle as local processes, for the process kubelet and ``rpcjob run``:
volumes, init containers, native sidecars, containers, restarts with backoff, probes, status,
and graceful termination."""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from rpcjob_operator.localexec.containers import LocalContainer, ProcessSpec, process_spec
from rpcjob_operator.localexec.podenv import ContainerConfigError, PodInfo
from rpcjob_operator.localexec.podstate import RunnerConfig, Slot
from rpcjob_operator.localexec.probes import ProbeState, run_probe
from rpcjob_operator.model import worker_container_name

log = logging.getLogger("rpcjob.localexec.pods")
TICK = 0.05  # how often the runner looks at its processes


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class PodRunner(threading.Thread):
    def __init__(
        self,
        pod: dict[str, Any],
        pod_ip: str,
        cfg: RunnerConfig,
        write_status: Callable[[str, dict[str, Any]], None],
        finalize: Callable[[], None],
        gpu_env: Mapping[str, str],
    ) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['namespace']}/{meta['name']}", daemon=True)
        self.pod = pod
        self.worker_container = worker_container_name(pod)
        self.uid = meta["uid"]
        self.pod_ip = pod_ip
        self.cfg = cfg
        self.write_status_cb = write_status
        self.finalize_cb = finalize
        self.gpu_env = dict(gpu_env)
        # Short on purpose: the sidecar's unix socket lives below it (sockets: <= 107 bytes).
        self.dir = os.path.join(cfg.root, self.uid[:12])
        spec = pod["spec"]
        self.policy = spec.get("restartPolicy", "Always")
        self.inits = [
            Slot(c, sidecar=c.get("restartPolicy") == "Always", init=True)
            for c in spec.get("initContainers") or []
        ]
        self.mains = [Slot(c) for c in spec.get("containers") or []]
        self.stop_grace: float | None = None  # set when deletion asks the pod to stop
        self.shutdown = False  # cluster shutdown: kill quickly, write nothing
        self.wake = threading.Event()
        self.phase = "Pending"
        self.initialized = False
        self.start_time = now_iso()
        self.volumes: dict[str, str] = {}
        self.message = ""

    # --- control from the kubelet -------------------------------------------------------
    def request_stop(self, grace: float) -> None:
        self.stop_grace = grace if self.stop_grace is None else min(self.stop_grace, grace)
        self.wake.set()

    def kill_now(self) -> None:
        self.shutdown = True
        self.request_stop(0.0)

    def log_path(self, container: str) -> str:
        return os.path.join(self.dir, f"{container}.log")

    # --- status ---------------------------------------------------------------------------
    def _write(self) -> None:
        if self.shutdown:
            return
        ready_all = all(s.ready for s in self.mains) and all(
            s.ready for s in self.inits if s.sidecar
        )
        conds = [
            ("PodReadyToStartContainers", True),
            ("Initialized", self.initialized),
            ("Ready", ready_all and self.phase == "Running"),
            ("ContainersReady", ready_all and self.phase == "Running"),
            ("PodScheduled", True),
        ]
        status: dict[str, Any] = {
            "phase": self.phase,
            "podIP": self.pod_ip,
            "podIPs": [{"ip": self.pod_ip}],
            "hostIP": self.cfg.host_ip,
            "hostIPs": [{"ip": self.cfg.host_ip}],
            "startTime": self.start_time,
            "qosClass": "BestEffort",
            "conditions": [{"type": t, "status": "True" if v else "False"} for t, v in conds],
            "containerStatuses": [s.status() for s in self.mains],
        }
        if self.inits:
            status["initContainerStatuses"] = [s.status() for s in self.inits]
        if self.message:
            status["message"] = self.message
        self.write_status_cb(self.uid, status)

    # --- volumes ----------------------------------------------------------------------------
    def _make_volumes(self) -> None:
        """A directory per volume (``rpcjob run`` has no Secrets or ConfigMaps to project: the
        cluster kubelet's ClusterPodRunner writes those)."""
        for vol in self.pod["spec"].get("volumes") or []:
            name = vol["name"]
            if "hostPath" in vol:
                self.volumes[name] = vol["hostPath"]["path"]
                continue
            path = os.path.join(self.dir, "volumes", name)
            os.makedirs(path, exist_ok=True)
            self.volumes[name] = path

    # --- containers -----------------------------------------------------------------------
    def _start(self, slot: Slot) -> None:
        info = PodInfo.from_pod(self.pod, self.pod_ip, self.cfg.host_ip)
        ns = info.namespace
        lookup = self.cfg.lookup
        lookup_all = self.cfg.lookup_all
        try:
            spec = process_spec(
                slot.spec,
                info,
                self.volumes,
                pod_root=self.dir,
                default_cwd=self.cfg.default_cwd,
                lookup=(lambda k, n, key: lookup(ns, k, n, key)) if lookup else None,
                lookup_all=(lambda k, n: lookup_all(ns, k, n)) if lookup_all else None,
                image_entrypoints=self.cfg.image_entrypoints,
                image_workdirs=self.cfg.image_workdirs,
                extra_env={**self.cfg.extra_env, **self.gpu_env},
                rewrite_mounts=self.cfg.rewrite_mounts,
            )
        except ContainerConfigError as exc:
            slot.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(exc)}}
            slot.restart_at = time.monotonic() + self._backoff(slot)
            log.warning("pod %s: %s", self.pod_label, exc)
            return
        slot.env, slot.cwd = spec.env, spec.cwd
        slot.proc = self._container(slot, spec)
        try:
            slot.proc.start()
        except OSError as exc:
            slot.proc = None
            self._terminated(slot, 128, "StartError", str(exc))
            return
        slot.state = {"running": {"startedAt": now_iso()}}
        slot.restart_at = None
        for attr in ("readiness", "liveness"):
            probe = slot.spec.get(f"{attr}Probe")
            setattr(slot, attr, ProbeState(probe) if probe else None)

    def _container(self, slot: Slot, spec: ProcessSpec) -> LocalContainer:
        """The process of one container incarnation; the cluster kubelet (e2e/cluster)
        overrides this to start it inside the pod's network and mount namespaces."""
        worker = slot.name == self.worker_container and not slot.init
        spawner = self.cfg.spawner if worker else None
        return LocalContainer(slot.name, spec, self.log_path(slot.name), spawner)

    def _backoff(self, slot: Slot) -> float:
        return float(
            min(self.cfg.backoff_cap, self.cfg.backoff_base * (2 ** max(0, slot.restarts - 1)))
        )

    def _terminated(
        self, slot: Slot, code: int, reason: str | None = None, message: str = ""
    ) -> None:
        started = (slot.state.get("running") or {}).get("startedAt", now_iso())
        term: dict[str, Any] = {
            "exitCode": code,
            "reason": reason or ("Completed" if code == 0 else "Error"),
            "startedAt": started,
            "finishedAt": now_iso(),
        }
        if message:
            term["message"] = message
        if slot.proc is not None and slot.proc.pid:
            term["containerID"] = f"local://{slot.proc.pid}"
        slot.state = {"terminated": term}

    def _restart_wanted(self, slot: Slot, code: int) -> bool:
        if self.stop_grace is not None:
            return False
        if slot.sidecar:
            return True
        if slot.init:
            return code != 0 and self.policy != "Never"
        return self.policy == "Always" or (self.policy == "OnFailure" and code != 0)

    def _check(self, slot: Slot) -> None:
        """Notice an exit, schedule a restart, run due probes."""
        now = time.monotonic()
        if slot.proc is not None and "running" in slot.state:
            code = slot.proc.poll()
            if code is not None:
                self._terminated(slot, code)
                if self._restart_wanted(slot, code):
                    slot.last_state = slot.state
                    slot.restarts += 1
                    delay = self._backoff(slot)
                    slot.restart_at = now + delay
                    slot.state = {
                        "waiting": {
                            "reason": "CrashLoopBackOff",
                            "message": f"back-off {delay:.1f}s restarting failed "
                            f"container={slot.name}",
                        }
                    }
                else:
                    slot.done = True
                return
            for attr in ("readiness", "liveness"):
                ps: ProbeState | None = getattr(slot, attr)
                if ps is not None and ps.due(now):
                    ps.record(run_probe(ps.probe, slot.spec, self.pod_ip, slot.env, slot.cwd), now)
                    if attr == "liveness" and ps.failed:
                        # A warning, as kubelet's "Killing" event: the restart ends the
                        # member, so whoever sees it replaced must be able to tell why.
                        log.warning(
                            "pod %s: container %s failed its liveness probe %d times in a row "
                            "(last: %s); restarting it",
                            self.pod_label,
                            slot.name,
                            ps.failures,
                            ps.last_error,
                        )
                        slot.proc.stop(
                            float(self.pod["spec"].get("terminationGracePeriodSeconds", 30))
                        )
        elif slot.restart_at is not None and now >= slot.restart_at and self.stop_grace is None:
            self._start(slot)

    @property
    def pod_label(self) -> str:
        """``namespace/name`` for log lines (Thread.name stays the thread's own)."""
        return f"{self.pod['metadata']['namespace']}/{self.pod['metadata']['name']}"

    def _snapshot(self) -> str:
        return repr([(s.state, s.restarts, s.ready) for s in self.inits + self.mains]) + self.phase

    # --- lifecycle --------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._run()
        except Exception:  # the kubelet must survive one pod's bug; the pod shows Failed
            log.exception("pod %s: runner crashed", self.pod_label)
            self.phase, self.message = "Failed", "local kubelet error (see test log)"
            self._kill_all(0.0)
            self._write()
        if self.stop_grace is not None and not self.shutdown:
            self.finalize_cb()

    def _run(self) -> None:
        os.makedirs(self.dir, exist_ok=True)
        self._make_volumes()
        self._write()
        if not self._run_inits():
            return
        self.initialized = True
        self.phase = "Running"
        for slot in self.mains:
            self._start(slot)
        self._write()
        last = self._snapshot()
        while self.stop_grace is None:
            for slot in self.inits + self.mains:
                if slot.sidecar or not slot.init:
                    self._check(slot)
            if all(s.done for s in self.mains):
                break
            snap = self._snapshot()
            if snap != last:
                self._write()
                last = snap
            self.wake.wait(TICK)
        if self.stop_grace is not None:
            self._terminate_all(self.stop_grace)
            self._write()
            return
        self._stop_sidecars(float(self.pod["spec"].get("terminationGracePeriodSeconds", 30)))
        failed = any(s.state.get("terminated", {}).get("exitCode", 0) != 0 for s in self.mains)
        self.phase = "Failed" if failed else "Succeeded"
        self._write()

    def _run_inits(self) -> bool:
        for slot in self.inits:
            self._start(slot)
            self._write()
            if slot.sidecar:
                continue  # native sidecar: keeps running next to the containers
            while self.stop_grace is None:
                self._check(slot)
                if slot.done:
                    break
                self.wake.wait(TICK)
            if self.stop_grace is not None:
                self._terminate_all(self.stop_grace)
                self._write()
                return False
            code = slot.state["terminated"]["exitCode"]
            if code != 0:  # only reachable with restartPolicy Never
                self.phase = "Failed"
                self._stop_sidecars(2.0)
                self._write()
                return False
        return True

    def _stop_sidecars(self, grace: float) -> None:
        for slot in reversed(self.inits):
            if slot.sidecar and slot.proc is not None and "running" in slot.state:
                code = slot.proc.stop(grace)
                self._terminated(slot, code if code is not None else 137)
                slot.done = True

    def _terminate_all(self, grace: float) -> None:
        """Deletion: SIGTERM the containers, SIGKILL after grace; then the sidecars."""
        deadline = time.monotonic() + grace
        running = [s for s in self.mains if s.proc is not None and "running" in s.state]
        for s in running:
            s.proc.terminate()  # type: ignore[union-attr]
        for s in running:
            code = s.proc.stop(max(0.0, deadline - time.monotonic()))  # type: ignore[union-attr]
            self._terminated(s, code if code is not None else 137)
        for s in self.mains + self.inits:
            if not s.running and "waiting" in s.state:
                s.restart_at = None
        self._stop_sidecars(max(0.0, deadline - time.monotonic()))
        for s in self.inits:
            if s.proc is not None and "running" in s.state:
                code = s.proc.stop(0.0)
                self._terminated(s, code if code is not None else 137)

    def _kill_all(self, grace: float) -> None:
        for s in self.mains + self.inits:
            if s.proc is not None:
                s.proc.stop(grace)

    def stop_for_shutdown(self, grace: float) -> None:
        self.shutdown = True
        self.request_stop(grace)


# RunnerConfig and Slot live in podstate.py; importable from here as before.
__all__ = ["TICK", "PodRunner", "RunnerConfig", "Slot", "now_iso"]
