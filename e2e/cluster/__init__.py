"""A real Kubernetes control plane for the e2e suite (``python -m e2e.cluster up``).

kube-apiserver, kube-controller-manager and kube-scheduler of one pinned release are built from
the Go module proxy (build.py), stored in the Debian etcd, and run with client-certificate and
service-account authentication, Node+RBAC authorization and the default admission plugins.
"""
