"""The typed RpcJob: parsed from the custom resource dict, checked beyond the CRD schema.

``parse_job(obj)`` returns an :class:`RpcJob` or raises :class:`InvalidSpec` listing every
problem with its field path and the fix. The operator turns ``InvalidSpec`` into an ``Invalid``
condition + Warning event (never a crash loop); ``rpcjob run`` prints it and exits non-zero.
Plain data only (no Kubernetes client types), so the local executor shares it.
"""

from __future__ import annotations

import copy
import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any

from rpcjob import contract
from rpcjob_operator import spec_checks
from rpcjob_operator.errors import FieldError, InvalidSpec

__all__ = ["FieldError", "InvalidSpec", "RoleSpec", "RpcJob", "parse_job"]

DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
RESTART_POLICIES = ("OnFailure", "Never", "Always")
DEFAULT_BACKOFF_LIMIT = 6
SCALE_ROLE = "worker"  # the role the scale subresource points at


@dataclass(frozen=True)
class RoleSpec:
    name: str
    replicas: int
    min_replicas: int
    # Effective upper bound: the declared maxReplicas, or replicas for a fixed-size role.
    max_replicas: int
    scalable: bool  # maxReplicas was declared
    restart_policy: str  # OnFailure | Never | Always
    gpus: int | None  # the worker container's nvidia.com/gpu (from `gpus` or the template)
    template: dict[str, Any]  # PodTemplateSpec as written (deep copy)
    worker_container: str  # name of the container rpcjob treats as the worker


@dataclass(frozen=True)
class EtcdSpec:
    endpoints: tuple[str, ...] = ()  # empty: the operator's default
    tls_secret: str | None = None
    auth_secret: str | None = None


@dataclass(frozen=True)
class RpcSpec:
    timeout_seconds: float = contract.DEFAULT_RPC_TIMEOUT
    num_worker_threads: int = contract.DEFAULT_RPC_THREADS
    device_maps: str = "auto"  # auto | off
    transport: str = contract.DEFAULT_RPC_TRANSPORT  # tcp | shm


@dataclass(frozen=True)
class SuccessPolicy:
    """``role`` None: every pod of every role must exit 0. ``operator``: All | Any."""

    role: str | None = None
    operator: str = "All"


@dataclass(frozen=True)
class RunPolicy:
    backoff_limit: int = DEFAULT_BACKOFF_LIMIT
    active_deadline_seconds: int | None = None
    ttl_seconds_after_finished: int | None = None
    suspend: bool = False


@dataclass(frozen=True)
class JobMeta:
    name: str
    namespace: str
    uid: str
    generation: int = 1
    creation_timestamp: dt.datetime | None = None
    deletion_timestamp: dt.datetime | None = None
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RpcJob:
    meta: JobMeta
    roles: dict[str, RoleSpec]  # sorted by role name
    etcd: EtcdSpec
    rpc: RpcSpec
    success_policy: SuccessPolicy
    run_policy: RunPolicy

    def slots(self) -> dict[str, int]:
        """{role: maxReplicas}: every slot name the job can ever have (RPCJOB_SLOTS)."""
        return {r.name: r.max_replicas for r in self.roles.values()}


def parse_time(value: Any) -> dt.datetime | None:
    """An RFC 3339 timestamp (``...Z``) as an aware datetime; None stays None."""
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    parsed = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def parse_meta(obj: dict[str, Any]) -> JobMeta:
    md = obj.get("metadata") or {}
    return JobMeta(
        name=str(md.get("name", "")),
        namespace=str(md.get("namespace") or "default"),
        uid=str(md.get("uid", "")),
        generation=int(md.get("generation") or 1),
        creation_timestamp=parse_time(md.get("creationTimestamp")),
        deletion_timestamp=parse_time(md.get("deletionTimestamp")),
        labels=dict(md.get("labels") or {}),
    )


def _int(
    raw: dict[str, Any],
    key: str,
    path: str,
    errs: list[FieldError],
    *,
    lo: int = 0,
    default: int | None = None,
) -> int | None:
    value = raw.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        errs.append(FieldError(f"{path}.{key}", f"must be an integer, got {value!r}"))
        return default
    if value < lo:
        errs.append(FieldError(f"{path}.{key}", f"must be >= {lo}, got {value}"))
        return default
    return value


