"""``rpcjob-operator``: the kopf operator process (console script ``rpcjob_operator.main:main``).

Flags are ``kopf run`` compatible (the Helm chart passes ``--peering``, ``--priority``,
``--liveness`` and ``--all-namespaces`` or ``--namespace``), plus rpcjob's own::

    rpcjob-operator [--all-namespaces | --namespace NS ...] [--peering NAME | --standalone]
                    [--priority N] [--peering-lifetime S] [--liveness URL] [--metrics HOST:PORT]
                    [--resync SECONDS] [--watch-server-timeout S] [--watch-client-timeout S]
                    [--watch-connect-timeout S] [--verbose | --debug | --quiet]

Operator-wide job defaults come from the environment (render/defaults.py, set by the chart).
See docs/operator.md.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import click

from rpcjob import contract as c
from rpcjob.entrypoints import K8S_IN_CLUSTER, EnvHelp, env_help
from rpcjob_operator.render.defaults import (
    DEFAULT_SIDECAR_IMAGE,
    ENV_METRICS_NAMESPACE_SELECTOR,
    ENV_METRICS_POD_SELECTOR,
)

DEFAULT_PEERING_LIFETIME = 10
MAX_PRIORITY = 900_000
_START_SLOTS = 10**13  # milliseconds since the epoch stay below this until the year 2286
F = TypeVar("F", bound=Callable[..., Any])


# The environment rpcjob-operator reads, for its --help (names from the contract).
OPERATOR_ENV: EnvHelp = (
    (c.ENV_DEFAULT_ETCD_ENDPOINTS, "etcd host:port,... for jobs without spec.etcd"),
    (c.ENV_DEFAULT_ETCD_TLS_SECRET, "Secret (in the job's namespace) with etcd TLS files"),
    (c.ENV_DEFAULT_ETCD_AUTH_SECRET, "Secret (in the job's namespace) with etcd user/password"),
    (c.ENV_SIDECAR_IMAGE, f"the injected sidecar's image; default {DEFAULT_SIDECAR_IMAGE}"),
    (c.ENV_SIDECAR_IMAGE_PULL_POLICY, "its imagePullPolicy; default IfNotPresent"),
    (c.ENV_JOB_SERVICE_ACCOUNT, "ServiceAccount of job pods whose template names none"),
    (ENV_METRICS_NAMESPACE_SELECTOR, "JSON labels: namespaces that may scrape sidecar metrics"),
    (ENV_METRICS_POD_SELECTOR, "JSON labels: pods that may scrape sidecar metrics"),
    (K8S_IN_CLUSTER[0], "in a pod: the API server (service account credentials)"),
    (K8S_IN_CLUSTER[1], "(its port)"),
    ("KUBECONFIG", "outside a pod: the kubeconfig to use"),
)


def click_epilog(entries: EnvHelp) -> str:
    """``env_help`` for a click command (``\\b`` keeps click from rewrapping the lines)."""
    return "\b\n" + env_help(entries)


def peering_priority(priority: int, started_ms: int) -> int:
    """The kopf priority: the user's ``--priority`` first, then the start time (newest wins).

    kopf pauses every operator that sees a live peer of the same priority, so two replicas
    of one priority would both stand still, and a restarted operator would wait out the
    lifetime of its own dead predecessor. With the start time as a tie-break the newest
    operator of a priority runs at once and older live ones stand by (in its favour)."""
    return priority * _START_SLOTS + started_ms % _START_SLOTS


DEFAULT_LIVENESS = f"http://0.0.0.0:{c.OPERATOR_HEALTH_PORT}{c.OPERATOR_LIVENESS_PATH}"


def _seconds(flag: str, default: float, help: str) -> Callable[[F], F]:
    return click.option(flag, type=float, default=default, show_default=True, help=help)


@click.command(
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=click_epilog(OPERATOR_ENV),
)
@click.version_option(
    package_name="rpcjob", prog_name="rpcjob-operator", message="%(prog)s %(version)s"
)
@click.option(
    "-A",
    "--all-namespaces",
    "all_namespaces",
    is_flag=True,
    help="Serve RpcJobs in every namespace (the chart's cluster scope; the default).",
)
@click.option(
    "-n",
    "--namespace",
    "namespaces",
    multiple=True,
    metavar="NS",
    help="Serve RpcJobs only in NS (repeatable; globs as in kopf). Namespace scope.",
)
@click.option(
    "--peering",
    "peering_name",
    default=None,
    metavar="NAME",
    help="kopf peering for HA: operators of one peering pause while a peer of higher "
    "priority runs. Naming it makes the peering object mandatory (the chart "
    f"creates it). Default: '{c.DEFAULT_PEERING_NAME}' if it exists.",
)
@click.option("--standalone", is_flag=True, help="No peering at all (one operator only).")
@click.option(
    "--priority",
    type=click.IntRange(0, MAX_PRIORITY),
    default=0,
    show_default=True,
    help="This operator's peering priority. Among operators of one priority the one started "
    "last runs and the others stand by (no pause for a dead peer of the same priority).",
)
@click.option(
    "--peering-lifetime",
    type=click.IntRange(2, 3600),
    default=DEFAULT_PEERING_LIFETIME,
    show_default=True,
    help="Seconds a peer's record counts as alive without a keep-alive (kopf sends one every "
    "1-5 s at this setting): how long a standby waits for an active peer that died.",
)
@click.option(
    "--liveness",
    "liveness",
    default=DEFAULT_LIVENESS,
    show_default=True,
    metavar="URL",
    help="kopf liveness endpoint; '' disables it.",
)
@click.option(
    "--metrics",
    "metrics_addr",
    default=f"0.0.0.0:{c.OPERATOR_METRICS_PORT}",
    show_default=True,
    metavar="HOST:PORT",
    help="Prometheus /metrics address; '' disables it.",
)
@_seconds("--resync", 60.0, "Seconds between reconciles of a job when nothing happens.")
@_seconds(
    "--watch-server-timeout",
    300.0,
    "The API server ends each watch after this many seconds (it is re-opened).",
)
@_seconds(
    "--watch-client-timeout",
    330.0,
    "Drop a watch connection that has been silent for this many seconds.",
)
@_seconds("--watch-connect-timeout", 30.0, "Timeout for opening a watch connection.")
@click.option("-v", "--verbose", is_flag=True)
@click.option("-d", "--debug", is_flag=True)
@click.option("-q", "--quiet", is_flag=True)
def cli(
    all_namespaces: bool,
    namespaces: tuple[str, ...],
    peering_name: str | None,
    standalone: bool,
    priority: int,
    peering_lifetime: int,
    liveness: str,
    metrics_addr: str,
    resync: float,
    watch_server_timeout: float,
    watch_client_timeout: float,
    watch_connect_timeout: float,
    verbose: bool,
    debug: bool,
    quiet: bool,
) -> None:
    """Run the rpcjob operator: reconcile RpcJobs into pods, a Service and a NetworkPolicy."""
    if all_namespaces and namespaces:
        raise click.UsageError(
            "--all-namespaces and --namespace exclude each other: use --all-namespaces for the "
            "cluster scope, or one --namespace per watched namespace for the namespace scope"
        )
    if standalone and peering_name:
        raise click.UsageError("--standalone and --peering exclude each other: pick one")
    if resync <= 0:
        raise click.BadParameter("must be > 0", param_hint="--resync")
    if watch_client_timeout <= watch_server_timeout:
        raise click.BadParameter(
            f"must be larger than --watch-server-timeout ({watch_server_timeout}), or healthy "
            "but quiet watches are dropped by the client first",
            param_hint="--watch-client-timeout",
        )

    import kopf

    from rpcjob_operator import handlers  # registers the handlers

    kopf.configure(verbose=verbose, debug=debug, quiet=quiet)
    handlers.CONFIG = handlers.OperatorConfig(
        metrics_addr=metrics_addr,
        resync_seconds=resync,
        watch_server_timeout=watch_server_timeout,
        watch_client_timeout=watch_client_timeout,
        watch_connect_timeout=watch_connect_timeout,
        peering_lifetime=peering_lifetime,
    )
    kopf.run(
        clusterwide=not namespaces,
        namespaces=list(namespaces),
        standalone=True if standalone else None,
        peering_name=peering_name,
        priority=peering_priority(priority, time.time_ns() // 1_000_000),
        liveness_endpoint=liveness or None,
    )


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv if argv is not None else sys.argv[1:], prog_name="rpcjob-operator")


if __name__ == "__main__":
    main()
