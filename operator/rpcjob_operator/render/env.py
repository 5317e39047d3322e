"""The env contract of a slot.

``slot_env`` is what both the worker and the sidecar container get. Resolving it outside
Kubernetes (downward API, Secret keys, ``$(VAR)``) is ``localexec.podenv.resolve_env``.
"""

from __future__ import annotations

import json
from typing import Any

from rpcjob import contract
from rpcjob_operator import names
from rpcjob_operator.model import Slot
from rpcjob_operator.render.defaults import OperatorDefaults
from rpcjob_operator.spec import RpcJob


def _field(path: str) -> dict[str, Any]:
    return {"valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}}


def _compact(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def etcd_settings(
    job: RpcJob, defaults: OperatorDefaults
) -> tuple[tuple[str, ...], str | None, str | None]:
    """(endpoints, tls secret, auth secret): the job's spec.etcd, else the operator's."""
    if job.etcd.endpoints:
        return job.etcd.endpoints, job.etcd.tls_secret, job.etcd.auth_secret
    return defaults.etcd_endpoints, defaults.etcd_tls_secret, defaults.etcd_auth_secret


def slot_env(job: RpcJob, slot: Slot, defaults: OperatorDefaults) -> list[dict[str, Any]]:
    """The contract env of one slot (identity, etcd, job shape, rpc options, socket)."""
    role = job.roles[slot.role]
    endpoints, tls, auth = etcd_settings(job, defaults)
    env: list[dict[str, Any]] = [
        {"name": contract.ENV_NAMESPACE, **_field("metadata.namespace")},
        {"name": contract.ENV_POD_NAME, **_field("metadata.name")},
        {"name": contract.ENV_POD_IP, **_field("status.podIP")},
        {"name": contract.ENV_NODE_NAME, **_field("spec.nodeName")},
        {"name": contract.ENV_JOB_NAME, "value": job.meta.name},
        {"name": contract.ENV_JOB_UID, "value": job.meta.uid},
        {"name": contract.ENV_ROLE, "value": slot.role},
        {"name": contract.ENV_INDEX, "value": str(slot.index)},
        {"name": contract.ENV_WORKER_NAME, "value": slot.worker_name},
        {"name": contract.ENV_SOCKET, "value": contract.socket_path()},
        {"name": contract.ENV_ETCD_ENDPOINTS, "value": ",".join(endpoints)},
        {"name": contract.ENV_SLOTS, "value": _compact(job.slots())},
        {"name": contract.ENV_GPUS, "value": "" if role.gpus is None else str(role.gpus)},
        {
            "name": contract.ENV_ROLE_GPUS,
            "value": _compact({n: r.gpus or 0 for n, r in job.roles.items()}),
        },
        {"name": contract.ENV_RPC_TIMEOUT, "value": f"{job.rpc.timeout_seconds:g}"},
        {"name": contract.ENV_RPC_THREADS, "value": str(job.rpc.num_worker_threads)},
        {"name": contract.ENV_DEVICE_MAPS, "value": job.rpc.device_maps},
        {"name": contract.ENV_RPC_TRANSPORT, "value": job.rpc.transport},
    ]
    if tls:
        d = names.ETCD_TLS_DIR
        env += [
            {"name": contract.ENV_ETCD_CA, "value": f"{d}/{contract.ETCD_TLS_CA_KEY}"},
            {"name": contract.ENV_ETCD_CERT, "value": f"{d}/{contract.ETCD_TLS_CERT_KEY}"},
            {"name": contract.ENV_ETCD_KEY, "value": f"{d}/{contract.ETCD_TLS_KEY_KEY}"},
        ]
    if auth:
        # The password only ever travels as a secretKeyRef: never a literal in the pod spec.
        env += [
            {
                "name": contract.ENV_ETCD_USER,
                "valueFrom": {
                    "secretKeyRef": {"name": auth, "key": contract.ETCD_AUTH_USERNAME_KEY}
                },
            },
            {
                "name": contract.ENV_ETCD_PASSWORD,
                "valueFrom": {
                    "secretKeyRef": {"name": auth, "key": contract.ETCD_AUTH_PASSWORD_KEY}
                },
            },
        ]
    return env


def sidecar_only_env(defaults: OperatorDefaults) -> list[dict[str, Any]]:
    return [
        {"name": contract.ENV_LEASE_TTL, "value": str(defaults.lease_ttl)},
        {"name": contract.ENV_RANK_SPACE, "value": str(defaults.rank_space)},
        # The pod IP, not 0.0.0.0: in local mode every slot shares one host, each on its IP.
        {
            "name": contract.ENV_HTTP_ADDR,
            "value": f"$({contract.ENV_POD_IP}):{contract.SIDECAR_HTTP_PORT}",
        },
    ]
