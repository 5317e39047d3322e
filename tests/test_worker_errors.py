"""Bad input to the worker library and the launcher gives errors that name the fix."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from rpcjob import contract
from rpcjob.worker import launcher
from rpcjob.worker.client import SidecarNotFound, resolve_socket


def test_socket_missing_names_the_path_and_the_env(tmp_path: Path) -> None:
    missing = tmp_path / "sidecar.sock"
    with pytest.raises(SidecarNotFound) as err:
        resolve_socket(str(missing), wait=0.2)
    assert str(err.value) == (
        f"sidecar socket {missing} not found after 0.2s: is the rpcjob sidecar running in this "
        "pod? (set RPCJOB_SOCKET; RPCJOB_SIDECAR_WAIT sets how long to wait)"
    )


def test_socket_that_appears_late_is_found(tmp_path: Path) -> None:
    # Containers of a pod start in parallel: the worker waits for the sidecar's socket.
    late = tmp_path / "sidecar.sock"
    timer = threading.Timer(0.3, late.touch)
    timer.start()
    try:
        assert resolve_socket(str(late), wait=30) == str(late)
    finally:
        timer.cancel()


def test_default_socket_path_is_the_contracts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(contract.ENV_SOCKET, raising=False)
    with pytest.raises(SidecarNotFound, match=re.escape("/var/run/rpcjob/sidecar.sock not found")):
        resolve_socket(wait=0)


@pytest.mark.slow  # a child that imports torch
def test_init_rpc_without_sidecar_fails_fast(tmp_path: Path) -> None:
    env = {
        **os.environ,
        contract.ENV_SOCKET: str(tmp_path / "nope.sock"),
        contract.ENV_SIDECAR_WAIT: "0.5",
    }
    code = "import rpcjob; rpcjob.init_rpc()"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode != 0
    assert (
        "not found after 0.5s: is the rpcjob sidecar running in this pod? (set RPCJOB_SOCKET"
        in (out.stderr)
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "no command given after '--'"),
        (["--"], "no command given after '--'"),
        (["--bogus", "--", "true"], "unknown option '--bogus'"),
    ],
)
def test_launcher_usage_errors(argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        launcher.parse_args(argv)


def test_launcher_socket_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(contract.ENV_SIDECAR_WAIT, "0.2")
    assert launcher.main(["--socket", str(tmp_path / "x.sock"), "--", "true"]) == 2
    assert "rpcjob-worker: sidecar socket" in capsys.readouterr().err


@pytest.fixture
def live_socket(tmp_path: Path) -> Iterator[str]:
    """A real gRPC server on a unix socket (no services needed for readiness)."""
    path = str(tmp_path / "sidecar.sock")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    server.add_insecure_port(f"unix://{path}")
    server.start()
    yield path
    server.stop(None)


def test_launcher_sets_env_and_returns_child_code(live_socket: str) -> None:
    child = (
        "import os,sys; assert os.environ['RPCJOB_SOCKET']==sys.argv[1]; "
        "assert os.environ['RPCJOB_LAUNCHER']=='1'; sys.exit(7)"
    )
    cmd = [sys.executable, "-m", "rpcjob.worker.launcher", "--socket", live_socket, "--"]
    out = subprocess.run(
        [*cmd, sys.executable, "-c", child, live_socket], timeout=120, capture_output=True
    )
    assert out.returncode == 7, out.stderr


def test_launcher_forwards_sigterm(live_socket: str, tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    child = (
        "import signal,sys,time,pathlib\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
        f"pathlib.Path({str(ready)!r}).write_text('x')\n"
        "time.sleep(600)\n"
    )
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rpcjob.worker.launcher",
            "--socket",
            live_socket,
            "--",
            sys.executable,
            "-c",
            child,
        ]
    )
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert time.monotonic() < deadline, "child never started"
        assert p.poll() is None
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=60) == 0
