"""Every example in examples/ runs to success, driven exactly as a user would: `kubectl apply -f
examples/<x>/rpcjob.yaml`, `kubectl get rpj` (printer columns), then `kubectl delete -f`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from e2e.backends import Cluster
from rpcjob import contract

from .jobs import EXAMPLE_APPS, EXAMPLES, load, printer_table

pytestmark = pytest.mark.slow  # a cluster with the chart, whole jobs


def gpus_available() -> bool:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    return subprocess.run([smi, "-L"], capture_output=True, timeout=30).returncode == 0


def example_params() -> list[object]:
    params: list[object] = []
    for app in EXAMPLE_APPS:
        yaml_path = app / "rpcjob.yaml"
        marks = []
        if "gpu" in app.name:
            marks.append(pytest.mark.gpu)
            if not gpus_available():
                marks.append(pytest.mark.skip(reason=f"{app.name} needs NVIDIA GPUs (none here)"))
        if not yaml_path.exists():
            marks.append(pytest.mark.skip(reason=f"examples/{app.name} has no rpcjob.yaml yet"))
        params.append(pytest.param(yaml_path, id=app.name, marks=marks))
    return params


def test_every_example_folder_has_a_scenario() -> None:
    assert EXAMPLES, "no examples/*/rpcjob.yaml found"
    assert {p.name for p in EXAMPLES} <= {p.name for p in EXAMPLE_APPS}


@pytest.mark.parametrize("path", example_params())
def test_example_runs_to_success(cluster: Cluster, path: Path) -> None:
    name = load(path)["metadata"]["name"]
    cluster.use_example(path.parent)
    out = cluster.kubectl("apply", "-f", str(path)).stdout
    assert out.strip() == f"{contract.SINGULAR}.{contract.GROUP}/{name} created"

    spec = load(path)["spec"]
    status = cluster.wait_state(name, "Succeeded")
    for role, role_spec in spec["roles"].items():
        assert status["roles"][role]["desired"] == role_spec["replicas"], status["roles"]
    success_role = (spec.get("successPolicy") or {}).get("role")
    if success_role:  # done because that role's pods exited 0
        assert status["roles"][success_role]["succeeded"] >= 1, status["roles"]
    assert status["observedGeneration"] >= 1
    conditions = {c["type"]: c for c in status.get("conditions") or []}
    assert conditions.get("Succeeded", {}).get("status") == "True", conditions

    def columns_show_the_status() -> list[str] | None:
        # The columns are the status's fields; pods still ending after Succeeded change its
        # ready count, so the table is compared with a status read right after it.
        table = printer_table(cluster)
        assert table[0] == ["NAME", "READY", "RESTARTS", "STATE", "AGE"]
        row = next(r for r in table[1:] if r[0] == name)
        now = (cluster.job(name) or {})["status"]
        return row if row[1] == now["ready"] and row[2] == str(now.get("restarts", 0)) else None

    row = cluster.wait_for(columns_show_the_status, 60, "the printer columns to show the status")
    assert row[3] == "Succeeded"

    deleted = cluster.kubectl("delete", "-f", str(path), "--wait=false").stdout
    # kubectl 1.31+ adds " from <namespace> namespace".
    assert deleted.strip() in (
        f'{contract.SINGULAR}.{contract.GROUP} "{name}" deleted',
        f'{contract.SINGULAR}.{contract.GROUP} "{name}" deleted from {cluster.namespace} namespace',
    )
    cluster.wait_for(lambda: cluster.job(name) is None and not cluster.pods(name), 120,
                     f"{name} and its pods to be gone")  # fmt: skip
