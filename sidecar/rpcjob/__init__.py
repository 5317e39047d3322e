"""rpcjob: elastic PyTorch RPC. The worker API (``init_rpc``, ``shutdown``, ``on_drain``) and
the ``etcd3://`` init_method live here; this package never imports torch eagerly, so the
sidecar daemon stays torch-free."""

__version__ = "0.1.0"
