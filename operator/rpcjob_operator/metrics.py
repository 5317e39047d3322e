"""Prometheus metrics of the operator (served on contract.OPERATOR_METRICS_PORT ``/metrics``)."""

from __future__ import annotations

import logging
from collections import Counter as Tally

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from rpcjob.netaddr import HostPort, parse_host_port

log = logging.getLogger("rpcjob_operator.metrics")

RECONCILES = Counter(
    "rpcjob_operator_reconciles_total",
    "Reconcile cycles run, by result (ok, conflict, error).",
    ["result"],
)
ERRORS = Counter(
    "rpcjob_operator_errors_total",
    "Errors while reconciling or cleaning up, by kind (api, etcd, refused, internal).",
    ["kind"],
)
PODS_CREATED = Counter("rpcjob_operator_pods_created_total", "Pods created for RpcJob slots.")
PODS_DELETED = Counter(
    "rpcjob_operator_pods_deleted_total",
    "Pods deleted, by reason (ScaleDown, Restart, Suspend, JobSucceeded, JobFailed, ...).",
    ["reason"],
)
STATUS_WRITES = Counter("rpcjob_operator_status_writes_total", "RpcJob status writes.")
JOBS = Gauge("rpcjob_operator_jobs", "RpcJobs this operator handles, by state.", ["state"])
DURATION = Histogram(
    "rpcjob_operator_reconcile_duration_seconds",
    "Wall time of one reconcile cycle (read, plan, status write, actions).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
STATES = ("Pending", "Running", "Suspended", "Succeeded", "Failed", "Invalid")


class JobStates:
    """Per-job state -> the ``rpcjob_operator_jobs{state}`` gauge."""

    def __init__(self) -> None:
        self._state: dict[tuple[str, str], str] = {}
        for s in STATES:
            JOBS.labels(s).set(0)

    def set(self, key: tuple[str, str], state: str | None) -> None:
        if state is None:
            self._state.pop(key, None)
        else:
            self._state[key] = state or "Pending"
        tally = Tally(self._state.values())
        for s in set(STATES) | set(tally):
            JOBS.labels(s).set(tally.get(s, 0))


def serve(addr: str) -> None:
    """Start the /metrics server on ``host:port`` ("" or port 0: disabled). A port in use is
    logged, not fatal: metrics must never stop the operator."""
    if not addr:
        return
    hp = parse_host_port(
        addr, "--metrics", example="0.0.0.0:9465", host_optional=True, port_zero=True
    )
    if hp.port == 0:
        return
    host = hp.host or "0.0.0.0"
    try:
        start_http_server(hp.port, addr=host)
        log.info("serving Prometheus metrics on http://%s/metrics", HostPort(host, hp.port))
    except OSError as e:
        log.warning("cannot serve metrics on %s: %s (continuing without /metrics)", addr, e)
