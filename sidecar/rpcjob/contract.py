"""The contract between the operator, the sidecar, the worker and the local executor.

Every name that crosses a process or component boundary lives here: the API group, labels,
annotations, environment variables, socket paths and the etcd key layout. This module is
torch-free and dependency-free so that every component (and third parties starting a slot by
hand, see docs/contract.md) can import it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

# --- Kubernetes API ------------------------------------------------------------------------
GROUP = "rpcjob.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "RpcJob"
PLURAL = "rpcjobs"
SINGULAR = "rpcjob"
SHORT_NAME = "rpj"
CRD_NAME = f"{PLURAL}.{GROUP}"
FINALIZER = f"{GROUP}/etcd-cleanup"

# --- labels and annotations ----------------------------------------------------------------
LABEL_JOB_NAME = f"{GROUP}/job-name"
LABEL_JOB_UID = f"{GROUP}/job-uid"
LABEL_ROLE = f"{GROUP}/role"
LABEL_INDEX = f"{GROUP}/index"
LABEL_WORKER_NAME = f"{GROUP}/worker-name"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "rpcjob-operator"
# Set by the user (or an HPA-side controller) on a pod to pick it as a scale-down victim.
ANNOTATION_DELETE_FIRST = f"{GROUP}/delete-first"
# Which generation of the job spec rendered the pod.
ANNOTATION_SPEC_GENERATION = f"{GROUP}/spec-generation"
# Set by an admin on a deleted RpcJob whose etcd is gone for good: the operator's finalizer
# then leaves the job's etcd keys behind instead of retrying (docs/operator.md).
ANNOTATION_SKIP_ETCD_CLEANUP = f"{GROUP}/skip-etcd-cleanup"
# Node label override: how many GPUs rpcjob should use on this node (a count).
NODE_LABEL_GPUS_OVERRIDE = f"{GROUP}/gpus"

# --- ports ------------------------------------------------------------------------------------
SIDECAR_HTTP_PORT = 9464  # /healthz, /readyz, /metrics
OPERATOR_METRICS_PORT = 9465
OPERATOR_HEALTH_PORT = 8080

# --- container names, volumes, socket ----------------------------------------------------
WORKER_CONTAINER = "worker"
SIDECAR_CONTAINER = "rpcjob-sidecar"
SOCKET_VOLUME = "rpcjob-socket"
SOCKET_DIR = "/var/run/rpcjob"
SOCKET_FILE = "sidecar.sock"


def worker_container(names: Sequence[str | None]) -> int | None:
    """Which of a pod's containers (by name, in order) runs the worker: the one named
    WORKER_CONTAINER, else the only one; None when there are several and none has that name."""
    if WORKER_CONTAINER in names:
        return names.index(WORKER_CONTAINER)
    return 0 if len(names) == 1 else None


# --- environment ---------------------------------------------------------------------------
# Identity (both containers).
ENV_NAMESPACE = "RPCJOB_NAMESPACE"
ENV_JOB_NAME = "RPCJOB_JOB_NAME"
ENV_JOB_UID = "RPCJOB_JOB_UID"
ENV_ROLE = "RPCJOB_ROLE"
ENV_INDEX = "RPCJOB_INDEX"
ENV_WORKER_NAME = "RPCJOB_WORKER_NAME"
ENV_POD_NAME = "RPCJOB_POD_NAME"
ENV_POD_IP = "RPCJOB_POD_IP"
ENV_NODE_NAME = "RPCJOB_NODE_NAME"
# Where the worker finds its sidecar.
ENV_SOCKET = "RPCJOB_SOCKET"
ENV_SIDECAR_WAIT = "RPCJOB_SIDECAR_WAIT"  # seconds the worker waits for the socket to appear
# etcd connection (sidecar; the worker receives it from the sidecar).
ENV_ETCD_ENDPOINTS = "RPCJOB_ETCD_ENDPOINTS"  # comma-separated host:port
ENV_ETCD_CA = "RPCJOB_ETCD_CA"  # file paths
ENV_ETCD_CERT = "RPCJOB_ETCD_CERT"
ENV_ETCD_KEY = "RPCJOB_ETCD_KEY"
ENV_ETCD_USER = "RPCJOB_ETCD_USER"
ENV_ETCD_PASSWORD = "RPCJOB_ETCD_PASSWORD"  # never logged, never in a URL
# Job shape, so that device maps can be declared for every slot the job can ever have.
ENV_SLOTS = "RPCJOB_SLOTS"  # JSON: {"role": maxReplicas, ...}
ENV_GPUS = "RPCJOB_GPUS"  # the role's nvidia.com/gpu request (int), "" when none
# Every role's nvidia.com/gpu request per replica, JSON {"role": n, ...}: device maps are
# pre-declared to every slot, and a map may only target GPUs the slot's role requests.
ENV_ROLE_GPUS = "RPCJOB_ROLE_GPUS"
# RPC options.
ENV_RPC_TIMEOUT = "RPCJOB_RPC_TIMEOUT"  # seconds
ENV_RPC_THREADS = "RPCJOB_RPC_THREADS"
ENV_DEVICE_MAPS = "RPCJOB_DEVICE_MAPS"  # auto | off
# TensorPipe transports (spec.rpc.transport, docs/benchmarks.md#idle-workers): "tcp" = TCP
# only (libuv), no busy-polling reactor (TensorPipe's shm transport spins a core per idle
# worker and cannot connect two pods anyway); "shm" = TensorPipe's defaults (all of them).
ENV_RPC_TRANSPORT = "RPCJOB_RPC_TRANSPORT"
RPC_TRANSPORTS = ("tcp", "shm")
DEFAULT_RPC_TRANSPORT = "tcp"
# Sidecar tuning.
ENV_LEASE_TTL = "RPCJOB_LEASE_TTL"  # seconds, >= 10 in a cluster
ENV_RANK_SPACE = "RPCJOB_RANK_SPACE"  # ranks are allocated in [0, RANK_SPACE); torch: int16
ENV_HTTP_ADDR = "RPCJOB_HTTP_ADDR"  # host:port for /healthz /readyz /metrics
# Local mode / tests: node labels from a file (YAML/JSON map) or inline JSON instead of the API.
ENV_NODE_LABELS_FILE = "RPCJOB_NODE_LABELS_FILE"
ENV_NODE_LABELS = "RPCJOB_NODE_LABELS"
# Tests only: a hook that kills the process inside the membership critical section.
ENV_TEST_HOOK = "RPCJOB_TEST_HOOK"
# Sidecar: how long SIGTERM waits for the worker to drain and leave before revoking the lease.
ENV_DRAIN_GRACE = "RPCJOB_DRAIN_GRACE"  # seconds
# Local execution (process kubelet in e2e/, `rpcjob run`): processes cannot mount volumes, so
# the executor rewrites volume mount paths in env values, command, args and workingDir, and
# exports the mapping {mountPath: hostDir} as JSON in ENV_LOCAL_MOUNTS. Code that builds a path
# from a constant (e.g. SOCKET_DIR) instead of reading it from env resolves it with local_path().
# ENV_LOCAL_POD_IP is the pod's own loopback IP (127.0.0.N): bind there, not to 0.0.0.0.
ENV_LOCAL_MOUNTS = "RPCJOB_LOCAL_MOUNTS"
ENV_LOCAL_POD_IP = "RPCJOB_LOCAL_POD_IP"
# `rpcjob run` reads it (0/false/off: its fork server is off, as --no-fork-server; docs/local.md)
ENV_FORK_SERVER = "RPCJOB_FORK_SERVER"

# Operator configuration, set by the Helm chart (charts/rpcjob) on the operator container.
# The operator command line is kopf-run compatible: `rpcjob-operator --peering=NAME
# --priority=N --liveness=http://0.0.0.0:<OPERATOR_HEALTH_PORT><OPERATOR_LIVENESS_PATH>
# (--all-namespaces | --namespace=NS ...)`.
ENV_DEFAULT_ETCD_ENDPOINTS = "RPCJOB_DEFAULT_ETCD_ENDPOINTS"  # comma-separated; "" = none
# Secret names (in the job's own namespace) that job pods without spec.etcd mount: TLS (keys
# ETCD_TLS_*_KEY) and auth (keys ETCD_AUTH_*_KEY). "" = not used.
ENV_DEFAULT_ETCD_TLS_SECRET = "RPCJOB_DEFAULT_ETCD_TLS_SECRET"
ENV_DEFAULT_ETCD_AUTH_SECRET = "RPCJOB_DEFAULT_ETCD_AUTH_SECRET"
ENV_SIDECAR_IMAGE = "RPCJOB_SIDECAR_IMAGE"  # image of the injected sidecar
ENV_SIDECAR_IMAGE_PULL_POLICY = "RPCJOB_SIDECAR_IMAGE_PULL_POLICY"
# ServiceAccount set on job pods whose template names none (it may `get nodes`).
ENV_JOB_SERVICE_ACCOUNT = "RPCJOB_JOB_SERVICE_ACCOUNT"
ENV_OPERATOR_NAMESPACE = "RPCJOB_OPERATOR_NAMESPACE"  # the operator pod's namespace
OPERATOR_LIVENESS_PATH = "/healthz"
DEFAULT_PEERING_NAME = "rpcjob"
# Keys inside the etcd Secrets (the standard kubernetes.io/tls and basic-auth key names).
ETCD_TLS_CA_KEY = "ca.crt"
ETCD_TLS_CERT_KEY = "tls.crt"
ETCD_TLS_KEY_KEY = "tls.key"
ETCD_AUTH_USERNAME_KEY = "username"
ETCD_AUTH_PASSWORD_KEY = "password"

DEFAULT_LEASE_TTL = 10
DEFAULT_RANK_SPACE = 32768  # torch ranks are int16
DEFAULT_RPC_TIMEOUT = 60.0
DEFAULT_RPC_THREADS = 16
DEFAULT_DRAIN_GRACE = 25.0  # below Kubernetes' default terminationGracePeriodSeconds (30)

# --- naming ----------------------------------------------------------------------------------
ROLE_RE = re.compile(r"^[a-z][a-z0-9]*$")
# torch splits _ALL_WORKER_INFOS on '-' and ',': worker names use only [A-Za-z0-9_].
WORKER_NAME_RE = re.compile(r"^[A-Za-z0-9_]+$")
MAX_ROLE_LEN = 20


class InvalidName(ValueError):
    """A role, slot or worker name that torch or Kubernetes cannot carry."""


def validate_role(role: str) -> str:
    if not ROLE_RE.match(role) or len(role) > MAX_ROLE_LEN:
        raise InvalidName(
            f"role name {role!r} is invalid: use lowercase letters and digits, starting with a "
            f"letter, at most {MAX_ROLE_LEN} characters (pattern {ROLE_RE.pattern}); torch "
            "RPC worker names cannot contain '-' or ','"
        )
    return role


def validate_worker_name(name: str) -> str:
    if not WORKER_NAME_RE.match(name):
        raise InvalidName(
            f"worker name {name!r} is invalid: torch RPC splits worker lists on '-' and ',', "
            "so use only letters, digits and '_' (e.g. 'worker_3')"
        )
    return name


def worker_name(role: str, index: int) -> str:
    """RPC worker name of a slot: ``<role>_<index>``."""
    validate_role(role)
    if index < 0:
        raise InvalidName(f"slot index must be >= 0, got {index}")
    return f"{role}_{index}"


def parse_worker_name(name: str) -> tuple[str, int]:
    role, sep, idx = name.rpartition("_")
    if not sep or not idx.isdigit():
        raise InvalidName(f"worker name {name!r} is not of the form <role>_<index>")
    return validate_role(role), int(idx)


def role_of(name: str) -> str:
    """The role part of a worker name; "" for a name that is not ``<role>_<index>``."""
    try:
        return parse_worker_name(name)[0]
    except InvalidName:
        return ""


def pod_name(job: str, role: str, index: int) -> str:
    """Pod name of a slot: ``<job>-<role>-<index>``."""
    return f"{job}-{role}-{index}"


def local_path(path: str, environ: dict[str, str] | None = None) -> str:
    """Map a container path to the host path under a local executor (identity in a real pod).

    Uses the longest mount path of ENV_LOCAL_MOUNTS that is ``path`` or a parent of it.
    """
    import json
    import os

    raw = (os.environ if environ is None else environ).get(ENV_LOCAL_MOUNTS)
    if not raw:
        return path
    mounts: dict[str, str] = json.loads(raw)
    for mount in sorted(mounts, key=len, reverse=True):
        base = mount.rstrip("/")
        if path == base or path.startswith(base + "/"):
            return mounts[mount].rstrip("/") + path[len(base) :]
    return path


def socket_path(socket_dir: str = SOCKET_DIR) -> str:
    return f"{socket_dir.rstrip('/')}/{SOCKET_FILE}"


MAX_SOCKET_PATH = 100  # sockaddr_un holds 107 bytes on Linux (103 on macOS)


def socket_bind_path(path: str) -> str:
    """Where the sidecar really binds ``path``: itself when short enough, else a short path in
    /tmp named by the path's hash (the sidecar links ``path`` to it; the worker resolves the
    link). Local pods under a long temp dir would otherwise exceed the unix socket limit."""
    if len(path.encode()) <= MAX_SOCKET_PATH:
        return path
    import hashlib

    return f"/tmp/rpcjob-{hashlib.sha256(path.encode()).hexdigest()[:16]}.sock"


# --- etcd key layout -----------------------------------------------------------------------
class _Under:
    """A key (or key prefix) under a job's root, read as an attribute of :class:`JobKeys`."""

    def __init__(self, rel: str) -> None:
        self.rel = rel

    def __get__(self, keys: JobKeys, owner: type[JobKeys]) -> str:
        return keys.root + self.rel


