"""Operator-internal names injected into pods (reserved: a template may not use them).

Cross-component names (env, labels, socket) live in ``rpcjob.contract``; these only matter
between the renderer and the spec checks.
"""

from __future__ import annotations

from rpcjob import contract

ETCD_TLS_VOLUME = "rpcjob-etcd-tls"
ETCD_TLS_DIR = "/var/run/rpcjob-etcd-tls"
# Every variable in the contract (identity, etcd, rpc options, ...) is set by rpcjob; other
# RPCJOB_* names (e.g. an example's RPCJOB_EXAMPLE_STEPS) stay the user's.
# Test and local-mode knobs (fault-injection hook, node labels) stay settable from a template.
_USER_SETTABLE = frozenset({"ENV_TEST_HOOK", "ENV_NODE_LABELS", "ENV_NODE_LABELS_FILE"})
RESERVED_ENV = frozenset(
    v
    for k, v in vars(contract).items()
    if k.startswith("ENV_") and isinstance(v, str) and k not in _USER_SETTABLE
)
RESERVED_VOLUMES = frozenset({contract.SOCKET_VOLUME, ETCD_TLS_VOLUME})
RESERVED_MOUNT_PATHS = frozenset({contract.SOCKET_DIR, ETCD_TLS_DIR})
RESERVED_CONTAINERS = frozenset({contract.SIDECAR_CONTAINER})
RESERVED_LABEL_PREFIX = f"{contract.GROUP}/"
GPU_RESOURCE = "nvidia.com/gpu"