def _parse_role(job: str, name: str, raw: Any, errs: list[FieldError]) -> RoleSpec | None:
    path = f"spec.roles.{name}"
    try:
        contract.validate_role(name)
    except contract.InvalidName as e:
        errs.append(FieldError(path, str(e)))
        return None
    if not isinstance(raw, dict):
        errs.append(FieldError(path, "must be an object with replicas and template"))
        return None
    n_err = len(errs)
    replicas = _int(raw, "replicas", path, errs)
    if replicas is None:
        errs.append(FieldError(f"{path}.replicas", "Required value: how many pods of this role"))
        replicas = 0
    declared_max = _int(raw, "maxReplicas", path, errs, lo=1)
    max_replicas = declared_max if declared_max is not None else max(replicas, 1)
    min_replicas = _int(raw, "minReplicas", path, errs, default=min(1, replicas))
    assert min_replicas is not None
    if min_replicas > replicas:
        errs.append(
            FieldError(
                f"{path}.minReplicas",
                f"minReplicas ({min_replicas}) must be <= replicas ({replicas})",
            )
        )
    if replicas > max_replicas:
        errs.append(
            FieldError(
                f"{path}.replicas", f"replicas ({replicas}) must be <= maxReplicas ({max_replicas})"
            )
        )
    policy = raw.get("restartPolicy", "OnFailure")
    if policy not in RESTART_POLICIES:
        errs.append(
            FieldError(
                f"{path}.restartPolicy",
                f"unsupported value {policy!r}: use one of " + ", ".join(RESTART_POLICIES),
            )
        )
    gpus = _int(raw, "gpus", path, errs)
    # Pod names are also hostnames under the headless Service: one DNS label (63 chars).
    longest = contract.pod_name(job, name, max_replicas - 1)
    if len(longest) > 63:
        errs.append(
            FieldError(
                path,
                (
                    f"pod name {longest!r} would be {len(longest)} characters; a pod hostname "
                    f"is at most 63: shorten the job name ({len(job)} chars) or the role name "
                    f"({len(name)} chars)"
                ),
            )
        )
    template = raw.get("template")
    worker, tmpl_gpus = spec_checks.check_template(template, gpus, f"{path}.template", errs)
    if len(errs) > n_err:
        return None
    return RoleSpec(
        name=name,
        replicas=replicas,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        scalable=declared_max is not None,
        restart_policy=str(policy),
        gpus=gpus if gpus is not None else tmpl_gpus,
        template=copy.deepcopy(template) if isinstance(template, dict) else {},
        worker_container=worker,
    )


def _parse_etcd(raw: Any, errs: list[FieldError]) -> EtcdSpec:
    raw = raw or {}
    endpoints = raw.get("endpoints") or []
    if not isinstance(endpoints, list) or not all(isinstance(e, str) and e for e in endpoints):
        errs.append(FieldError("spec.etcd.endpoints", "must be a list of host:port strings"))
        endpoints = []

    def ref(key: str) -> str | None:
        val = raw.get(key)
        if val is None:
            return None
        if not isinstance(val, dict) or not val.get("name"):
            errs.append(FieldError(f"spec.etcd.{key}.name", "Required value: the Secret's name"))
            return None
        return str(val["name"])

    return EtcdSpec(tuple(endpoints), ref("tlsSecretRef"), ref("authSecretRef"))


