"""The typed RpcJob: checked with its own CRD, then parsed from the custom resource dict.

``parse_job(obj)`` returns an :class:`RpcJob` or raises :class:`InvalidSpec` listing every
problem with its field path and the fix: the CRD's schema and CEL rules first (spec_schema.py:
each rule is written once, in crds/rpcjob.dev_rpcjobs.yaml), then the few checks the CRD cannot
express (here and in spec_checks.py). The operator turns ``InvalidSpec`` into an ``Invalid``
condition + Warning event (never a crash loop); ``rpcjob run`` prints it and exits non-zero.
Plain data only (no Kubernetes client types), so the local executor shares it.
"""

from __future__ import annotations

import copy
import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from rpcjob import contract
from rpcjob_operator import spec_checks, spec_schema
from rpcjob_operator.errors import FieldError, InvalidSpec

__all__ = ["FieldError", "InvalidSpec", "RoleSpec", "RpcJob", "parse_job"]

DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DEFAULT_BACKOFF_LIMIT = 6
SCALE_ROLE = "worker"  # the role the scale subresource points at


@dataclass(frozen=True)
class RoleSpec:
    name: str
    replicas: int
    min_replicas: int
    # Effective upper bound: the declared maxReplicas, or replicas for a fixed-size role.
    max_replicas: int
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
    deletion_timestamp: dt.datetime | None = None


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
        deletion_timestamp=parse_time(md.get("deletionTimestamp")),
    )


def _parse_role(job: str, name: str, raw: dict[str, Any], errs: list[FieldError]) -> RoleSpec:
    """A role the CRD admitted; only what it cannot express is checked here."""
    path = f"spec.roles.{name}"
    replicas = int(raw["replicas"])
    declared_max = raw.get("maxReplicas")
    max_replicas = int(declared_max) if declared_max is not None else max(replicas, 1)
    # Pod names are also hostnames under the headless Service: one DNS label (63 chars).
    longest = contract.pod_name(job, name, max_replicas - 1)
    if len(longest) > 63:
        errs.append(
            FieldError(
                path,
                f"pod name {longest!r} would be {len(longest)} characters; a pod hostname "
                f"is at most 63: shorten the job name ({len(job)} chars) or the role name "
                f"({len(name)} chars)",
            )
        )
    gpus = raw.get("gpus")
    template = raw["template"]
    worker, tmpl_gpus = spec_checks.check_template(template, gpus, f"{path}.template", errs)
    return RoleSpec(
        name=name,
        replicas=replicas,
        min_replicas=int(raw.get("minReplicas", min(1, replicas))),
        max_replicas=max_replicas,
        restart_policy=str(raw.get("restartPolicy", "OnFailure")),
        gpus=gpus if gpus is not None else tmpl_gpus,
        template=copy.deepcopy(template),
        worker_container=worker,
    )


def _parse_etcd(raw: dict[str, Any]) -> EtcdSpec:
    def ref(key: str) -> str | None:
        val = raw.get(key)
        return None if val is None else str(val["name"])

    return EtcdSpec(tuple(raw.get("endpoints") or ()), ref("tlsSecretRef"), ref("authSecretRef"))


def _parse_rpc(raw: dict[str, Any]) -> RpcSpec:
    return RpcSpec(
        timeout_seconds=float(raw.get("timeoutSeconds", contract.DEFAULT_RPC_TIMEOUT)),
        num_worker_threads=int(raw.get("numWorkerThreads", contract.DEFAULT_RPC_THREADS)),
        device_maps=str(raw.get("deviceMaps", "auto")),
        transport=str(raw.get("transport", contract.DEFAULT_RPC_TRANSPORT)),
    )


def _success_policy(
    raw: dict[str, Any], roles: dict[str, RoleSpec], errs: list[FieldError]
) -> SuccessPolicy:
    """The policy, and the one rule about it the CRD cannot see: it must be reachable."""
    sp = SuccessPolicy(role=raw.get("role"), operator=str(raw.get("operator", "All")))
    if sp.role is not None and sp.role in roles and roles[sp.role].restart_policy == "Always":
        errs.append(
            FieldError(
                "spec.successPolicy.role",
                f"role {sp.role!r} has restartPolicy Always, so its pods never finish: "
                "pick a role with restartPolicy OnFailure or Never",
            )
        )
    always = [r.name for r in roles.values() if r.restart_policy == "Always"]
    if sp.role is None and always:
        errs.append(
            FieldError(
                "spec.successPolicy.role",
                f"role {always[0]!r} has restartPolicy Always and never finishes, so the "
                "default success policy (every pod exits 0) can never be met: set "
                "spec.successPolicy.role to the role whose completion ends the job",
            )
        )
    return sp


def _run_policy(raw: dict[str, Any]) -> RunPolicy:
    return RunPolicy(
        backoff_limit=int(raw.get("backoffLimit", DEFAULT_BACKOFF_LIMIT)),
        active_deadline_seconds=raw.get("activeDeadlineSeconds"),
        ttl_seconds_after_finished=raw.get("ttlSecondsAfterFinished"),
        suspend=bool(raw.get("suspend", False)),
    )


def _check_name(meta: JobMeta, errs: list[FieldError]) -> None:
    # The API server accepts any DNS subdomain; the headless Service needs a DNS-1035 label.
    if not meta.name:
        errs.append(FieldError("metadata.name", "Required value"))
    elif not DNS_LABEL.match(meta.name):
        errs.append(
            FieldError(
                "metadata.name",
                f"{meta.name!r} cannot name the job's headless Service (a DNS-1035 label): use "
                "lowercase letters, digits and '-', starting with a letter",
            )
        )


def parse_job(obj: dict[str, Any]) -> RpcJob:
    """Check a RpcJob with its CRD (spec_schema), then with what the CRD cannot express, and
    parse it; raises :class:`InvalidSpec` listing every problem with its field and fix."""
    meta = parse_meta(obj)
    errs: list[FieldError] = []
    _check_name(meta, errs)
    checked = spec_schema.check_spec(obj.get("spec"))
    errs += checked.errors
    if not checked.sound:
        raise InvalidSpec(errs)  # types or required fields are wrong: nothing more to parse
    spec = checked.spec
    roles = {
        name: _parse_role(meta.name, name, spec["roles"][name], errs)
        for name in sorted(spec["roles"])
    }
    total = sum(r.max_replicas for r in roles.values())
    if total > contract.DEFAULT_RANK_SPACE:
        errs.append(
            FieldError(
                "spec.roles",
                f"the roles' maxReplicas add up to {total}, more than torch's int16 rank space "
                f"({contract.DEFAULT_RANK_SPACE}): lower maxReplicas",
            )
        )
    sp = _success_policy(spec.get("successPolicy") or {}, roles, errs)
    if errs:
        raise InvalidSpec(errs)
    return RpcJob(
        meta=meta,
        roles=roles,
        etcd=_parse_etcd(spec.get("etcd") or {}),
        rpc=_parse_rpc(spec.get("rpc") or {}),
        success_policy=sp,
        run_policy=_run_policy(spec.get("runPolicy") or {}),
    )
