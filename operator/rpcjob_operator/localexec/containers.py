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
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from rpcjob.contract import ENV_LOCAL_MOUNTS, ENV_LOCAL_POD_IP
from rpcjob_operator.localexec import lifeline

# (kind, name, key) -> value; kind is "secret" or "configmap"; None when missing.
Lookup = Callable[[str, str, str], str | None]
# (kind, name) -> all keys of that object (for envFrom); None when missing.
LookupAll = Callable[[str, str], Mapping[str, str] | None]

PYTHON_NAMES = frozenset({"python", "python3", f"python3.{sys.version_info.minor}"})
_VAR_RE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
_LABEL_RE = re.compile(r"^metadata\.(labels|annotations)\[['\"]?([^'\"\]]+)['\"]?\]$")


class ContainerConfigError(ValueError):
    """A container spec that cannot run locally; the message names the field and the fix."""


@dataclass(frozen=True)
class PodInfo:
    """What the downward API can expose about a pod."""

    name: str
    namespace: str
    uid: str
    node_name: str
    pod_ip: str
    host_ip: str = "127.0.0.1"
    service_account: str = "default"
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_pod(cls, pod: Mapping[str, Any], pod_ip: str, host_ip: str = "127.0.0.1") -> PodInfo:
        meta = pod.get("metadata") or {}
        spec = pod.get("spec") or {}
        return cls(
            name=str(meta.get("name", "")),
            namespace=str(meta.get("namespace", "default")),
            uid=str(meta.get("uid", "")),
            node_name=str(spec.get("nodeName", "")),
            pod_ip=pod_ip,
            host_ip=host_ip,
            service_account=str(spec.get("serviceAccountName") or "default"),
            labels=dict(meta.get("labels") or {}),
            annotations=dict(meta.get("annotations") or {}),
        )


def _format_map(m: Mapping[str, str]) -> str:
    # The downward API's format for labels/annotations volumes and env: key="value" lines.
    return "\n".join(f'{k}="{v}"' for k, v in sorted(m.items()))


def field_ref(path: str, pod: PodInfo, container: str = "") -> str:
    simple = {
        "metadata.name": pod.name,
        "metadata.namespace": pod.namespace,
        "metadata.uid": pod.uid,
        "spec.nodeName": pod.node_name,
        "spec.serviceAccountName": pod.service_account,
        "status.podIP": pod.pod_ip,
        "status.podIPs": pod.pod_ip,
        "status.hostIP": pod.host_ip,
        "status.hostIPs": pod.host_ip,
        "metadata.labels": _format_map(pod.labels),
        "metadata.annotations": _format_map(pod.annotations),
    }
    if path in simple:
        return simple[path]
    m = _LABEL_RE.match(path)
    if m:
        source = pod.labels if m.group(1) == "labels" else pod.annotations
        return source.get(m.group(2), "")
    raise ContainerConfigError(
        f"container {container!r}: env valueFrom.fieldRef.fieldPath {path!r} is not supported; "
        "use metadata.name, metadata.namespace, metadata.uid, metadata.labels['<key>'], "
        "metadata.annotations['<key>'], spec.nodeName, spec.serviceAccountName, status.podIP "
        "or status.hostIP"
    )


_QUANTITY_RE = re.compile(r"^([0-9.]+)([a-zA-Z]*)$")
_SUFFIX = {
    "": 1.0,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "Ki": 1024.0,
    "Mi": 1024.0**2,
    "Gi": 1024.0**3,
    "Ti": 1024.0**4,
}


def parse_quantity(q: str | int | float) -> float:
    m = _QUANTITY_RE.match(str(q).strip())
    if not m or m.group(2) not in _SUFFIX:
        raise ContainerConfigError(f"resource quantity {q!r} is not a Kubernetes quantity")
    return float(m.group(1)) * _SUFFIX[m.group(2)]


def resource_field_ref(ref: Mapping[str, Any], container: Mapping[str, Any]) -> str:
    """``limits.cpu`` etc., rounded up in units of ``divisor`` like the kubelet."""
    resource = str(ref.get("resource", ""))
    kind, _, name = resource.partition(".")
    resources = container.get("resources") or {}
    value = (resources.get(kind) or {}).get(name)
    if value is None and kind == "limits":
        value = (resources.get("requests") or {}).get(name)  # no limit: node allocatable
    if value is None:
        value = 0
    divisor = parse_quantity(ref.get("divisor", "1"))
    return str(math.ceil(parse_quantity(value) / divisor))


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: unknown references stay verbatim, ``$$`` escapes."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR_RE.sub(sub, value)


def resolve_env(
    container: Mapping[str, Any],
    pod: PodInfo,
    lookup: Lookup | None = None,
    lookup_all: LookupAll | None = None,
) -> dict[str, str]:
    """The container's own environment (envFrom, then env in order), as the kubelet builds it."""
    name = str(container.get("name", ""))
    env: dict[str, str] = {}
    for src in container.get("envFrom") or []:
        for kind, key in (("configmap", "configMapRef"), ("secret", "secretRef")):
            ref = src.get(key)
            if ref is None:
                continue
            values = lookup_all(kind, ref["name"]) if lookup_all else None
            if values is None and not ref.get("optional"):
                raise ContainerConfigError(
                    f"container {name!r}: envFrom {key} {ref['name']!r} not found"
                )
            for k, v in (values or {}).items():
                env[src.get("prefix", "") + k] = v
    for item in container.get("env") or []:
        var = item["name"]
        if "valueFrom" not in item:
            env[var] = expand(str(item.get("value", "")), env)
            continue
        vf = item["valueFrom"]
        if "fieldRef" in vf:
            env[var] = field_ref(vf["fieldRef"]["fieldPath"], pod, name)
        elif "resourceFieldRef" in vf:
            env[var] = resource_field_ref(vf["resourceFieldRef"], container)
        else:
            for kind, key in (("secret", "secretKeyRef"), ("configmap", "configMapKeyRef")):
                ref = vf.get(key)
                if ref is None:
                    continue
                got = lookup(kind, ref["name"], ref["key"]) if lookup else None
                if got is None:
                    if ref.get("optional"):
                        break
                    raise ContainerConfigError(
                        f"container {name!r}: env {var!r} refers to {kind} "
                        f"{ref['name']!r} key {ref['key']!r}, which does not exist"
                    )
                env[var] = got
                break
    return env


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
    name = str(container.get("name", ""))
    own = resolve_env(container, pod, lookup, lookup_all)
    mounts = mount_table(container, volume_dirs)
    # Without rewriting (volumes really mounted at their paths) the table stays for the caller.
    rewrite = mounts if rewrite_mounts else {}
    own = {k: rewrite_paths(v, rewrite) for k, v in own.items()}
    command = [expand(str(c), own) for c in container.get("command") or []]
    args = [expand(str(a), own) for a in container.get("args") or []]
    if not command:
        image = str(container.get("image", ""))
        full, short = _image_key(image)
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
    full, short = _image_key(str(container.get("image", "")))
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


class LocalContainer:
    """One process in its own process group (so that stop() reaches its children too)."""

    def __init__(self, name: str, spec: ProcessSpec, log_path: str | None = None) -> None:
        self.name = name
        self.spec = spec
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at: float | None = None
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
        self.started_at = time.time()

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