@dataclass(frozen=True)
class JobKeys:
    """Every etcd key of one job lives under ``/rpcjob/<namespace>/<name>/<uid>/``.

    * ``store/``            torch's c10d store (EtcdStore prefix); torch writes its RPC keys
                            under ``store/rpc_prefix_0/`` (token, names/<rank>, addrs/<name>,
                            names/_ALL_WORKER_INFOS)
    * ``members/<worker>``  the live member record (JSON), bound to its sidecar's lease
    * ``ranks/<rank>``      rank allocation of one incarnation (JSON), bound to the lease
    * ``ranks-retired/<rank>`` an evicted rank and the revision it was evicted at; reusable only
                            when every live member joined after that revision
    * ``left/<worker>``     a graceful-leave marker written before the member record goes
    * ``election/cleanup``  the sidecar elected to clean torch's store after a crash
    """

    namespace: str
    name: str
    uid: str

    @property
    def root(self) -> str:
        return f"/rpcjob/{self.namespace}/{self.name}/{self.uid}/"

    store = _Under("store/")
    members = _Under("members/")
    ranks = _Under("ranks/")
    retired_ranks = _Under("ranks-retired/")
    left = _Under("left/")
    election = _Under("election/cleanup")
    # Crash eviction (sidecar): the elected cleaner publishes one request per dead torch
    # identity ``<worker>-<rank>``; every live incarnation acks under it (bound to its lease).
    evicts = _Under("evict/")
    evict_acks = _Under("evicted/")
    # Token values the cleaner took over from dead holders; their waiter keys get "Done".
    token_waiters = _Under("cleanup-waiters/")

    def member(self, worker: str) -> str:
        return self.members + worker

    def rank(self, rank: int) -> str:
        return f"{self.ranks}{rank}"

    def retired_rank(self, rank: int) -> str:
        return f"{self.retired_ranks}{rank}"

    def left_marker(self, worker: str) -> str:
        return self.left + worker

    def evict(self, worker: str, rank: int) -> str:
        return f"{self.evicts}{worker}-{rank}"

    def evict_ack(self, worker: str, rank: int, acker_rank: int) -> str:
        return f"{self.evict_acks}{worker}-{rank}/{acker_rank}"


def local_control_prefix(name: str) -> str:
    """``rpcjob run``'s control keys in its embedded etcd: ``spec``, ``status``, ``scale/<role>``
    (written by ``rpcjob scale``, applied by the running job)."""
    return f"/rpcjob-local/{name}/"


def job_prefix(namespace: str, name: str) -> str:
    """All incarnations (uids) of a job: used to clean up after deletion."""
    return f"/rpcjob/{namespace}/{name}/"
