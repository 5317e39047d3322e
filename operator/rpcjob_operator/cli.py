"""The ``rpcjob`` command: run an RpcJob on this machine, scale it, show it, validate a file."""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import click
import yaml
from rich.console import Console
from rich.table import Table

from rpcjob.contract import ENV_FORK_SERVER
from rpcjob_operator.localexec import control, jobfile
from rpcjob_operator.localexec.display import Display
from rpcjob_operator.localexec.etcd_server import EmbeddedEtcd, EtcdNotFound, EtcdStartError
from rpcjob_operator.localexec.executor import LocalJob, RunOptions
from rpcjob_operator.main import click_epilog
from rpcjob_operator.observe import commands as observe_commands
from rpcjob_operator.observe.commands import fail

EXIT_FAILED = 1
EXIT_ENVIRONMENT = 3
EXIT_INTERRUPTED = 130

# What `rpcjob` itself reads (the job's containers get this environment too, minus RPCJOB_*).
CLI_ENV = (
    (control.ENV_STATE_DIR, "where running local jobs register; default ~/.rpcjob/local"),
    ("TMPDIR", "where each run keeps its pods' directories and the embedded etcd's data"),
    ("PATH", "where the 'etcd' binary is found (rpcjob run without --etcd)"),
    (ENV_FORK_SERVER, "0 starts every container of rpcjob run cold (as --no-fork-server)"),
)


@click.group(
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=click_epilog(CLI_ENV),
)
@click.version_option(package_name="rpcjob", prog_name="rpcjob", message="%(prog)s %(version)s")
def cli() -> None:
    """Elastic PyTorch RPC jobs: run an RpcJob on this machine (an embedded etcd, each pod's
    sidecar and worker as local processes), scale it, show it, or validate job files offline.
    On Kubernetes the operator (rpcjob-operator) runs the same YAML."""


def _node_labels(path: str | None) -> dict[str, str]:
    if path is None:
        return {}
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        fail(f"--node-labels {path}: {exc}")
    if not isinstance(raw, dict):
        fail(f"--node-labels {path}: expected a mapping of label: value")
    return {str(k): str(v) for k, v in raw.items()}


class _Interrupts:
    """First Ctrl-C: drain and leave gracefully. Second: stop now."""

    def __init__(self) -> None:
        self.graceful = threading.Event()
        self.force = threading.Event()

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.graceful.is_set():
            self.force.set()
        self.graceful.set()


@cli.command()
@click.argument("job_file", type=click.Path(dir_okay=False))
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="PATH=VALUE",
    help="Override a spec field, e.g. --set roles.worker.replicas=4.",
)
@click.option("--json", "json_mode", is_flag=True, help="Print events as JSON lines.")
@click.option(
    "--node-labels",
    type=click.Path(dir_okay=False),
    help="YAML map of node labels the sidecars see (e.g. nvidia.com/gpu.count).",
)
@click.option(
    "--lease-ttl",
    default=10,
    show_default=True,
    type=click.IntRange(1, 60),
    help="Member lease TTL in seconds: how long a pod whose sidecar died (or stalled) takes to "
    "be evicted. A crashed worker is evicted at once whatever the TTL; shorter TTLs evict live "
    "members when a busy machine stalls a sidecar or etcd for about 2/3 of the TTL.",
)
@click.option(
    "--etcd",
    "etcd_endpoint",
    metavar="HOST:PORT",
    help="Use this etcd instead of starting one (the job's keys are removed at exit).",
)
@click.option("-v", "--verbose", is_flag=True, help="Also show sidecar logs and status events.")
@click.option(
    "--fork-server/--no-fork-server",
    default=True,
    show_default=True,
    envvar=ENV_FORK_SERVER,
    show_envvar=True,
    help="Start worker containers whose command runs this Python by forking a process that "
    "has already imported torch and rpcjob (no import at each start); commands it cannot serve "
    "start cold, with a warning saying why. --no-fork-server (or RPCJOB_FORK_SERVER=0) starts "
    "every container cold.",
)
def run(
    job_file: str,
    sets: tuple[str, ...],
    json_mode: bool,
    node_labels: str | None,
    lease_ttl: int,
    etcd_endpoint: str | None,
    verbose: bool,
    fork_server: bool,
) -> None:
    """Run JOB_FILE on this machine: embedded etcd, each slot a sidecar + worker process."""
    try:
        obj, _job = jobfile.load(job_file, sets)
    except jobfile.JobFileError as exc:
        fail(str(exc))
    name = str(obj["metadata"]["name"])
    try:
        control.find(name)
        fail(f"a local job named {name!r} is already running; stop it first or rename this one")
    except control.ControlError:
        pass
    labels = _node_labels(node_labels)
    root = tempfile.mkdtemp(prefix="rpj-")  # short: unix socket paths below it
    code = EXIT_FAILED
    try:
        opts = RunOptions(
            workdir=str(Path(job_file).resolve().parent),
            root=os.path.join(root, "p"),
            etcd_endpoint="",  # set once etcd runs
            node_labels=labels,
            lease_ttl=lease_ttl,
            fork_server=fork_server,
        )
        code = _run(obj, opts, root, etcd_endpoint, json_mode, verbose)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    raise SystemExit(code)


