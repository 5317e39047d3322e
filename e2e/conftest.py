"""e2e fixtures: the local cluster (see e2e/localcluster/fixture.py)."""

from e2e.localcluster.fixture import local_cluster, local_cluster_factory

__all__ = ["local_cluster", "local_cluster_factory"]
