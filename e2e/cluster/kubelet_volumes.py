"""Pod volumes of the process kubelet: what each volume's directory holds.

``volume_files`` is pure: given a volume of the pod spec and a ``Source`` (Secrets, ConfigMaps
and service-account tokens, fetched by the kubelet through the API server with the node's
credentials), it returns the files to write. Supported: emptyDir, hostPath, secret, configMap,
downwardAPI, and projected (serviceAccountToken, secret, configMap, downwardAPI), which is how
the ServiceAccount admission plugin adds ``kube-api-access-*`` (token, ca.crt, namespace).
A persistentVolumeClaim mounts its bound PV's hostPath/local path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from rpcjob_operator.localexec.podenv import PodInfo, field_ref, resource_field_ref


class VolumeNotReady(RuntimeError):
    """A referenced object is missing (yet): the kubelet retries, as a kubelet does."""


class Source(Protocol):
    def secret(self, name: str) -> Mapping[str, bytes] | None: ...

    def configmap(self, name: str) -> Mapping[str, bytes] | None: ...

    def token(self, audience: str | None, expiration: int) -> str: ...

    def claim_path(self, claim: str) -> str | None:
        """The host directory of a bound PersistentVolumeClaim's volume (hostPath or local
        PV), None while the claim is unbound."""
        ...


@dataclass(frozen=True)
class File:
    path: str  # relative to the volume directory
    data: bytes
    mode: int = 0o644


def _keyed(
    kind: str, src: Mapping[str, Any], data: Mapping[str, bytes] | None, mode: int
) -> list[File]:
    ref = src.get("secretName") or src.get("name")
    if data is None:
        if src.get("optional"):
            return []
        raise VolumeNotReady(f"{kind} {ref!r} not found")
    items = src.get("items") or [{"key": k, "path": k} for k in sorted(data)]
    out = []
    for item in items:
        if item["key"] not in data:
            if src.get("optional"):
                continue
            raise VolumeNotReady(f"{kind} {ref!r} has no key {item['key']!r}")
        out.append(File(item["path"], data[item["key"]], int(item.get("mode", mode))))
    return out


def _downward(
    items: list[Mapping[str, Any]], pod: PodInfo, spec: Mapping[str, Any], mode: int
) -> list[File]:
    out = []
    containers = {c["name"]: c for c in spec.get("containers") or []}
    for item in items:
        if "fieldRef" in item:
            value = field_ref(item["fieldRef"]["fieldPath"], pod)
        else:
            ref = item["resourceFieldRef"]
            value = resource_field_ref(ref, containers.get(ref.get("containerName", ""), {}))
        out.append(File(item["path"], value.encode(), int(item.get("mode", mode))))
    return out


def volume_files(
    vol: Mapping[str, Any], pod: PodInfo, spec: Mapping[str, Any], source: Source
) -> list[File]:
    """The files of one volume (empty for emptyDir and hostPath)."""
    if "secret" in vol:
        s = vol["secret"]
        return _keyed("secret", s, source.secret(s["secretName"]), s.get("defaultMode", 0o644))
    if "configMap" in vol:
        c = vol["configMap"]
        return _keyed("configmap", c, source.configmap(c["name"]), c.get("defaultMode", 0o644))
    if "downwardAPI" in vol:
        d = vol["downwardAPI"]
        return _downward(d.get("items") or [], pod, spec, d.get("defaultMode", 0o644))
    if "projected" in vol:
        p = vol["projected"]
        mode = int(p.get("defaultMode", 0o644))
        out: list[File] = []
        for src in p.get("sources") or []:
            if "serviceAccountToken" in src:
                t = src["serviceAccountToken"]
                token = source.token(t.get("audience"), int(t.get("expirationSeconds", 3600)))
                out.append(File(t["path"], token.encode(), mode))
            elif "secret" in src:
                out += _keyed("secret", src["secret"], source.secret(src["secret"]["name"]), mode)
            elif "configMap" in src:
                c = src["configMap"]
                out += _keyed("configmap", c, source.configmap(c["name"]), mode)
            elif "downwardAPI" in src:
                out += _downward(src["downwardAPI"].get("items") or [], pod, spec, mode)
        return out
    return []


def volume_dir(vol: Mapping[str, Any], volumes_root: str, source: Source) -> str:
    """The host directory behind a volume: hostPath's path (created if asked), a claim's
    persistent volume, else a directory of the pod's own."""
    if "persistentVolumeClaim" in vol:
        claim = str(vol["persistentVolumeClaim"]["claimName"])
        path = source.claim_path(claim)
        if path is None:
            raise VolumeNotReady(f"persistentVolumeClaim {claim!r} is not bound to a volume")
        os.makedirs(path, exist_ok=True)
        return path
    if "hostPath" in vol:
        hp = vol["hostPath"]
        if hp.get("type") == "DirectoryOrCreate":
            os.makedirs(hp["path"], exist_ok=True)
        return str(hp["path"])
    return os.path.join(volumes_root, str(vol["name"]))


def write_files(directory: str, files: list[File]) -> None:
    os.makedirs(directory, exist_ok=True)
    for f in files:
        target = os.path.join(directory, f.path)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        tmp = target + ".tmp"
        with open(tmp, "wb") as fh:
            fh.write(f.data)
        os.chmod(tmp, f.mode)
        os.replace(tmp, target)
