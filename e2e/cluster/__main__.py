"""``python -m e2e.cluster up|down``: start the real e2e cluster in the foreground, or stop one.

up    starts etcd, the control plane and the nodes, copies the admin kubeconfig to
      ``--kubeconfig``, prints "ready" with the start time, and runs until Ctrl-C / SIGTERM,
      then removes every process, namespace, interface and temp dir it made.
down  stops the ``up`` that wrote ``--kubeconfig`` (SIGTERM, then waits for its cleanup).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

from .build import BuildError
from .cluster import E2ECluster, kubelet_available
from .controlplane import ControlPlaneError


def _state_file(kubeconfig: Path) -> Path:
    return kubeconfig.with_name(kubeconfig.name + ".pid")


def up(args: argparse.Namespace) -> int:
    kubeconfig = Path(args.kubeconfig).resolve()
    labels = json.loads(args.node_labels)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    cluster = E2ECluster(
        Path(args.work_dir) if args.work_dir else None, args.nodes, args.gpus_per_node, labels
    )
    try:
        cluster.start(args.timeout)
        kubeconfig.write_text(cluster.kubeconfig.read_text())
        kubeconfig.chmod(0o600)
        _state_file(kubeconfig).write_text(json.dumps({"pid": os.getpid()}))
        nodes = len(cluster.kubelets) if kubelet_available() else 0
        print(
            f"ready in {cluster.started_in:.1f}s: {nodes} node(s), kubeconfig {kubeconfig}, "
            f"logs {cluster.work_dir}/logs; Ctrl-C or "
            f"'python -m e2e.cluster down --kubeconfig {args.kubeconfig}' stops it",
            flush=True,
        )
        stop.wait()
    except (BuildError, ControlPlaneError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        cluster.stop()
        _state_file(kubeconfig).unlink(missing_ok=True)
    print("stopped", flush=True)
    return 0


def down(args: argparse.Namespace) -> int:
    state = _state_file(Path(args.kubeconfig).resolve())
    try:
        pid = int(json.loads(state.read_text())["pid"])
    except FileNotFoundError:
        print(f"error: no cluster runs for {args.kubeconfig} ({state} is missing)", file=sys.stderr)
        return 1
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        state.unlink(missing_ok=True)
        return 0
    deadline = time.monotonic() + args.timeout
    while state.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    if state.exists():
        print(
            f"error: the cluster (pid {pid}) did not stop within {args.timeout}s", file=sys.stderr
        )
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m e2e.cluster",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_up = sub.add_parser("up", help="start a cluster and run until Ctrl-C")
    p_up.add_argument("--kubeconfig", required=True, help="where to write the admin kubeconfig")
    p_up.add_argument("--nodes", type=int, default=1)
    p_up.add_argument("--gpus-per-node", type=int, default=0)
    p_up.add_argument("--node-labels", default="{}", help="JSON map of labels for every node")
    p_up.add_argument("--work-dir", help="keep certificates, logs and etcd data here")
    p_up.add_argument("--timeout", type=float, default=180.0, help="seconds to become ready")
    p_down = sub.add_parser("down", help="stop the cluster started with this kubeconfig")
    p_down.add_argument("--kubeconfig", required=True)
    p_down.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    return up(args) if args.cmd == "up" else down(args)


if __name__ == "__main__":
    sys.exit(main())
