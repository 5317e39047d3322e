"""A local Kubernetes cluster for tests: an emulated API server and a process kubelet.

``LocalCluster`` (cluster.py) starts both; ``python -m e2e.localcluster`` runs one by hand;
the pytest fixture ``local_cluster`` lives in fixture.py. See docs/testing.md.
"""
