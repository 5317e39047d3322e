"""The environment of a local container: ``env``/``envFrom`` with the downward API
(``fieldRef``, ``resourceFieldRef``), Secret/ConfigMap keys through a lookup, and ``$(VAR)``
expansion, as the kubelet resolves them (``containers.py`` says how a container maps to a
process)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

# (kind, name, key) -> value; kind is "secret" or "configmap"; None when missing.
Lookup = Callable[[str, str, str], str | None]
# (kind, name) -> all keys of that object (for envFrom); None when missing.
LookupAll = Callable[[str, str], Mapping[str, str] | None]

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
_SUFFIX = {"": 1.0, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
_SUFFIX |= {f"{p}i": 1024.0**i for i, p in enumerate("KMGT", start=1)}


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
