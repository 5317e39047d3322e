"""Checks of a role's pod template that the CRD schema cannot express (it checks the rest).

The template preserves unknown fields (it is a PodTemplateSpec), so the operator checks what
rpcjob relies on: a worker container with a command, no clash with the names rpcjob injects,
and one GPU count. Each error names the field and the fix.
"""

from __future__ import annotations

from typing import Any

from rpcjob import contract
from rpcjob_operator import names
from rpcjob_operator.errors import FieldError


def _gpu_quantity(container: dict[str, Any], path: str, errs: list[FieldError]) -> int | None:
    resources = container.get("resources") or {}
    found: dict[str, int] = {}
    for kind in ("limits", "requests"):
        raw = (resources.get(kind) or {}).get(names.GPU_RESOURCE)
        if raw is None:
            continue
        try:
            found[kind] = int(str(raw))
        except ValueError:
            errs.append(
                FieldError(
                    f"{path}.resources.{kind}[{names.GPU_RESOURCE}]",
                    f"must be a whole number of GPUs, got {raw!r}",
                )
            )
            return None
    if len(set(found.values())) > 1:
        errs.append(
            FieldError(
                f"{path}.resources",
                f"{names.GPU_RESOURCE} requests ({found['requests']}) and limits "
                f"({found['limits']}) differ; Kubernetes requires them equal: set only limits",
            )
        )
        return None
    return next(iter(found.values()), None)


def _find_worker(containers: list[Any], path: str, errs: list[FieldError]) -> int | None:
    idx = contract.worker_container(
        [c.get("name") if isinstance(c, dict) else None for c in containers]
    )
    if idx is not None:
        return idx
    errs.append(
        FieldError(
            f"{path}.containers",
            f"the template has {len(containers)} containers and none is named "
            f"{contract.WORKER_CONTAINER!r}: name the container that runs your RPC code "
            f"{contract.WORKER_CONTAINER!r}",
        )
    )
    return None


def _check_reserved(pod: dict[str, Any], path: str, errs: list[FieldError]) -> None:
    for kind in ("containers", "initContainers"):
        for i, c in enumerate(pod.get(kind) or []):
            if not isinstance(c, dict):
                continue
            cpath = f"{path}.{kind}[{i}]"
            if c.get("name") in names.RESERVED_CONTAINERS:
                errs.append(
                    FieldError(
                        f"{cpath}.name",
                        f"{c['name']!r} is the container rpcjob injects: rename yours",
                    )
                )
            for j, env in enumerate(c.get("env") or []):
                name = str((env or {}).get("name", ""))
                if name in names.RESERVED_ENV:
                    errs.append(
                        FieldError(
                            f"{cpath}.env[{j}].name",
                            f"{name!r} is set by rpcjob (see rpcjob.contract); use spec.rpc / "
                            "spec.etcd instead, or rename the variable",
                        )
                    )
            for j, mount in enumerate(c.get("volumeMounts") or []):
                mpath = str((mount or {}).get("mountPath", "")).rstrip("/")
                if mpath in names.RESERVED_MOUNT_PATHS:
                    errs.append(
                        FieldError(
                            f"{cpath}.volumeMounts[{j}].mountPath",
                            f"{mpath} is where rpcjob mounts its own volume: choose another path",
                        )
                    )
    for i, vol in enumerate(pod.get("volumes") or []):
        if isinstance(vol, dict) and vol.get("name") in names.RESERVED_VOLUMES:
            errs.append(
                FieldError(
                    f"{path}.volumes[{i}].name",
                    f"{vol['name']!r} is a volume rpcjob injects: rename yours",
                )
            )
    if pod.get("restartPolicy") not in (None, "Never"):
        errs.append(
            FieldError(
                f"{path}.restartPolicy",
                "rpcjob replaces pods itself (so it can record exit codes and count restarts): "
                "remove the pod's restartPolicy and set spec.roles.<role>.restartPolicy instead",
            )
        )


def check_template(
    template: dict[str, Any], gpus: int | None, path: str, errs: list[FieldError]
) -> tuple[str, int | None]:
    """Return (worker container name, its nvidia.com/gpu count); append problems to ``errs``.
    The CRD already holds ``template.spec.containers`` to a non-empty list of named objects."""
    pod = template["spec"]
    spath = f"{path}.spec"
    containers: list[Any] = pod["containers"]
    _check_reserved(pod, spath, errs)
    labels = (template.get("metadata") or {}).get("labels") or {}
    for key in labels:
        if str(key).startswith(names.RESERVED_LABEL_PREFIX):
            errs.append(
                FieldError(
                    f"{path}.metadata.labels[{key}]",
                    f"labels under {names.RESERVED_LABEL_PREFIX} are set by rpcjob: remove it",
                )
            )
    idx = _find_worker(containers, spath, errs)
    if idx is None or not isinstance(containers[idx], dict):
        return contract.WORKER_CONTAINER, None
    worker = containers[idx]
    wpath = f"{spath}.containers[{idx}]"
    command = worker.get("command")
    if not command or not isinstance(command, list) or not all(isinstance(a, str) for a in command):
        errs.append(
            FieldError(
                f"{wpath}.command",
                "Required value: the worker needs an explicit command, e.g. "
                '["python", "-m", "app"] (or ["rpcjob-worker", "--", "python", "-m", "app"]); '
                "`rpcjob run` starts exactly this command, so an image ENTRYPOINT is not enough",
            )
        )
    if not worker.get("image"):
        errs.append(FieldError(f"{wpath}.image", "Required value: the worker's container image"))
    tmpl_gpus = _gpu_quantity(worker, wpath, errs)
    if gpus is not None and tmpl_gpus is not None and gpus != tmpl_gpus:
        errs.append(
            FieldError(
                f"{wpath}.resources.limits[{names.GPU_RESOURCE}]",
                f"the template asks for {tmpl_gpus} GPUs but the role's gpus is {gpus}: "
                "set one of them (gpus is copied into the worker's limits)",
            )
        )
    return str(worker.get("name", contract.WORKER_CONTAINER)), tmpl_gpus
