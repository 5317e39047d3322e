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
from typing import Any

import pytest

pytestmark = pytest.mark.gpu

ROOT = Path(__file__).resolve().parent.parent


def gpu_bench(out: Path, scenario: str, mib: int, iters: int, *extra: str, timeout: float) -> Any:
    """bench/gpu_bench.py's results (JSON) for one scenario, the run's output on a failure."""
    cmd = [sys.executable, str(ROOT / "bench" / "gpu_bench.py"), *extra, "--scenarios", scenario,
           "--size-mib", str(mib), "--iters", str(iters), "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


def _cuda_gpus() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@pytest.mark.skipif(_cuda_gpus() < 2, reason="needs 2 CUDA GPUs (run on the device machine)")
def test_cuda_tensors_both_directions_across_join_and_leave(tmp_path: Path) -> None:
    res = gpu_bench(tmp_path / "res.json", "rpcjob", 64, 2, timeout=280)["rpcjob"]
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


# --- pods isolated as on a node: own network namespace (and /dev), through real sidecars ------
SIDECAR_CHECKS = {
    "worker_0": ["E_to_L_after_join", "E_to_T", "E_to_L_right_after_leave"],
    "worker_1": ["L_to_E_after_join", "L_to_T", "L_to_E_right_after_leave", "L_to_E_after_leave"],
    "worker_2": ["T_to_E", "T_to_L"],
}


def _netns_why_not() -> str:
    sys.path.insert(0, str(ROOT / "bench"))
    from gpu_netns import NetnsPods  # type: ignore[import-not-found]

    return str(NetnsPods.available())


@pytest.fixture(scope="module")
def netns_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """One run of every namespace-isolated setting this machine has (bench --scenarios netns)."""
    if _cuda_gpus() < 1:
        pytest.skip("needs a CUDA GPU (run on the device machine)")
    why = _netns_why_not()
    if why:
        pytest.skip(f"network namespaces: {why}")
    res: dict[str, object] = gpu_bench(
        tmp_path_factory.mktemp("netns") / "res.json", "netns", 64, 3, timeout=900
    )
    return res


def _ok(value: object) -> bool:
    if isinstance(value, dict):
        return value.get("result") == "ok"
    if isinstance(value, list):
        return bool(value) and all(v == "ok" for v in value)
    return value == "ok"


def _check_setting(res: dict[str, object], name: str) -> None:
    scen = res[name]
    assert isinstance(scen, dict) and "error" not in scen, scen
    for worker, checks in SIDECAR_CHECKS.items():
        r = scen[worker]
        assert r["rc"] == [0], f"{name} {worker}: {r}"
        assert r["devices"] == ["cuda:0"], f"{name} {worker}: no silent CPU fallback: {r}"
        for check in checks:
            assert _ok(r.get(check)), f"{name} {worker} {check}: {r.get(check)}"
    assert scen["worker_0"]["bw_maps"]["gbps"] > 0
    hs = res[f"{name}_handset"]
    assert isinstance(hs, dict) and hs["w0"].get("roundtrip") == "ok", hs


def test_time_sliced_gpu_pods_in_own_network_namespaces(netns_results: dict[str, object]) -> None:
    """Two (then three) pods on GPU 0 of a time-sliced node, each in its own network namespace."""
    _check_setting(netns_results, "netns_timesliced")


@pytest.mark.skipif(_cuda_gpus() < 2, reason="needs 2 CUDA GPUs (run on the device machine)")
@pytest.mark.parametrize("setting", ["netns_own_gpu_dev", "netns_both_gpus_dev"])
def test_two_gpu_pods_in_own_network_namespaces(
    netns_results: dict[str, object], setting: str
) -> None:
    """Each pod on its own GPU; /dev holding only that GPU (device plugin) or both."""
    _check_setting(netns_results, setting)