def _start_etcd(root: str, endpoint: str | None) -> tuple[str, EmbeddedEtcd | None]:
    if endpoint:
        return endpoint, None
    try:
        os.makedirs(os.path.join(root, "etcd"))
        etcd = EmbeddedEtcd(data_dir=os.path.join(root, "etcd")).start()
    except EtcdNotFound as exc:
        fail(str(exc), EXIT_ENVIRONMENT)
    except EtcdStartError as exc:
        fail(f"the embedded etcd did not start: {exc}", EXIT_ENVIRONMENT)
    return etcd.endpoint, etcd


def _run(
    obj: dict[str, Any],
    opts: RunOptions,
    root: str,
    etcd_endpoint: str | None,
    json_mode: bool,
    verbose: bool,
) -> int:
    endpoint, etcd = _start_etcd(root, etcd_endpoint)
    interrupts = _Interrupts()
    old = {s: signal.signal(s, interrupts) for s in (signal.SIGINT, signal.SIGTERM)}
    opts.etcd_endpoint = endpoint
    display = Display(json_mode=json_mode, verbose=verbose)
    reg: control.Registration | None = None
    try:
        with display:
            job = LocalJob(obj, opts, display.emit)
            display.job, display.rows = job.name, job.rows
            reg = control.Registration(job.name, os.getpid(), endpoint, job.uid)
            reg.write()
            display.emit(
                {
                    "type": "job",
                    "name": job.name,
                    "uid": job.uid,
                    "etcd": endpoint,
                    "root": root,
                    "pid": os.getpid(),
                }
            )
            state = job.run(interrupts.graceful)
            if state == "Interrupted":
                job.warn("interrupted: draining (Ctrl-C again to stop now)")
                threading.Thread(target=_force_watch, args=(interrupts, job), daemon=True).start()
                job.stop_all()
            job.cleanup_keys()
    finally:
        if reg is not None:
            reg.remove()
        if etcd is not None:
            etcd.close()
        for s, h in old.items():
            signal.signal(s, h)
    result = {"Succeeded": 0, "Interrupted": EXIT_INTERRUPTED}.get(state, EXIT_FAILED)
    if json_mode:
        click.echo(json.dumps({"type": "result", "state": state, "exit_code": result}))
    else:
        click.echo(f"rpcjob: job {job.name} {state.lower()}", err=True)
    return result


def _force_watch(interrupts: _Interrupts, job: LocalJob) -> None:
    interrupts.force.wait()
    for pod in list(job.pods.values()):
        pod.runner.kill_now()


@cli.command()
@click.argument("name")
@click.argument("replicas", nargs=-1, required=True, metavar="ROLE=N...")
def scale(name: str, replicas: tuple[str, ...]) -> None:
    """Change the replicas of a running local job, e.g. ``rpcjob scale ps worker=8``."""
    try:
        wanted = control.parse_scale(replicas)
        control.scale(name, wanted)
    except control.ControlError as exc:
        fail(str(exc), EXIT_FAILED)
    click.echo(f"scaled {name}: " + ", ".join(f"{r}={n}" for r, n in wanted.items()))


@cli.command()
@click.argument("name", required=False)
@click.option("--json", "json_mode", is_flag=True)
def status(name: str | None, json_mode: bool) -> None:
    """Show a running local job (or list them)."""
    if name is None:
        for job in control.running_jobs():
            click.echo(job)
        return
    try:
        summary = control.status(name)
    except control.ControlError as exc:
        fail(str(exc), EXIT_FAILED)
    if json_mode:
        click.echo(json.dumps(summary))
        return
    st = summary.get("status", {})
    console = Console()
    console.print(
        f"[bold]{name}[/bold]  state {st.get('state')}  ready {st.get('ready')}  "
        f"restarts {st.get('restarts', 0)}"
    )
    t = Table(box=None)
    for col in ("member", "rank", "pod", "devices"):
        t.add_column(col)
    for m in summary.get("members", []):
        t.add_row(m["name"], str(m["rank"]), m["pod"], ",".join(m.get("devices") or []) or "-")
    console.print(t)


@cli.command()
@click.argument("job_files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--set", "sets", multiple=True, metavar="PATH=VALUE")
def validate(job_files: tuple[str, ...], sets: tuple[str, ...]) -> None:
    """Check RpcJob files against the CRD schema (CEL included) and the operator's rules."""
    bad = 0
    for path in job_files:
        try:
            jobfile.load(path, sets)
            click.echo(f"{path}: valid")
        except jobfile.JobFileError as exc:
            bad += 1
            click.echo(str(exc), err=True)
    if bad:
        raise SystemExit(EXIT_FAILED)


# rpcjob top / debug / profile (docs/observability.md)
for _command in observe_commands.COMMANDS:
    cli.add_command(_command)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
