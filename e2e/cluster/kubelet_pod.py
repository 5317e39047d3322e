"""One pod of the cluster kubelet: localexec's PodRunner (init containers, native sidecars
first and last, probes, grace periods, restarts, statuses), with real volumes, the pod's network
namespace, one mount namespace per container, and timestamped logs per incarnation."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rpcjob_operator.localexec.containers import LocalContainer, ProcessSpec
from rpcjob_operator.localexec.podenv import PodInfo
from rpcjob_operator.localexec.podrunner import TICK, PodRunner, Slot
from rpcjob_operator.localexec.probes import ProbeState, run_probe

from .kubelet_api import LogsUnavailable
from .kubelet_logs import ContainerLogs, LogWriter
from .kubelet_volumes import Source, VolumeNotReady, volume_dir, volume_files, write_files
from .mounts import (
    HostMountpoints,
    hosts_file,
    plan_mounts,
    resolv_conf,
    start_script,
    wrap_argv,
)

VOLUME_RETRY = 1.0  # seconds between tries of a volume whose object is missing (FailedMount)


def local_argv(argv: list[str], env: Mapping[str, str]) -> list[str]:
    """An image's program at an absolute path (``/usr/local/bin/etcd``) that this host lacks
    runs as the program of that name on PATH: images map to the host's programs."""
    if argv and os.path.isabs(argv[0]) and not os.path.exists(argv[0]):
        found = shutil.which(os.path.basename(argv[0]), path=env.get("PATH"))
        if found:
            return [found, *argv[1:]]
    return argv


@dataclass
class PodSandbox:
    """What the kubelet prepared for the pod besides its IP: its netns (None: hostNetwork),
    where its volumes' objects come from, the node's mount points and the pod's DNS."""

    netns_path: str | None
    source: Source
    mountpoints: HostMountpoints
    cluster_dns: str | None = None  # the kubelet's --cluster-dns
    domain: str = "cluster.local"  # its --cluster-domain


