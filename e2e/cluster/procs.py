"""Child processes of the e2e cluster: logged to a file, own session, stopped in order.

Each child asks the kernel to SIGKILL it when the process that started it dies
(PR_SET_PDEATHSIG), so a crashed or SIGKILLed test run leaves no API server behind.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

PR_SET_PDEATHSIG = 1
STOP_GRACE = 10.0


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    port: int = 0
    _stopped: bool = field(default=False, repr=False)

    @classmethod
    def spawn(
        cls, name: str, argv: list[str], log: Path, port: int = 0, env: dict[str, str] | None = None
    ) -> Proc:
        log.parent.mkdir(parents=True, exist_ok=True)
        # The components share the machine's cores with everything else.
        env = dict(env or os.environ)
        env.setdefault("GOMAXPROCS", os.environ.get("RPCJOB_K8S_GOMAXPROCS", "2"))
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True, preexec_fn=_die_with_parent,
            )  # fmt: skip
        return cls(name, popen, log, port)

    def exited(self) -> bool:
        return self.popen.poll() is not None

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except FileNotFoundError:
            return ""

    def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
