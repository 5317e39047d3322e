"""The sidecar's configuration, read from the environment (docs/contract.md lists every name).

``load_config(env)`` is pure: it validates everything up front and raises :class:`ConfigError`
naming the variable and the fix, so a misconfigured pod fails at start with one clear line
instead of half-joining a group.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from rpcjob import contract as c
from rpcjob import netaddr
from rpcjob.devices import DeviceMapError, RoleShape
from rpcjob.devices import parse_slots as parse_job_slots

N = TypeVar("N", int, float)


class ConfigError(ValueError):
    """A missing or invalid environment variable; the message names it and the fix."""


@dataclass(frozen=True)
class EtcdConfig:
    endpoints: tuple[str, ...]
    ca: str = ""
    cert: str = ""
    key: str = ""
    user: str = ""
    password: str = field(default="", repr=False)  # never printed


@dataclass(frozen=True)
class SidecarConfig:
    namespace: str
    job_name: str
    job_uid: str
    role: str
    index: int
    worker_name: str
    pod_name: str
    pod_ip: str
    node_name: str
    etcd: EtcdConfig
    slots: dict[str, RoleShape]
    gpus: int
    rpc_timeout: float
    rpc_threads: int
    device_maps: str
    lease_ttl: int
    rank_space: int
    http_host: str
    http_port: int
    socket: str
    drain_grace: float
    node_labels_file: str = ""
    node_labels_json: str = ""

    @property
    def keys(self) -> c.JobKeys:
        return c.JobKeys(self.namespace, self.job_name, self.job_uid)


def _req(env: Mapping[str, str], name: str, what: str) -> str:
    v = env.get(name, "").strip()
    if not v:
        raise ConfigError(f"{name} is not set: it must hold {what}")
    return v


def _parsed(
    env: Mapping[str, str], name: str, what: str, parse: Callable[[str], N], noun: str
) -> tuple[str, N] | None:
    """``name``'s value, stripped and parsed (None when unset or empty)."""
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        return raw, parse(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not {noun}: set it to {what}") from None


def _int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int, what: str) -> int:
    got = _parsed(env, name, what, int, "an integer")
    if got is not None and not lo <= got[1] <= hi:
        raise ConfigError(f"{name}={got[1]} is out of range: set it to {what} ({lo}..{hi})")
    return default if got is None else got[1]


def _float(env: Mapping[str, str], name: str, default: float, what: str) -> float:
    got = _parsed(env, name, what, float, "a number")
    if got is not None and not got[1] > 0:
        raise ConfigError(f"{name}={got[0]!r} must be > 0: set it to {what}")
    return default if got is None else got[1]


def parse_host_port(raw: str, name: str) -> tuple[str, int]:
    try:
        hp = netaddr.parse_host_port(raw, name, example="10.0.0.5:9464", port_zero=True)
    except netaddr.InvalidHostPort as e:
        raise ConfigError(str(e)) from None
    return hp.host, hp.port


def _etcd_config(env: Mapping[str, str]) -> EtcdConfig:
    endpoints = tuple(
        e.strip() for e in _req(env, c.ENV_ETCD_ENDPOINTS, "etcd host:port[,host:port]").split(",")
    )
    for ep in endpoints:
        parse_host_port(ep.removeprefix("http://").removeprefix("https://"), c.ENV_ETCD_ENDPOINTS)
    tls = {n: env.get(n, "").strip() for n in (c.ENV_ETCD_CA, c.ENV_ETCD_CERT, c.ENV_ETCD_KEY)}
    for name, path in tls.items():
        if path and not os.path.isfile(path):
            raise ConfigError(f"{name}={path!r}: no such file; mount the etcd TLS secret there")
    if bool(tls[c.ENV_ETCD_CERT]) != bool(tls[c.ENV_ETCD_KEY]):
        raise ConfigError(
            f"{c.ENV_ETCD_CERT} and {c.ENV_ETCD_KEY} go together: set both or neither"
        )
    user = env.get(c.ENV_ETCD_USER, "").strip()
    password = env.get(c.ENV_ETCD_PASSWORD, "")
    if bool(user) != bool(password):
        raise ConfigError(
            f"{c.ENV_ETCD_USER} and {c.ENV_ETCD_PASSWORD} go together: set both or neither"
        )
    ca, cert, key = tls.values()
    return EtcdConfig(endpoints, ca, cert, key, user, password)