class NsContainer(LocalContainer):
    """A container process started inside the pod's namespaces, its output piped to a
    timestamping log writer."""

    def __init__(self, name: str, spec: ProcessSpec, argv: list[str], logs: ContainerLogs) -> None:
        super().__init__(name, spec, None)
        self.argv = argv
        self.logs = logs
        self.writer: LogWriter | None = None

    def start(self) -> None:
        self._terminated = False
        self.proc = subprocess.Popen(
            self.argv,
            env=self.spec.env,
            cwd="/",  # workingDir is entered by the start script, inside the mount namespace
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.started_at = time.time()
        assert self.proc.stdout is not None
        self.writer = self.logs.attach(self.name, self.proc.stdout)


class ClusterPodRunner(PodRunner):
    def __init__(self, *runner_args: Any, sandbox: PodSandbox, **runner_kwargs: Any) -> None:
        """PodRunner's arguments (the pod, its IP, ...) and what the kubelet prepared for it."""
        super().__init__(*runner_args, **runner_kwargs)
        self.sandbox = sandbox
        self.logs = ContainerLogs(self.dir)
        # container -> (its startupProbe's state, its readiness state once started)
        self.startup: dict[str, tuple[ProbeState, ProbeState | None]] = {}
        write = self.write_status_cb
        self.write_status_cb = lambda uid, status: write(uid, self._startup_status(status))

    # --- volumes -------------------------------------------------------------------------
    def _make_volumes(self) -> None:
        """Write every volume; a missing Secret/ConfigMap is retried until it appears or the
        pod is deleted (the containers wait in ContainerCreating meanwhile)."""
        info = PodInfo.from_pod(self.pod, self.pod_ip, self.cfg.host_ip)
        root = os.path.join(self.dir, "volumes")
        pending = list(self.pod["spec"].get("volumes") or [])
        while pending and self.stop_grace is None:
            vol = pending[0]
            try:
                path = volume_dir(vol, root, self.sandbox.source)
                write_files(path, volume_files(vol, info, self.pod["spec"], self.sandbox.source))
            except VolumeNotReady as exc:
                self.message = f"MountVolume.SetUp failed for volume {vol['name']!r}: {exc}"
                for s in self.inits + self.mains:
                    s.state = {"waiting": {"reason": "ContainerCreating"}}
                self._write()
                self.wake.wait(VOLUME_RETRY)
                continue
            self.volumes[vol["name"]] = path
            pending.pop(0)
        self.message = ""
        hosts = hosts_file(self.pod_ip, self._hostname(), self.pod["spec"].get("hostAliases") or [])
        with open(os.path.join(self.dir, "hosts"), "w") as f:
            f.write(hosts)
        ns = str(self.pod["metadata"]["namespace"])
        resolv = resolv_conf(self.pod["spec"], ns, self.sandbox.cluster_dns, self.sandbox.domain)
        if resolv is not None:
            with open(os.path.join(self.dir, "resolv.conf"), "w") as f:
                f.write(resolv)

    def _hostname(self) -> str:
        spec = self.pod["spec"]
        return str(spec.get("hostname") or self.pod["metadata"]["name"])

    # --- containers ----------------------------------------------------------------------
    def _container(self, slot: Slot, spec: ProcessSpec) -> LocalContainer:
        mounts = plan_mounts(slot.spec, self.volumes)
        for m in mounts:
            self.sandbox.mountpoints.ensure(m.target, os.path.isfile(m.source))
        own = {e["name"] for e in slot.spec.get("env") or []}
        for var in ("KUBECONFIG",):  # the kubelet's own, never a pod's
            if var not in own:
                spec.env.pop(var, None)
        wd = slot.spec.get("workingDir")
        host_net = bool(self.pod["spec"].get("hostNetwork"))
        script = os.path.join(self.dir, f"start-{slot.name}.sh")
        resolv = os.path.join(self.dir, "resolv.conf")
        with open(script, "w") as f:
            f.write(
                start_script(
                    mounts,
                    None if host_net else os.path.join(self.dir, "hosts"),
                    None if host_net else self._hostname(),
                    str(wd) if wd else spec.cwd,
                    resolv if os.path.exists(resolv) else None,
                )
            )
        argv = wrap_argv(self.sandbox.netns_path, script, local_argv(spec.argv, spec.env))
        return NsContainer(slot.name, spec, argv, self.logs)

    def log_file(self, container: str, previous: bool) -> str:
        """The incarnation ``kubectl logs`` reads; LogsUnavailable says why there is none."""
        slots = {s.name: s for s in self.inits + self.mains}
        name = self.pod["metadata"]["name"]
        if container not in slots:
            raise LogsUnavailable(
                400, f'container "{container}" in pod "{name}" is not valid; one of {list(slots)}'
            )
        path = self.logs.pick(container, previous, "waiting" in slots[container].state)
        if path is None and previous:
            raise LogsUnavailable(
                400, f'previous terminated container "{container}" in pod "{name}" not found'
            )
        if path is None:
            raise LogsUnavailable(
                400, f'container "{container}" in pod "{name}" is waiting to start'
            )
        return path

    # --- startup probes ----------------------------------------------------------------------
    # PodRunner runs readiness and liveness probes; a startupProbe holds both back (and keeps
    # the container unready) until it succeeds, restarts the container when it fails, and a
    # native sidecar with one must have started before the next container starts.
    def _start(self, slot: Slot) -> None:
        super()._start(slot)
        self._exec_probes_inside(slot)
        probe = slot.spec.get("startupProbe")
        if not probe or not slot.running:
            self.startup.pop(slot.name, None)
            return
        if "exec" in probe and slot.proc is not None and slot.proc.pid is not None:
            command = exec_in(slot.proc.pid, list(probe["exec"]["command"]), None)
            probe = {**probe, "exec": {"command": command}}
        self.startup[slot.name] = (ProbeState(probe), slot.readiness)
        slot.readiness = _never_ready()
        if slot.sidecar:
            self._write()  # running, not started, not ready: what the API shows meanwhile
            while self.stop_grace is None and slot.name in self.startup and slot.running:
                self._check(slot)
                self.wake.wait(TICK)

    def _exec_probes_inside(self, slot: Slot) -> None:
        """Exec probes run where the container runs, not on the host: PodRunner starts them
        with the container's env and cwd, so the command enters its namespaces, and the cwd
        (the workingDir, maybe only inside its mounts) is entered there."""
        pid = slot.proc.pid if slot.proc is not None else None
        if pid is None or not slot.running:
            return
        wd = slot.cwd
        for attr in ("readiness", "liveness"):
            state: ProbeState | None = getattr(slot, attr)
            if state is not None and "exec" in state.probe:
                cmd = exec_in(pid, list(state.probe["exec"]["command"]), wd)
                state.probe = {**state.probe, "exec": {"command": cmd}}
        slot.cwd = "/"

    def _startup_status(self, status: dict[str, Any]) -> dict[str, Any]:
        """``started`` stays false while a container's startupProbe has not passed."""
        for key in ("containerStatuses", "initContainerStatuses"):
            for cs in status.get(key) or []:
                if cs["name"] in self.startup:
                    cs["started"] = False
        return status

    def _check(self, slot: Slot) -> None:
        pending = self.startup.get(slot.name)
        if pending is None or slot.proc is None or not slot.running or slot.proc.poll() is not None:
            super()._check(slot)
            return
        state, readiness = pending
        now = time.monotonic()
        if state.due(now):
            state.record(run_probe(state.probe, slot.spec, self.pod_ip, slot.env, slot.cwd), now)
        if state.ok:
            del self.startup[slot.name]
            slot.readiness = readiness
            if readiness is not None:  # its delays count from now, as after a real startup
                slot.readiness = ProbeState(readiness.probe)
        elif state.failed:
            del self.startup[slot.name]
            grace = float(self.pod["spec"].get("terminationGracePeriodSeconds", 30))
            slot.proc.stop(grace)  # the next _check sees the exit and restarts per policy


def exec_in(pid: int, command: list[str], workdir: str | None) -> list[str]:
    """An exec probe's command run in the container's namespaces (network, mounts, hostname)."""
    wd = [f"--wd={workdir}"] if workdir else []
    return ["nsenter", f"--target={pid}", "--net", "--mount", "--uts", *wd, "--", *command]


def _never_ready() -> ProbeState:
    """Readiness while a startupProbe has not succeeded: never due, never ok."""
    state = ProbeState({"periodSeconds": 1e9})
    state.next_at = float("inf")
    return state
