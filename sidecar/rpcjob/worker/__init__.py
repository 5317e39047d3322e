"""rpcjob.worker: the torch side of the pod runtime (imports torch; the sidecar never does).

``api`` holds the user API (``init_rpc``, ``shutdown``, ``on_drain``), ``roles`` the helpers for
application code (``members``, ``wait_for_member``, ``run_role``), ``launcher`` the
``rpcjob-worker -- CMD`` entry point. Submodules import torch lazily where they can.
"""
