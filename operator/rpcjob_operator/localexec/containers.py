"""Run a Kubernetes container spec as a local process, with exactly the pod's env and command.

Shared by the process kubelet of the local test cluster (e2e/) and ``rpcjob run``. No
Kubernetes client here: callers pass plain dicts (a container spec, a pod) and an optional
``lookup`` for Secret / ConfigMap values.

How a container maps to a process:

* **command**: ``command + args`` with ``$(VAR)`` expanded from the container's env, as the
  kubelet does. Without ``command`` the image's entrypoint is looked up in ``image_entrypoints``
  (by full image name without tag/digest, then by its last path component); an unknown image
  is a ``ContainerConfigError``. Images are otherwise ignored: ``python``/``python3`` run this
  machine's interpreter (``sys.executable``), other programs are found on PATH.
* **env**: the parent environment (PATH, PYTHONPATH, ...) minus ``KUBERNETES_*`` and
  ``RPCJOB_*``, then the container's ``envFrom`` and ``env`` (literal values, downward-API
  ``fieldRef`` and ``resourceFieldRef``, Secret/ConfigMap keys through ``lookup``), then
  ``RPCJOB_LOCAL_POD_IP`` and ``RPCJOB_LOCAL_MOUNTS`` (see below).
* **volumes**: processes cannot mount, so each volume is a host directory (``volume_dirs``:
  volume name -> directory; ``subPath`` appends). Every occurrence of a mount path at a path
  boundary in env values, command, args and workingDir is replaced by the host directory
  (longest mount path first), and the mapping ``{mountPath: hostDir}`` is exported as JSON in
  ``RPCJOB_LOCAL_MOUNTS`` for code that builds paths from constants
  (``rpcjob.contract.local_path``). So ``RPCJOB_SOCKET=/var/run/rpcjob/sidecar.sock`` in both
  containers of a pod points at the same file in the pod's shared emptyDir directory.
  With ``rewrite_mounts=False`` (a caller that bind-mounts each volume at its path in a mount
  namespace, as e2e/cluster's kubelet does) nothing is rewritten and workingDir stays as given.
* **workingDir**: rewritten like a mount path; a directory that does not exist locally is
  created under the pod's root directory (``<pod_root>/<workingDir>``). Without it, the image's
  WORKDIR stands in: ``image_workdirs`` (image name without tag, or its last path component ->
  local directory), else ``default_cwd``.
* **stop**: SIGTERM to the process group, SIGKILL after the grace period. Exit codes follow
  container runtimes: a process killed by signal N exits ``128 + N``.
* **lifetime**: each process group dies with the process that started it, even when that one is
  SIGKILLed (``lifeline.py``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any, Protocol

from rpcjob.contract import ENV_LOCAL_MOUNTS, ENV_LOCAL_POD_IP
from rpcjob_operator.localexec import lifeline
from rpcjob_operator.localexec.podenv import (
    ContainerConfigError,
    Lookup,
    LookupAll,
    PodInfo,
    expand,
    resolve_env,
)

PYTHON_NAMES = frozenset({"python", "python3", f"python3.{sys.version_info.minor}"})


def mount_table(container: Mapping[str, Any], volume_dirs: Mapping[str, str]) -> dict[str, str]:
    """mountPath -> host directory for every volumeMount of the container."""
    table: dict[str, str] = {}
    for vm in container.get("volumeMounts") or []:
        vol = vm["name"]
        if vol not in volume_dirs:
            raise ContainerConfigError(
                f"container {container.get('name')!r}: volumeMount {vol!r} names no volume of "
                "the pod; add it to spec.volumes"
            )
        host = volume_dirs[vol]
        if vm.get("subPath"):
            host = os.path.join(host, vm["subPath"])
            os.makedirs(host, exist_ok=True)
        table[str(vm["mountPath"]).rstrip("/") or "/"] = host
    return table


def rewrite_paths(value: str, mounts: Mapping[str, str]) -> str:
    """Replace mount paths at path boundaries (``/a/b`` matches ``/a/b``, ``/a/b/c``,
    ``--x=/a/b``, ``/a/b:/c``; not ``/a/bc`` or ``/x/a/b``)."""
    for mount in sorted(mounts, key=len, reverse=True):
        pattern = r"(?<![\w./-])" + re.escape(mount) + r"(?=/|$|[^\w.-])"
        host = mounts[mount]
        value = re.sub(pattern, lambda _m, h=host: h, value)  # type: ignore[misc]
    return value


def _image_key(image: str) -> tuple[str, str]:
    name = image.split("@", 1)[0]
    if ":" in name.rsplit("/", 1)[-1]:
        name = name.rsplit(":", 1)[0]
    return name, name.rsplit("/", 1)[-1]


@dataclass
class ProcessSpec:
    argv: list[str]
    env: dict[str, str]
    cwd: str
    mounts: dict[str, str]


def base_environment(parent: Mapping[str, str] | None = None) -> dict[str, str]:
    parent = os.environ if parent is None else parent
    return {
        k: v
        for k, v in parent.items()
        if not k.startswith("KUBERNETES_") and not k.startswith("RPCJOB_")
    }


def process_spec(
    container: Mapping[str, Any],
    pod: PodInfo,
    volume_dirs: Mapping[str, str],
    *,
    pod_root: str,
    default_cwd: str | None = None,
    lookup: Lookup | None = None,
    lookup_all: LookupAll | None = None,
    image_entrypoints: Mapping[str, Sequence[str]] | None = None,
    image_workdirs: Mapping[str, str] | None = None,
    extra_env: Mapping[str, str] | None = None,
    parent_env: Mapping[str, str] | None = None,
    rewrite_mounts: bool = True,
) -> ProcessSpec:
    name, image = str(container.get("name", "")), str(container.get("image", ""))
    full, short = _image_key(image)
    own = resolve_env(container, pod, lookup, lookup_all)
    mounts = mount_table(container, volume_dirs)
    # Without rewriting (volumes really mounted at their paths) the table stays for the caller.
    rewrite = mounts if rewrite_mounts else {}
    own = {k: rewrite_paths(v, rewrite) for k, v in own.items()}
    command = [expand(str(c), own) for c in container.get("command") or []]
    args = [expand(str(a), own) for a in container.get("args") or []]
    if not command:
        entries = image_entrypoints or {}
        entry = entries.get(full) or entries.get(short)
        if entry is None:
            raise ContainerConfigError(
                f"container {name!r}: no command, and image {image!r} has no known entrypoint "
                "for local execution; set 'command' in the container spec or register the "
                f"image's entrypoint (image_entrypoints={{{short!r}: ['python3', '-m', '...']}})"
            )
        command = list(entry)
    argv = [rewrite_paths(a, rewrite) for a in command + args]
    if argv[0] in PYTHON_NAMES:
        argv[0] = sys.executable
    env = base_environment(parent_env)
    env.update(extra_env or {})
    env.update(own)
    env[ENV_LOCAL_POD_IP] = pod.pod_ip
    if rewrite_mounts:
        env[ENV_LOCAL_MOUNTS] = json.dumps(mounts, sort_keys=True)
    workdirs = image_workdirs or {}
    cwd = workdirs.get(full) or workdirs.get(short) or default_cwd or os.getcwd()
    if container.get("workingDir") and not rewrite_mounts:
        cwd = str(container["workingDir"])  # the caller enters it inside the mount namespace
    elif container.get("workingDir"):
        wd = rewrite_paths(str(container["workingDir"]), mounts)
        if not os.path.isdir(wd):
            wd = os.path.join(pod_root, wd.lstrip("/"))
            os.makedirs(wd, exist_ok=True)
        cwd = wd
    if os.sep not in argv[0] and shutil.which(argv[0], path=env.get("PATH")) is None:
        raise ContainerConfigError(
            f"container {name!r}: executable {argv[0]!r} not found on PATH; install it or use "
            "an absolute path in 'command'"
        )
    return ProcessSpec(argv=argv, env=env, cwd=cwd, mounts=mounts)


def exit_code(returncode: int) -> int:
    """Container-runtime convention: killed by signal N -> 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


