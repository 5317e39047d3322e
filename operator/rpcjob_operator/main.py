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

import click

from rpcjob import contract
from rpcjob_operator import envhelp

DEFAULT_PEERING_LIFETIME = 10
MAX_PRIORITY = 900_000
_START_SLOTS = 10**13  # milliseconds since the epoch stay below this until the year 2286


def peering_priority(priority: int, started_ms: int) -> int:
    """The kopf priority: the user's ``--priority`` first, then the start time (newest wins).

    kopf pauses every operator that sees a live peer of the same priority, so two replicas
    of one priority would both stand still, and a restarted operator would wait out the
    lifetime of its own dead predecessor. With the start time as a tie-break the newest
    operator of a priority runs at once and older live ones stand by (in its favour)."""
    return priority * _START_SLOTS + started_ms % _START_SLOTS


DEFAULT_LIVENESS = (
    f"http://0.0.0.0:{contract.OPERATOR_HEALTH_PORT}{contract.OPERATOR_LIVENESS_PATH}"
)


@click.command(
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=envhelp.click_epilog(envhelp.OPERATOR_ENV),
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
    f"creates it). Default: '{contract.DEFAULT_PEERING_NAME}' if it exists.",
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
    default=f"0.0.0.0:{contract.OPERATOR_METRICS_PORT}",
    show_default=True,
    metavar="HOST:PORT",
    help="Prometheus /metrics address; '' disables it.",
)
@click.option(
    "--resync",
    "resync",
    type=float,
    default=60.0,
    show_default=True,
    help="Seconds between reconciles of a job when nothing happens.",
)
@click.option(
    "--watch-server-timeout",
    type=float,
    default=300.0,
    show_default=True,
    help="The API server ends each watch after this many seconds (it is re-opened).",
)
@click.option(
    "--watch-client-timeout",
    type=float,
    default=330.0,
    show_default=True,
    help="Drop a watch connection that has been silent for this many seconds.",
)
@click.option(
    "--watch-connect-timeout",
    type=float,
    default=30.0,
    show_default=True,
    help="Timeout for opening a watch connection.",
)
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
