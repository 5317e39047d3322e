"""``python -m e2e.localcluster``: runs until interrupted and serves kubectl."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.localcluster.cluster import REPO_ROOT, LocalCluster


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    kubeconfig = tmp_path / "kc"
    proc = subprocess.Popen(
        [sys.executable, "-m", "e2e.localcluster", "--kubeconfig", str(kubeconfig),
         "--nodes", "2", "--gpus-per-node", "4", "--node-labels", '{"zone": "z1"}',
         "--workdir", str(tmp_path / "work")],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_cli_serves_kubectl_until_interrupted(cli: subprocess.Popen[str], tmp_path: Path) -> None:
    kc = tmp_path / "kc"
    LocalCluster.wait_for(kc.exists, 60, message="the kubeconfig")

    def kubectl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["kubectl", "--kubeconfig", str(kc), *args],
                              capture_output=True, text=True, timeout=60)  # fmt: skip

    nodes = LocalCluster.wait_for(lambda: kubectl("get", "nodes", "-o", "name").stdout.split(), 60)
    assert nodes == ["node/local-node-0", "node/local-node-1"]
    labels = kubectl("get", "node", "local-node-1", "-o", "jsonpath={.metadata.labels}").stdout
    assert '"nvidia.com/gpu.count":"4"' in labels and '"zone":"z1"' in labels
    cli.send_signal(signal.SIGINT)
    out, _ = cli.communicate(timeout=60)
    assert cli.returncode == 0, out
    assert "2 node(s) x 4 GPU(s)" in out


def test_cli_requires_a_kubeconfig_path() -> None:
    r = subprocess.run([sys.executable, "-m", "e2e.localcluster"], cwd=REPO_ROOT,
                       capture_output=True, text=True, timeout=60, env={**os.environ})  # fmt: skip
    assert r.returncode == 2
    assert "the following arguments are required: --kubeconfig" in r.stderr
