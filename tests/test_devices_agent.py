"""The membership guards (rpcjob.devices.agent) with real torch processes on CPU.

Three dynamic-RPC workers join, exchange tensors both ways, and the third leaves gracefully,
with the guards installed in every process (the same choreography as the GPU benchmark,
bench/gpu_bench.py --cpu; the CUDA version is tests/test_gpu_device_maps.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_gpu_device_maps import gpu_bench


@pytest.mark.slow
def test_guarded_join_and_leave_on_cpu(tmp_path: Path) -> None:
    res = gpu_bench(tmp_path / "res.json", "rpcjob", 1, 1, "--cpu", timeout=240)["rpcjob"]
    for worker in ("worker_0", "worker_1", "worker_2"):
        assert res[worker]["rc"] == 0, res
        assert "error" not in res[worker], res[worker]
    checks = {k: v for w in res.values() for k, v in w.items() if k[0].isupper()}
    assert len(checks) == 12, checks
    assert all(v == "ok" for v in checks.values()), checks
    # after worker_2 left, worker_0 still holds worker_1's (empty, CPU) reverse map
    assert json.loads(res["worker_0"]["reverse_maps_after_leave"]) == {"worker_1": {}}


def test_guards_module_imports_without_torch() -> None:
    code = "import sys, rpcjob.devices.agent; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


CALL_ALL = r"""
import socket, sys, time
from pathlib import Path
import torch.distributed.rpc as rpc
from rpcjob.devices.agent import call_all

def boom():
    raise KeyError("first failure")

def later_boom():
    raise ValueError("second failure")

def slow_touch(path):
    time.sleep(0.5)
    Path(path).touch()
    return "touched"

s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
opts = rpc.TensorPipeRpcBackendOptions(init_method=f"tcp://127.0.0.1:{port}",
                                       _transports=["uv"], _channels=["basic"])
rpc.init_rpc("a", rank=0, world_size=None, rpc_backend_options=opts)
flag = sys.argv[1]
assert call_all([("a", pow, (2, 5)), ("a", slow_touch, (flag + ".ok",))]) == [32, "touched"]
try:
    call_all([("a", boom, ()), ("a", slow_touch, (flag,)), ("a", later_boom, ())])
except Exception as e:
    assert "first failure" in str(e), e
    assert Path(flag).exists(), "raised before every call had finished"
    print("RAISED-AFTER-ALL")
rpc.shutdown()
"""


@pytest.mark.slow
def test_call_all_waits_for_every_call_then_raises_the_first_error(tmp_path: Path) -> None:
    """The joiner's steps go to all members at once; a failure is raised (the first, in call
    order) only once no call is in flight, so torch's join error path never races them."""
    proc = subprocess.run(
        [sys.executable, "-c", CALL_ALL, str(tmp_path / "flag")],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert "RAISED-AFTER-ALL" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]
