"""pytest fixtures for the local cluster (registered by e2e/conftest.py and tests/conftest.py).

* ``local_cluster`` — a fresh, started ``LocalCluster`` per test (1 node, no GPUs, CRDs from
  crds/ applied). Its attributes: ``url``, ``kubeconfig`` (path), ``api_client()`` (a new
  ``kubernetes.client.ApiClient``), ``audit`` (``AuditLog``), ``store``, ``kubelet``,
  ``kubectl(*args)``, ``apply_docs``/``apply_file``, ``create_namespace``, ``pod_logs``,
  ``wait_for(predicate, timeout)``, ``start_operator()``/``stop_operator()``.
* ``local_cluster_factory`` — ``factory(**LocalCluster kwargs)`` starts more clusters with other
  shapes (nodes, gpus_per_node, node_labels, backoff, pod_env); all are stopped at teardown.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .cluster import LocalCluster


@pytest.fixture
def local_cluster_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., LocalCluster]]:
    started: list[LocalCluster] = []

    def make(**kwargs: Any) -> LocalCluster:
        kwargs.setdefault("workdir", str(tmp_path_factory.mktemp("localcluster")))
        kwargs.setdefault("backoff_base", 0.2)
        kwargs.setdefault("backoff_cap", 2.0)
        cluster = LocalCluster(**kwargs).start()
        started.append(cluster)
        return cluster

    yield make
    for cluster in reversed(started):
        cluster.stop()


@pytest.fixture
def local_cluster(local_cluster_factory: Callable[..., LocalCluster]) -> LocalCluster:
    return local_cluster_factory()
