"""End-to-end test infrastructure: the local cluster (emulated API server + process kubelet)."""
