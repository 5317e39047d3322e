"""The backend selection and the kind backend's clean skip (no cluster needed)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from e2e.backends import kind

REPO = Path(__file__).resolve().parents[2]


def test_kind_backend_is_unavailable_without_a_docker_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if kind.unavailable() is None:
        pytest.skip("docker and kind work here: the kind backend runs")
    # kind and kubectl present, docker present but its engine unreachable (this machine).
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "kind").write_text("#!/bin/sh\necho kind v0.31.0\n")
    (bin_dir / "docker").write_text(
        "#!/bin/sh\necho 'Cannot connect to the Docker daemon at unix:///var/run/docker.sock.' >&2"
        "\nexit 1\n"
    )
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    kubectl = shutil.which("kubectl")
    assert kubectl is not None
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{Path(kubectl).parent}")
    reason = kind.unavailable()
    assert reason is not None and reason.startswith("no docker engine (`docker info` failed: ")
    assert "Cannot connect to the Docker daemon" in reason


def test_kind_backend_names_the_missing_tool(monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:  # fmt: skip
    monkeypatch.setenv("PATH", str(tmp_path))
    assert kind.unavailable() == "the kind backend needs docker on PATH"


def test_kind_backend_run_skips_cleanly_here() -> None:
    if kind.unavailable() is None:
        pytest.skip("docker and kind work here: the kind backend runs")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "e2e/tests/test_admission.py", "--e2e-backend=kind",
         "-q", "-p", "no:cacheprovider", "-rs"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "kind backend: " in proc.stdout and " skipped" in proc.stdout
    assert "passed" not in proc.stdout and "failed" not in proc.stdout


def test_unknown_backend_is_a_usage_error() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "e2e/tests/test_backends.py", "-q", "-p",
         "no:cacheprovider", "--collect-only"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "RPCJOB_E2E_BACKEND": "minikube"},
    )  # fmt: skip
    assert proc.returncode != 0
    assert "RPCJOB_E2E_BACKEND='minikube': use one of cluster, kind" in proc.stdout + proc.stderr
