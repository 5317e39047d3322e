"""Run the local cluster by hand.

    python -m e2e.localcluster --kubeconfig FILE [--nodes N] [--gpus-per-node K] [--with-operator]
                               [--workloads]

Runs the local cluster until interrupted (Ctrl-C / SIGTERM); drive it with
``kubectl --kubeconfig FILE ...``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import signal
import sys
import threading

from rpcjob import contract
from rpcjob_operator.localexec.etcd_server import EmbeddedEtcd, EtcdNotFound

from .cluster import LocalCluster, OperatorUnavailable


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m e2e.localcluster", description=__doc__)
    p.add_argument("--kubeconfig", required=True, help="where to write the kubeconfig")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=0)
    p.add_argument("--node-labels", default="{}", help="JSON map of extra labels for every node")
    p.add_argument("--port", type=int, default=0, help="API server port (default: a free one)")
    p.add_argument("--workdir", default=None, help="pod directories and logs (default: a temp dir)")
    p.add_argument(
        "--with-operator",
        action="store_true",
        help="also run rpcjob-operator (and an embedded etcd for it) against the cluster",
    )
    p.add_argument(
        "--workloads",
        action="store_true",
        help="run Deployments (Deployment -> ReplicaSet -> Pods) and give Services cluster IPs, "
        "so `helm install --wait charts/rpcjob` runs the chart's operator as a pod",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    a = p.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if a.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    cluster = LocalCluster(
        nodes=a.nodes,
        gpus_per_node=a.gpus_per_node,
        port=a.port,
        node_labels=json.loads(a.node_labels),
        kubeconfig=a.kubeconfig,
        workdir=a.workdir,
        workloads=a.workloads,
    )
    etcd: EmbeddedEtcd | None = None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    cluster.start()
    try:
        print(
            f"local cluster: API server {cluster.url}, {a.nodes} node(s) x {a.gpus_per_node} GPU(s)"
        )
        print(f"  kubectl --kubeconfig {a.kubeconfig} get nodes")
        print(f"  pod directories and logs: {cluster.workdir}/pods")
        if a.with_operator:
            try:
                if importlib.util.find_spec("rpcjob_operator.main") is None:
                    cluster.start_operator()  # raises OperatorUnavailable with the explanation
                etcd = EmbeddedEtcd()
                etcd.start()
                cluster.start_operator(env={contract.ENV_DEFAULT_ETCD_ENDPOINTS: etcd.endpoint})
                print(
                    f"  operator running (log: {cluster.workdir}/operator.log), "
                    f"etcd {etcd.endpoint}"
                )
            except (OperatorUnavailable, EtcdNotFound) as exc:
                print(f"error: --with-operator: {exc}", file=sys.stderr)
                return 2
        print("Ctrl-C to stop")
        while not stop.wait(0.5):
            if cluster.operator is not None and cluster.operator.poll() is not None:
                print(
                    f"error: the operator exited with {cluster.operator.returncode}; see "
                    f"{cluster.workdir}/operator.log",
                    file=sys.stderr,
                )
                return 1
        return 0
    finally:
        cluster.stop()
        if etcd is not None:
            etcd.close()


if __name__ == "__main__":
    sys.exit(main())
