"""render_pod: the user's pod template + rpcjob's native sidecar, env contract and hardening."""

from __future__ import annotations

import copy
from typing import Any

from rpcjob import contract
from rpcjob_operator import names
from rpcjob_operator.model import Slot
from rpcjob_operator.render.common import job_labels, owner_reference, service_name
from rpcjob_operator.render.defaults import OperatorDefaults
from rpcjob_operator.render.env import etcd_settings, sidecar_only_env, slot_env
from rpcjob_operator.spec import RpcJob

SIDECAR_COMMAND = ["rpcjob-sidecar"]


# Restricted Pod Security by default, field by field: whatever the template's securityContext
# (pod or container level) sets wins, and a default that would contradict it is left out.
def _harden_container(c: dict[str, Any]) -> None:
    sc = c.setdefault("securityContext", {})
    caps = sc.setdefault("capabilities", {})
    caps.setdefault("drop", ["ALL"])
    # The API server refuses allowPrivilegeEscalation: false next to either of these.
    if not sc.get("privileged") and "SYS_ADMIN" not in _added_caps(caps):
        sc.setdefault("allowPrivilegeEscalation", False)


def _added_caps(caps: dict[str, Any]) -> set[str]:
    return {str(x).upper().removeprefix("CAP_") for x in caps.get("add") or []}


def _names_its_user(spec: dict[str, Any]) -> bool:
    """The template says who runs it (runAsUser or runAsNonRoot, pod or container level)."""
    contexts = [spec.get("securityContext") or {}] + [
        c.get("securityContext") or {}
        for c in [*spec.get("containers", []), *(spec.get("initContainers") or [])]
    ]
    return any("runAsUser" in sc or "runAsNonRoot" in sc for sc in contexts)


def _harden_pod(spec: dict[str, Any], names_user: bool) -> None:
    sc = spec.setdefault("securityContext", {})
    if not names_user:  # e.g. runAsUser: 0 for a root image (docs/operator.md, Pod security)
        sc["runAsNonRoot"] = True
    sc.setdefault("seccompProfile", {"type": "RuntimeDefault"})


def _mounts(tls: bool) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"name": contract.SOCKET_VOLUME, "mountPath": contract.SOCKET_DIR}]
    if tls:
        out.append(
            {"name": names.ETCD_TLS_VOLUME, "mountPath": names.ETCD_TLS_DIR, "readOnly": True}
        )
    return out


def _sidecar(env: list[dict[str, Any]], tls: bool, defaults: OperatorDefaults) -> dict[str, Any]:
    port = contract.SIDECAR_HTTP_PORT
    return {
        "name": contract.SIDECAR_CONTAINER,
        "image": defaults.sidecar_image,
        "imagePullPolicy": defaults.image_pull_policy,
        "command": list(SIDECAR_COMMAND),
        # A native sidecar: starts before the worker, lives as long as the pod's containers.
        "restartPolicy": "Always",
        "env": env,
        "ports": [{"name": "metrics", "containerPort": port, "protocol": "TCP"}],
        "volumeMounts": _mounts(tls),
        # Ready = the worker joined the RPC group (so `kubectl get pods` shows membership).
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": port},
            "periodSeconds": 2,
            "failureThreshold": 1,
        },
        # Restarting the sidecar ends the member, so only a sidecar hung for a minute is
        # restarted: /healthz answers without etcd, but on a busy node an answer can take
        # seconds, and kubelet's 1 s default timeout turned a slow machine into restarts
        # (docs/contract.md, "HTTP").
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": port},
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 6,
        },
        "resources": copy.deepcopy(defaults.sidecar_resources),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": defaults.sidecar_user,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
    }


def render_pod(job: RpcJob, slot: Slot, *, defaults: OperatorDefaults) -> dict[str, Any]:
    """The Pod for ``slot`` (a plain dict, API JSON). Pure: no API access."""
    role = job.roles[slot.role]
    template = copy.deepcopy(role.template)
    tmeta = template.get("metadata") or {}
    spec: dict[str, Any] = template["spec"]
    name = slot.pod_name(job.meta.name)
    _, tls, _ = etcd_settings(job, defaults)
    env = slot_env(job, slot, defaults)

    labels = {
        **(tmeta.get("labels") or {}),
        **job_labels(job),
        contract.LABEL_ROLE: slot.role,
        contract.LABEL_INDEX: str(slot.index),
        contract.LABEL_WORKER_NAME: slot.worker_name,
    }
    annotations = {
        **(tmeta.get("annotations") or {}),
        contract.ANNOTATION_SPEC_GENERATION: str(job.meta.generation),
    }

    names_user = _names_its_user(spec)  # before the sidecar (which names its own) is added
    for c in spec["containers"]:
        _harden_container(c)
        if c.get("name") != role.worker_container:
            continue
        # Ours first, so the user's env may reference $(RPCJOB_...) values.
        c["env"] = [*copy.deepcopy(env), *(c.get("env") or [])]
        c["volumeMounts"] = [*(c.get("volumeMounts") or []), *_mounts(bool(tls))]
        if role.gpus is not None:
            limits = c.setdefault("resources", {}).setdefault("limits", {})
            limits.setdefault(names.GPU_RESOURCE, str(role.gpus))
    for c in spec.get("initContainers") or []:
        _harden_container(c)
    # The sidecar goes last: the user's init containers (downloads, ...) finish before this
    # slot registers as a member.
    sidecar = _sidecar([*copy.deepcopy(env), *sidecar_only_env(defaults)], bool(tls), defaults)
    spec["initContainers"] = [*(spec.get("initContainers") or []), sidecar]

    volumes = [*(spec.get("volumes") or []), {"name": contract.SOCKET_VOLUME, "emptyDir": {}}]
    if tls:
        volumes.append(
            {"name": names.ETCD_TLS_VOLUME, "secret": {"secretName": tls, "defaultMode": 0o440}}
        )
    spec["volumes"] = volumes
    # rpcjob replaces pods itself: exit codes are recorded and restarts counted per slot.
    spec["restartPolicy"] = "Never"
    spec["hostname"] = name
    spec["subdomain"] = service_name(job)
    if defaults.job_service_account and not spec.get("serviceAccountName"):
        spec["serviceAccountName"] = defaults.job_service_account
    _harden_pod(spec, names_user)

    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": job.meta.namespace,
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [owner_reference(job)],
        },
        "spec": spec,
    }
