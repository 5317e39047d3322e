"""``python -m e2e.cluster up`` / ``down``: one command starts the real cluster, one removes every
process and address it made."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from e2e.cluster import build
from e2e.cluster.cluster import unavailable
from e2e.cluster.netns import ip

pytestmark = pytest.mark.slow  # starts a whole control plane

REPO = Path(__file__).resolve().parents[2]


def _processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that contain ``text`` (our children pass the work dir)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{proc.name}: {cmdline[:200]}")
    return found


def _read_until(proc: subprocess.Popen[str], needle: str, timeout: float) -> str:
    assert proc.stdout is not None
    seen = ""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        if time.monotonic() > deadline or proc.poll() is not None:
            raise AssertionError(f"no {needle!r} from 'up' within {timeout}s; output: {seen}")
        if select.select([proc.stdout], [], [], 0.5)[0]:
            seen += proc.stdout.readline()
    return seen


def test_up_serves_the_api_and_down_removes_everything(tmp_path: Path) -> None:
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    kubeconfig, work = tmp_path / "k.yaml", tmp_path / "work"
    up = subprocess.Popen(
        [sys.executable, "-m", "e2e.cluster", "up", "--kubeconfig", str(kubeconfig),
         "--nodes", "0", "--work-dir", str(work)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        out = _read_until(up, "ready in", 240)
        assert _processes_mentioning(str(work)), "no component runs with the work dir"
        ns = subprocess.run(
            [str(build.binary("kubectl")), "--kubeconfig", str(kubeconfig), "get", "ns",
             "kube-system", "-o", "json"], capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert json.loads(ns.stdout)["metadata"]["name"] == "kube-system", ns.stderr
        address = kubeconfig.read_text().split("https://")[1].split(":")[0]
        assert f" {address}/" in ip("-o", "-4", "addr", "show").stdout
        router = f"rpj-router-{int(address.split('.')[2])}"  # the slot's (apiaddr.py)
        assert router in ip("netns", "list").stdout.split()
        down = subprocess.run(
            [sys.executable, "-m", "e2e.cluster", "down", "--kubeconfig", str(kubeconfig)],
            cwd=REPO, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert down.returncode == 0, down.stderr
        assert up.wait(60) == 0
        assert up.stdout is not None
        assert "stopped" in out + up.stdout.read()
        assert not _processes_mentioning(str(work))
        assert f" {address}/" not in ip("-o", "-4", "addr", "show").stdout
        # The cluster's router namespace (kube-proxy, DNS, the pod bridge) is gone too.
        assert router not in ip("netns", "list").stdout.split()
        assert not Path(f"{kubeconfig}.pid").exists()
    finally:
        if up.poll() is None:
            up.terminate()
            up.wait(60)
