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

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_guarded_join_and_leave_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "res.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "gpu_bench.py"),
            "--cpu",
            "--scenarios",
            "rpcjob",
            "--size-mib",
            "1",
            "--iters",
            "1",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())["rpcjob"]
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
