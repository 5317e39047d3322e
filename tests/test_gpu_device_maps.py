"""CUDA tensors over dynamic RPC with rpcjob's device maps (needs 2 CUDA GPUs).

Run on the device machine:
``PYTHONPATH=sidecar python3 -m pytest --noconftest -m gpu tests/test_gpu_device_maps.py``.

Three real worker processes, each seeing one GPU as a pod does: an early joiner, a late joiner,
and a third member that joins and leaves gracefully. Maps come from `rpcjob.devices.plan_devices`
and reverse maps are re-applied after every join and leave; CUDA tensors must arrive as CUDA
tensors with the right values in both directions at every step. The choreography lives in
bench/gpu_bench.py (scenario ``rpcjob``), shared with the bandwidth benchmark.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu

ROOT = Path(__file__).resolve().parent.parent


def _cuda_gpus() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@pytest.mark.skipif(_cuda_gpus() < 2, reason="needs 2 CUDA GPUs (run on the device machine)")
def test_cuda_tensors_both_directions_across_join_and_leave(tmp_path: Path) -> None:
    out = tmp_path / "res.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "gpu_bench.py"),
            "--scenarios",
            "rpcjob",
            "--size-mib",
            "64",
            "--iters",
            "2",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())["rpcjob"]
    expected = {
        "worker_0": [
            "E_to_L_before_apply",
            "E_to_L_after_join",
            "E_to_T_before_apply",
            "E_to_T",
            "E_to_L_right_after_leave",
            "E_to_L_after_leave",
        ],
        "worker_1": [
            "L_to_E_before_apply",
            "L_to_E_after_join",
            "L_to_E_right_after_leave",
            "L_to_E_after_leave",
        ],
        "worker_2": ["T_to_E", "T_to_L"],
    }
    for worker, checks in expected.items():
        assert res[worker]["rc"] == 0, res
        assert "error" not in res[worker], res[worker]
        for check in checks:
            assert res[worker].get(check) == "ok", f"{worker} {check}: {res[worker].get(check)}"
    assert res["worker_0"]["bw_maps"]["gbps"] > 0
