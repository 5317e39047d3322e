"""Local execution: an embedded etcd and slots run as local processes (``rpcjob run``)."""