class Proc(Protocol):
    """What a container's process is watched through: ``subprocess.Popen``, or a child of the
    fork server (``zygote_client.ForkedProcess``)."""

    @property
    def pid(self) -> int: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...


class Spawner(Protocol):
    """Starts a container's process another way than a cold exec (the fork server), or
    returns None: start it as usual."""

    def spawn(self, spec: ProcessSpec, log_fd: int) -> Proc | None: ...


class LocalContainer:
    """One process in its own process group (so that stop() reaches its children too)."""

    def __init__(
        self,
        name: str,
        spec: ProcessSpec,
        log_path: str | None = None,
        spawner: Spawner | None = None,
    ) -> None:
        self.name = name
        self.spec = spec
        self.log_path = log_path
        self.spawner = spawner
        self.proc: Proc | None = None
        self._log: IO[bytes] | None = None
        # A kubelet sends SIGTERM once: a second one can land while the process is already
        # exiting (Python restores the default handler at shutdown) and turn exit 0 into 143.
        self._terminated = False

    def start(self) -> None:
        self._terminated = False
        out: IO[bytes] | int = subprocess.DEVNULL
        if self.log_path:
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in _close_log
            out = self._log
        if self.spawner is not None and self._log is not None:
            forked = self.spawner.spawn(self.spec, self._log.fileno())
            if forked is not None:
                self.proc = forked
                return
        # Through the lifeline launcher: the process group dies with this process even when
        # it is SIGKILLed (the pid, env and exit code stay the command's own).
        argv, fds = lifeline.wrap(self.spec.argv)
        self.proc = subprocess.Popen(
            argv,
            env=self.spec.env,
            cwd=self.spec.cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            pass_fds=fds,
        )

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def poll(self) -> int | None:
        if self.proc is None:
            return None
        rc = self.proc.poll()
        if rc is None:
            return None
        self._close_log()
        return exit_code(rc)

    def _signal(self, sig: int) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def terminate(self) -> None:
        if not self._terminated:
            self._terminated = True
            self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def stop(self, grace: float) -> int | None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.terminate()
            try:
                self.proc.wait(timeout=max(0.0, grace))
            except subprocess.TimeoutExpired:
                self.kill()
                self.proc.wait()
        self._signal(signal.SIGKILL)  # stragglers of the process group
        return self.poll()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
