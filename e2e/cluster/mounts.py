"""A container's own mount namespace: its volumes bind-mounted at the pod spec's paths.

Each container incarnation starts as
``nsenter --net=<pod netns> unshare --mount --uts sh <pod dir>/start-<container>.sh ARGV``:
``unshare --mount`` makes a private mount namespace (propagation private, so nothing leaks to
the host), the script bind-mounts every volumeMount (``readOnly`` remounted read-only), binds
the pod's /etc/hosts (and /etc/resolv.conf when the kubelet has a cluster DNS), sets the
hostname to the pod name, enters workingDir and execs the container's command, so the process
keeps the pid (and process group) the kubelet started.

The host's root filesystem is shared (no image filesystems), so a mount target must exist on
it: missing directories (e.g. /var/run/secrets/kubernetes.io/serviceaccount) are created once
by ``HostMountpoints`` and removed again when the last kubelet on the host that uses them stops.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Next to the e2e cluster's slot locks (apiaddr.py); /tmp where /run/lock is missing.
REGISTRY = Path("/run/lock" if os.path.isdir("/run/lock") else "/tmp") / "rpcjob-mountpoints.json"


class MountPlanError(ValueError):
    """A volumeMount that cannot be mounted; the message names the field and the fix."""


@dataclass(frozen=True)
class Mount:
    source: str  # host path (volume directory, or a file/dir below it for subPath)
    target: str  # path inside the container
    read_only: bool = False


def plan_mounts(container: Mapping[str, Any], volume_dirs: Mapping[str, str]) -> list[Mount]:
    """The bind mounts of one container, parents before children (pure)."""
    out = []
    name = container.get("name")
    for vm in container.get("volumeMounts") or []:
        vol = vm.get("name")
        if vol not in volume_dirs:
            raise MountPlanError(
                f"container {name!r}: volumeMounts[].name {vol!r} names no volume of the pod; "
                "add it to spec.volumes"
            )
        target = os.path.normpath(str(vm.get("mountPath") or ""))
        if not target.startswith("/") or target == "/":
            raise MountPlanError(
                f"container {name!r}: volumeMounts[].mountPath {vm.get('mountPath')!r} must be "
                "an absolute path other than /"
            )
        source = volume_dirs[vol]
        sub = str(vm.get("subPath") or "")
        if sub:
            if sub.startswith("/") or ".." in sub.split("/"):
                raise MountPlanError(
                    f"container {name!r}: volumeMounts[].subPath {sub!r} must be a relative "
                    "path without '..'"
                )
            source = os.path.join(source, sub)
        out.append(Mount(source, target, bool(vm.get("readOnly"))))
    return sorted(out, key=lambda m: (m.target.count("/"), m.target))


def hosts_file(pod_ip: str, hostname: str, aliases: Sequence[Mapping[str, Any]] = ()) -> str:
    """/etc/hosts as the kubelet writes it for a pod."""
    lines = [
        "# Kubernetes-managed hosts file (rpcjob process kubelet).",
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        f"{pod_ip}\t{hostname}",
    ]
    for alias in aliases:
        lines.append(f"{alias['ip']}\t" + "\t".join(alias.get("hostnames") or []))
    return "\n".join(lines) + "\n"


def resolv_conf(
    spec: Mapping[str, Any], namespace: str, cluster_dns: str | None, domain: str
) -> str | None:
    """The pod's /etc/resolv.conf per dnsPolicy and dnsConfig, as the kubelet writes it with
    --cluster-dns/--cluster-domain; None: the host's own (policy Default, a hostNetwork pod
    under ClusterFirst, or no cluster DNS configured)."""
    policy = spec.get("dnsPolicy") or "ClusterFirst"
    cfg = spec.get("dnsConfig") or {}
    cluster = policy == "ClusterFirstWithHostNet" or (
        policy == "ClusterFirst" and not spec.get("hostNetwork")
    )
    if policy == "None":
        servers, search, options = [], [], []
    elif cluster and cluster_dns:
        servers = [cluster_dns]
        search = [f"{namespace}.svc.{domain}", f"svc.{domain}", domain]
        options = [{"name": "ndots", "value": "5"}]
    else:
        return None
    servers += cfg.get("nameservers") or []
    search += cfg.get("searches") or []
    options += cfg.get("options") or []
    lines = [f"search {' '.join(search)}"] if search else []
    lines += [f"nameserver {s}" for s in servers]
    opts = [o["name"] + (f":{o['value']}" if o.get("value") else "") for o in options]
    if opts:
        lines.append("options " + " ".join(opts))
    return "\n".join(lines) + "\n"


def start_script(
    mounts: Sequence[Mount],
    hosts: str | None,
    hostname: str | None,
    workdir: str | None,
    resolv: str | None = None,
) -> str:
    """The shell script run inside the new mount (and UTS) namespace before exec (pure)."""
    q = shlex.quote
    lines = ["set -e"]
    for m in mounts:
        # Nested targets land inside an earlier mount (a volume directory): create them there.
        kind = "-f" if os.path.isfile(m.source) else "-d"
        make = f"touch {q(m.target)}" if kind == "-f" else f"mkdir -p {q(m.target)}"
        lines.append(f"[ -e {q(m.target)} ] || {make}")
        lines.append(f"mount --bind {q(m.source)} {q(m.target)}")
        if m.read_only:
            lines.append(f"mount -o remount,bind,ro {q(m.target)}")
    if hosts:
        lines.append(f"mount --bind {q(hosts)} /etc/hosts")
    if resolv:
        lines.append(f"mount --bind {q(resolv)} /etc/resolv.conf")
    if hostname:
        lines.append(f"hostname {q(hostname[:63])}")
    if workdir:
        lines.append(f"mkdir -p {q(workdir)} && cd {q(workdir)}")
    lines.append('exec "$@"')
    return "\n".join(lines) + "\n"


def wrap_argv(netns_path: str | None, script: str, argv: Sequence[str]) -> list[str]:
    """argv that runs ``script`` then ``argv`` in the pod's netns and a new mount namespace.
    ``setpriv --pdeathsig KILL`` first: a container dies with the kubelet thread that started
    it, so a SIGKILLed kubelet (a killed test run) leaves no pod processes behind."""
    inner = ["unshare", "--mount", "--uts", "--propagation", "private", "sh", script, *argv]
    if netns_path is not None:  # hostNetwork pods keep the host's network
        inner = ["nsenter", f"--net={netns_path}", "--", *inner]
    return ["setpriv", "--pdeathsig", "KILL", "--", *inner]


class HostMountpoints:
    """Mount targets created on the host filesystem, shared by every kubelet on the host (other
    processes and clusters too), and removed, deepest first, when the last of them lets go.

    The owners live in a registry file under a lock, not in memory: removing a directory that
    is a mountpoint in another mount namespace detaches that mount there, so one cluster's
    stop must never remove a path another cluster's pods still have mounted."""

    def __init__(self, registry: Path = REGISTRY) -> None:
        self.registry = registry
        self.owner = f"{os.getpid()}-{id(self)}"
        self.mine: set[str] = set()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, list[str]]]:
        with open(self.registry.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                table: dict[str, list[str]] = json.loads(self.registry.read_text())
            except (FileNotFoundError, ValueError):
                table = {}
            yield table
            if not table:
                self.registry.unlink(missing_ok=True)
                return
            tmp = self.registry.with_suffix(".tmp")
            tmp.write_text(json.dumps(table, sort_keys=True))
            tmp.replace(self.registry)

    def ensure(self, target: str, is_file: bool) -> None:
        with self._locked() as table:
            parts = target.strip("/").split("/")
            for i in range(1, len(parts) + 1):
                path = "/" + "/".join(parts[:i])
                if path not in table:
                    if os.path.lexists(path):
                        continue  # the host's own
                    if i == len(parts) and is_file:
                        with open(path, "a"):
                            pass
                    else:
                        os.mkdir(path)
                    table[path] = []
                if self.owner not in table[path]:
                    table[path].append(self.owner)
                self.mine.add(path)

    def release_all(self) -> None:
        with self._locked() as table:
            for path in sorted(table, key=lambda p: p.count("/"), reverse=True):
                owners = [o for o in table[path] if o != self.owner and _alive(o)]
                if owners:
                    table[path] = owners
                    continue
                del table[path]
                with contextlib.suppress(OSError):
                    if os.path.isdir(path) and not os.path.islink(path):
                        os.rmdir(path)
                    else:
                        os.unlink(path)
        self.mine = set()


def _alive(owner: str) -> bool:
    """An owner whose process died (a killed test run) no longer holds its paths."""
    try:
        os.kill(int(owner.split("-", 1)[0]), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    return True
