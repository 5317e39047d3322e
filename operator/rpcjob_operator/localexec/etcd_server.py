"""An etcd server owned by this process: free loopback port, temporary data dir.

Used by ``rpcjob run`` (embedded etcd) and by the test fixtures (tests/etcd_tls.py adds TLS and
auth). Needs the ``etcd`` binary on PATH (Debian: ``apt-get install etcd-server``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from rpcjob_operator.localexec import lifeline, ports

INSTALL_HINT = (
    "the 'etcd' binary was not found on PATH; rpcjob needs etcd v3 (3.4 or newer). "
    "Install it with 'sudo apt-get install etcd-server' (Debian/Ubuntu), "
    "'brew install etcd' (macOS), or download a release from https://etcd.io and put 'etcd' "
    "on PATH"
)


class EtcdNotFound(RuntimeError):
    pass


class EtcdStartError(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    """A port reserved for this process without races (localexec/ports.py)."""
    return ports.reserve_port(host)


@dataclass
class EmbeddedEtcd:
    host: str = "127.0.0.1"
    data_dir: str | None = None
    port: int = 0
    peer_port: int = 0
    extra_args: list[str] = field(default_factory=list)  # more etcd flags (e.g. TLS files)
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _own_dir: bool = field(default=False, repr=False)
    _log: Path | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def scheme(self) -> str:
        return "http"

    def start(self, timeout: float = 20.0) -> EmbeddedEtcd:
        binary = shutil.which("etcd")
        if not binary:
            raise EtcdNotFound(INSTALL_HINT)
        if self.data_dir is None:
            self.data_dir = tempfile.mkdtemp(prefix="rpcjob-etcd-")
            self._own_dir = True
        self.port = self.port or free_port(self.host)
        self.peer_port = self.peer_port or free_port(self.host)
        client_url = f"{self.scheme}://{self.endpoint}"
        peer_url = f"http://{self.host}:{self.peer_port}"
        args = [
            binary,
            "--name", "rpcjob",
            "--data-dir", str(Path(self.data_dir) / "data"),
            "--listen-client-urls", client_url,
            "--advertise-client-urls", client_url,
            "--listen-peer-urls", peer_url,
            "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"rpcjob={peer_url}",
            "--log-level", "error",
            "--logger", "zap",
            *self.extra_args,
        ]  # fmt: skip
        env = dict(os.environ, ETCD_UNSUPPORTED_ARCH=os.environ.get("ETCD_UNSUPPORTED_ARCH", ""))
        self._log = Path(self.data_dir) / "etcd.log"
        # Tied to this process (lifeline.py): etcd dies with it, even on SIGKILL; same pid.
        argv, fds = lifeline.wrap(args)
        with open(self._log, "ab") as log:
            self._proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                pass_fds=fds,
            )  # fmt: skip
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Wait until the client port accepts connections (the process may have died)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise EtcdStartError(f"etcd exited with {self._proc.returncode}: {self.log_tail()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    pass
            except OSError:
                time.sleep(0.02)
                continue
            # etcd accepts connections before it serves them (until it has become leader).
            if self._healthy():
                return
            time.sleep(0.02)
        raise EtcdStartError(f"etcd did not listen on {self.endpoint} within {timeout}s")

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.endpoint}/health", timeout=1) as r:
                return b'"true"' in r.read()
        except (OSError, ValueError):
            return False

    def log_tail(self, n: int = 2000) -> str:
        if self._log and self._log.exists():
            return self._log.read_text(errors="replace")[-n:]
        return ""

    def stop(self) -> None:
        """Stop the server, keeping the data dir (restart() brings the same data back)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def restart(self, timeout: float = 20.0) -> None:
        self.stop()
        self.start(timeout)  # the same port and data dir

    def close(self) -> None:
        self.stop()
        ports.release_port(self.port)  # ports this process reserved in start() (else no-op)
        ports.release_port(self.peer_port)
        if self._own_dir and self.data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def __enter__(self) -> EmbeddedEtcd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