def _slots(env: Mapping[str, str], role: str, index: int) -> dict[str, RoleShape]:
    slots_raw = env.get(c.ENV_SLOTS, "").strip() or json.dumps({role: index + 1})
    try:
        slots = parse_job_slots(slots_raw, env.get(c.ENV_ROLE_GPUS, "").strip())
    except (DeviceMapError, c.InvalidName) as e:
        raise ConfigError(f"{c.ENV_SLOTS}: {e}") from None
    if role not in slots:
        raise ConfigError(f"{c.ENV_SLOTS} does not list this pod's role {role!r}: add it")
    if index >= slots[role].max_replicas:
        raise ConfigError(
            f"{c.ENV_INDEX}={index} is outside {c.ENV_SLOTS}[{role!r}]="
            f"{slots[role].max_replicas}: raise maxReplicas"
        )
    return slots


def load_config(env: Mapping[str, str] | None = None) -> SidecarConfig:
    env = os.environ if env is None else env
    namespace = _req(env, c.ENV_NAMESPACE, "the job's namespace (downward API)")
    job_name = _req(env, c.ENV_JOB_NAME, "the RpcJob's name")
    job_uid = _req(env, c.ENV_JOB_UID, "the RpcJob's metadata.uid")
    role = _req(env, c.ENV_ROLE, "the slot's role, e.g. 'worker'")
    try:
        c.validate_role(role)
    except c.InvalidName as e:
        raise ConfigError(f"{c.ENV_ROLE}: {e}") from None
    index = _int(env, c.ENV_INDEX, -1, 0, 32767, "the slot index (an integer >= 0)")
    if index < 0:
        raise ConfigError(f"{c.ENV_INDEX} is not set: it must hold the slot index, e.g. 0")
    expected = c.worker_name(role, index)
    worker = env.get(c.ENV_WORKER_NAME, "").strip() or expected
    try:
        c.validate_worker_name(worker)
    except c.InvalidName as e:
        raise ConfigError(f"{c.ENV_WORKER_NAME}: {e}") from None
    if worker != expected:
        raise ConfigError(
            f"{c.ENV_WORKER_NAME}={worker!r} does not match role {role!r} and index {index}: "
            f"set it to {expected!r} or leave it unset"
        )
    pod_ip = _req(env, c.ENV_POD_IP, "the pod IP (downward API status.podIP)")
    pod_name = env.get(c.ENV_POD_NAME, "").strip() or c.pod_name(job_name, role, index)
    node_name = env.get(c.ENV_NODE_NAME, "").strip()

    etcd = _etcd_config(env)
    slots = _slots(env, role, index)
    gpus = _int(env, c.ENV_GPUS, 0, 0, 1024, "the role's nvidia.com/gpu request")
    device_maps = env.get(c.ENV_DEVICE_MAPS, "").strip() or "auto"
    if device_maps not in ("auto", "off"):
        raise ConfigError(f"{c.ENV_DEVICE_MAPS}={device_maps!r}: use 'auto' or 'off'")

    http_raw = env.get(c.ENV_HTTP_ADDR, "").strip() or f"{pod_ip}:{c.SIDECAR_HTTP_PORT}"
    http_host, http_port = parse_host_port(http_raw, c.ENV_HTTP_ADDR)
    # A path longer than a unix socket allows is fine: server.serve binds a short path and
    # links this one to it (contract.socket_bind_path); local pods live under long temp dirs.
    sock = env.get(c.ENV_SOCKET, "").strip() or c.socket_path()
    return SidecarConfig(
        namespace=namespace,
        job_name=job_name,
        job_uid=job_uid,
        role=role,
        index=index,
        worker_name=worker,
        pod_name=pod_name,
        pod_ip=pod_ip,
        node_name=node_name,
        etcd=etcd,
        slots=slots,
        gpus=gpus,
        rpc_timeout=_float(env, c.ENV_RPC_TIMEOUT, c.DEFAULT_RPC_TIMEOUT, "seconds, e.g. 60"),
        rpc_threads=_int(
            env, c.ENV_RPC_THREADS, c.DEFAULT_RPC_THREADS, 1, 4096, "worker threads, e.g. 16"
        ),
        device_maps=device_maps,
        lease_ttl=_int(
            env, c.ENV_LEASE_TTL, c.DEFAULT_LEASE_TTL, 1, 3600, "seconds (>= 10 in a cluster)"
        ),
        rank_space=_int(
            env,
            c.ENV_RANK_SPACE,
            c.DEFAULT_RANK_SPACE,
            1,
            c.DEFAULT_RANK_SPACE,
            "how many ranks to allocate from (torch ranks are int16)",
        ),
        http_host=http_host,
        http_port=http_port,
        socket=sock,
        drain_grace=_float(env, c.ENV_DRAIN_GRACE, c.DEFAULT_DRAIN_GRACE, "seconds, e.g. 30"),
        node_labels_file=env.get(c.ENV_NODE_LABELS_FILE, "").strip(),
        node_labels_json=env.get(c.ENV_NODE_LABELS, "").strip(),
    )
