"""A tiny rpcjob worker for the operator tests: join the job's RPC group, serve until SIGTERM.

``rpcjob.init_rpc()`` installs the SIGTERM handler that drains, leaves the group gracefully
and exits 0; ``RPCJOB_TEST_EXIT_CODE`` makes the worker exit with that code once joined
(a failing worker, for restart accounting).
"""

from __future__ import annotations

import os
import signal

import rpcjob

identity = rpcjob.init_rpc()
print(f"joined as {identity.worker_name} rank {identity.rank}", flush=True)
code = os.environ.get("RPCJOB_TEST_EXIT_CODE")
if code:
    os._exit(int(code))
while True:
    signal.pause()