def _parse_policies(
    spec: dict[str, Any], roles: dict[str, RoleSpec], errs: list[FieldError]
) -> tuple[RpcSpec, SuccessPolicy, RunPolicy]:
    rpc_raw = spec.get("rpc") or {}
    rpc = RpcSpec(
        timeout_seconds=float(rpc_raw.get("timeoutSeconds", contract.DEFAULT_RPC_TIMEOUT)),
        num_worker_threads=int(rpc_raw.get("numWorkerThreads", contract.DEFAULT_RPC_THREADS)),
        device_maps=str(rpc_raw.get("deviceMaps", "auto")),
        transport=str(rpc_raw.get("transport", contract.DEFAULT_RPC_TRANSPORT)),
    )
    if rpc.device_maps not in ("auto", "off"):
        errs.append(FieldError("spec.rpc.deviceMaps", f"use auto or off, got {rpc.device_maps!r}"))
    if rpc.transport not in contract.RPC_TRANSPORTS:
        errs.append(FieldError("spec.rpc.transport", f"use tcp or shm, got {rpc.transport!r}"))
    sp_raw = spec.get("successPolicy") or {}
    sp = SuccessPolicy(role=sp_raw.get("role"), operator=str(sp_raw.get("operator", "All")))
    if sp.operator not in ("All", "Any"):
        errs.append(
            FieldError("spec.successPolicy.operator", f"use All or Any, got {sp.operator!r}")
        )
    if sp.role is not None and sp.role not in roles:
        errs.append(
            FieldError(
                "spec.successPolicy.role",
                f"no role {sp.role!r} in spec.roles (roles: {', '.join(roles)})",
            )
        )
    elif sp.role is not None and roles[sp.role].restart_policy == "Always":
        errs.append(
            FieldError(
                "spec.successPolicy.role",
                (
                    f"role {sp.role!r} has restartPolicy Always, so its pods never finish: "
                    "pick a role with restartPolicy OnFailure or Never"
                ),
            )
        )
    if sp.role is None:
        for r in roles.values():
            if r.restart_policy == "Always":
                errs.append(
                    FieldError(
                        "spec.successPolicy.role",
                        (
                            f"role {r.name!r} has restartPolicy Always and never finishes, so the "
                            "default success policy (every pod exits 0) can never be met: set "
                            "spec.successPolicy.role to the role whose completion ends the job"
                        ),
                    )
                )
                break
    rp_raw = spec.get("runPolicy") or {}
    backoff = _int(rp_raw, "backoffLimit", "spec.runPolicy", errs, default=DEFAULT_BACKOFF_LIMIT)
    rp = RunPolicy(
        backoff_limit=backoff if backoff is not None else DEFAULT_BACKOFF_LIMIT,
        active_deadline_seconds=_int(rp_raw, "activeDeadlineSeconds", "spec.runPolicy", errs, lo=1),
        ttl_seconds_after_finished=_int(rp_raw, "ttlSecondsAfterFinished", "spec.runPolicy", errs),
        suspend=bool(rp_raw.get("suspend", False)),
    )
    return rpc, sp, rp


def parse_job(obj: dict[str, Any]) -> RpcJob:
    """Parse and check a RpcJob custom resource; raises :class:`InvalidSpec`."""
    errs: list[FieldError] = []
    meta = parse_meta(obj)
    if not meta.name:
        errs.append(FieldError("metadata.name", "Required value"))
    elif not DNS_LABEL.match(meta.name):
        errs.append(
            FieldError(
                "metadata.name",
                (
                    f"{meta.name!r} cannot name the job's headless Service (a DNS-1035 label): use "
                    "lowercase letters, digits and '-', starting with a letter"
                ),
            )
        )
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        raise InvalidSpec([FieldError("spec", "Required value: the job needs spec.roles")])
    raw_roles = spec.get("roles")
    if not isinstance(raw_roles, dict) or not raw_roles:
        raise InvalidSpec(
            [
                FieldError(
                    "spec.roles",
                    (
                        "Required value: a map of roles, e.g. "
                        "roles: {worker: {replicas: 2, template: ...}}"
                    ),
                )
            ]
        )
    roles: dict[str, RoleSpec] = {}
    for name in sorted(raw_roles):
        role = _parse_role(meta.name, name, raw_roles[name], errs)
        if role is not None:
            roles[name] = role
    if SCALE_ROLE not in raw_roles:
        errs.append(
            FieldError(
                "spec.roles",
                (
                    f"a role named {SCALE_ROLE!r} is required: kubectl scale and an HPA resize "
                    f"spec.roles.{SCALE_ROLE}.replicas (rename your elastic role to {SCALE_ROLE!r})"
                ),
            )
        )
    total = sum(r.max_replicas for r in roles.values())
    if total > contract.DEFAULT_RANK_SPACE:
        errs.append(
            FieldError(
                "spec.roles",
                (
                    f"the roles' maxReplicas add up to {total}, more than torch's int16 rank space "
                    f"({contract.DEFAULT_RANK_SPACE}): lower maxReplicas"
                ),
            )
        )
    etcd = _parse_etcd(spec.get("etcd"), errs)
    rpc, sp, rp = _parse_policies(spec, roles, errs)
    if errs:
        raise InvalidSpec(errs)
    return RpcJob(meta=meta, roles=roles, etcd=etcd, rpc=rpc, success_policy=sp, run_policy=rp)
