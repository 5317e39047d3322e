"""End-to-end test infrastructure: the real control plane with process kubelets (e2e/cluster)
and the backends the e2e suite runs on (e2e/backends)."""
