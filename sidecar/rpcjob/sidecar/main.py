"""``rpcjob-sidecar``: the pod's membership daemon (docs/architecture.md#pod, docs/contract.md);
its exit codes are in DESCRIPTION below."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from rpcjob import devices as dv
from rpcjob import entrypoints
from rpcjob.etcd import Client, EtcdError
from rpcjob.etcd_env import ENV_NAMES

from .config import ConfigError, SidecarConfig, load_config
from .daemon import Sidecar
from .http import HealthServer, Metrics
from .labels_source import LabelsError, read_node_labels
from .server import serve

log = logging.getLogger("rpcjob.sidecar")


def node_gpus(cfg: SidecarConfig) -> dv.NodeGPUs:
    """The node's GPUs from its labels. A labels file/JSON we cannot read is a configuration
    error; labels we cannot get (no node name, API refused) fall back to none with a warning,
    never a crash loop (docs/devices.md): the role's GPU request then decides."""
    try:
        labels = read_node_labels(cfg.node_name, cfg.node_labels_file, cfg.node_labels_json)
    except LabelsError as e:
        if cfg.node_labels_file or cfg.node_labels_json:  # what the user gave is wrong
            raise ConfigError(str(e)) from None
        log.warning("cannot read node labels (%s): assuming none", e)
        labels = {}
    node = dv.parse_node_labels(labels, cfg.node_name)
    log.info("node %s: %s", cfg.node_name or "(unnamed)", node.describe())
    for w in node.warnings:
        log.warning("%s", w)
    return node


def run(cfg: SidecarConfig, stop: threading.Event) -> int:
    node = node_gpus(cfg)
    try:
        plan = dv.plan_devices(worker=cfg.worker_name, node=node, requested_gpus=cfg.gpus,
                               slots=cfg.slots, device_maps=cfg.device_maps)  # fmt: skip
    except dv.DeviceMapError as e:
        raise ConfigError(str(e)) from None
    ec = cfg.etcd
    client = Client(list(ec.endpoints), ca=ec.ca or None, cert=ec.cert or None,
                    key=ec.key or None, user=ec.user or None,
                    password=ec.password or None, names=ENV_NAMES)  # fmt: skip
    try:
        client.status(timeout=10.0)
    except EtcdError as err:
        log.error("etcd is unreachable at %s: %s (check RPCJOB_ETCD_ENDPOINTS and that etcd "
                  "is running)", ",".join(ec.endpoints), err)  # fmt: skip
        client.close()
        return 1
    metrics = Metrics()
    sidecar = Sidecar(cfg, client, node, metrics)
    sidecar.start()
    http = HealthServer(cfg.http_host, cfg.http_port, metrics, sidecar.healthy, sidecar.ready)
    http.start()
    grpc_server = serve(sidecar, cfg.socket, hello_timeout=max(60.0, cfg.rpc_timeout))
    log.info("rpcjob-sidecar %s ready: socket %s, http %s:%d, devices %s",
             cfg.worker_name, cfg.socket, cfg.http_host, http.port,
             list(plan.devices) or "none (CPU)")  # fmt: skip
    while not stop.wait(0.5):
        if sidecar.watcher.failed.is_set():  # the watch ended: let the pod restart us
            grpc_server.stop(0)
            http.stop()
            client.close()
            return 1
    sidecar.drain(cfg.drain_grace)
    grpc_server.stop(1.0)
    http.stop()
    client.close()
    log.info("rpcjob-sidecar %s stopped", cfg.worker_name)
    return 0


DESCRIPTION = """\
The rpcjob sidecar: runs next to the worker in each pod of an RpcJob. It joins the pod's slot
to the group's membership in etcd (rank, lease), serves the worker on a unix socket, derives
GPU device maps from the node's labels, drains the worker on SIGTERM, and serves /healthz,
/readyz and /metrics. It takes no arguments: the pod's environment configures it.

Exit codes: 0 after a graceful stop, 1 when etcd is unreachable at start or the membership
watch ends, 2 for a configuration error (the message names the variable and the fix)."""


def parse_args(argv: Sequence[str]) -> None:
    """--help and --version (exit 0, no environment needed); anything else is an error."""
    entrypoints.parser("rpcjob-sidecar", DESCRIPTION, entrypoints.SIDECAR_ENV).parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )  # fmt: skip
    try:
        cfg = load_config()
    except ConfigError as e:
        print(f"rpcjob-sidecar: configuration error: {e}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("received %s: draining", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        return run(cfg, stop)
    except ConfigError as e:
        print(f"rpcjob-sidecar: configuration error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
