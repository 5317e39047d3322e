"""``--help`` and ``--version`` of the console scripts: what each does and the environment it
reads. The variable names come from :mod:`rpcjob.contract` (one place for every name); only
their one-line descriptions live here. Answering either flag needs no environment at all."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from importlib import metadata

from rpcjob import contract as c

EnvHelp = Sequence[tuple[str, str]]
# Kubernetes' own in-cluster variables (not ours, so not in the contract).
K8S_IN_CLUSTER = ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT")


def version_line(prog: str) -> str:
    try:
        version = metadata.version("rpcjob")
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        version = "0+unknown"
    return f"{prog} {version}"


def env_help(entries: EnvHelp) -> str:
    """An "Environment:" block for a help text, one variable a line."""
    width = max(len(name) for name, _ in entries)
    lines = [f"  {name.ljust(width)}  {what}" for name, what in entries]
    return "Environment:\n" + "\n".join(lines)


SIDECAR_ENV: EnvHelp = (
    (c.ENV_NAMESPACE, "the job's namespace (required)"),
    (c.ENV_JOB_NAME, "the RpcJob's name (required)"),
    (c.ENV_JOB_UID, "the RpcJob's metadata.uid (required)"),
    (c.ENV_ROLE, "the slot's role, e.g. worker (required)"),
    (c.ENV_INDEX, "the slot index, e.g. 0 (required)"),
    (c.ENV_POD_IP, "the pod IP, downward API status.podIP (required)"),
    (c.ENV_ETCD_ENDPOINTS, "etcd host:port[,host:port] (required)"),
    (c.ENV_WORKER_NAME, "the RPC name; default <role>_<index>"),
    (c.ENV_POD_NAME, "the pod's name; default <job>-<role>-<index>"),
    (c.ENV_NODE_NAME, "the node, whose GPU labels are read from the API"),
    (c.ENV_ETCD_CA, "etcd TLS: CA file"),
    (c.ENV_ETCD_CERT, "etcd TLS: client certificate file (with the key)"),
    (c.ENV_ETCD_KEY, "etcd TLS: client key file"),
    (c.ENV_ETCD_USER, "etcd auth: user (with the password)"),
    (c.ENV_ETCD_PASSWORD, "etcd auth: password (never logged)"),
    (c.ENV_SLOTS, 'JSON {"role": maxReplicas} of every role'),
    (c.ENV_GPUS, "the role's nvidia.com/gpu request"),
    (c.ENV_ROLE_GPUS, 'JSON {"role": gpus} of every role'),
    (c.ENV_DEVICE_MAPS, "auto (default) or off"),
    (c.ENV_RPC_TIMEOUT, f"seconds; default {c.DEFAULT_RPC_TIMEOUT:g}"),
    (c.ENV_RPC_THREADS, f"RPC worker threads; default {c.DEFAULT_RPC_THREADS}"),
    (c.ENV_LEASE_TTL, f"member lease TTL in seconds; default {c.DEFAULT_LEASE_TTL}"),
    (c.ENV_RANK_SPACE, f"ranks are taken from [0, N); default {c.DEFAULT_RANK_SPACE}"),
    (c.ENV_HTTP_ADDR, f"host:port of /healthz /readyz /metrics; default <pod IP>:"
                      f"{c.SIDECAR_HTTP_PORT}"),
    (c.ENV_SOCKET, f"the worker socket; default {c.socket_path()}"),
    (c.ENV_DRAIN_GRACE, f"seconds SIGTERM waits for the worker to leave; default "
                        f"{c.DEFAULT_DRAIN_GRACE:g}"),
    (c.ENV_NODE_LABELS_FILE, "node labels from a YAML/JSON file instead of the API"),
    (c.ENV_NODE_LABELS, "node labels as inline JSON instead of the API"),
    (K8S_IN_CLUSTER[0], "in a pod: the API server that has the node's labels"),
    (K8S_IN_CLUSTER[1], "(its port)"),
)  # fmt: skip

WORKER_ENV: EnvHelp = (
    (c.ENV_SOCKET, f"the sidecar's socket (--socket wins); default {c.socket_path()}"),
    (c.ENV_SIDECAR_WAIT, "seconds to wait for the socket to appear; default 120"),
)


def parser(prog: str, description: str, env: EnvHelp) -> argparse.ArgumentParser:
    """An argparse parser with --help (description + environment) and --version."""
    p = argparse.ArgumentParser(
        prog=prog, description=description, epilog=env_help(env),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("--version", action="version", version=version_line(prog))
    return p
