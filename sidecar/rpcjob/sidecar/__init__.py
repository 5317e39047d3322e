"""rpcjob-sidecar: the pod's membership daemon (torch-free). Entry point: ``main.main``."""
