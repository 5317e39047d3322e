"""Readiness / liveness probes of the process kubelet: httpGet, tcpSocket, exec."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any


def _port(probe_port: Any, container: dict[str, Any]) -> int:
    if isinstance(probe_port, int):
        return probe_port
    if str(probe_port).isdigit():
        return int(probe_port)
    for p in container.get("ports") or []:
        if p.get("name") == probe_port:
            return int(p["containerPort"])
    raise ValueError(
        f"probe port {probe_port!r} names no port of container {container.get('name')!r}"
    )


def run_probe(
    probe: dict[str, Any],
    container: dict[str, Any],
    pod_ip: str,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
) -> tuple[bool, str]:
    """(passed, why it failed) of one probe run."""
    timeout = float(probe.get("timeoutSeconds", 1))
    try:
        if "httpGet" in probe:
            hg = probe["httpGet"]
            host = hg.get("host") or pod_ip
            scheme = hg.get("scheme", "HTTP").lower()
            url = f"{scheme}://{host}:{_port(hg['port'], container)}{hg.get('path', '/')}"
            req = urllib.request.Request(
                url, headers={h["name"]: h["value"] for h in hg.get("httpHeaders") or []}
            )
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return bool(200 <= resp.status < 400), f"GET {url}: HTTP {resp.status}"
        if "tcpSocket" in probe:
            ts = probe["tcpSocket"]
            with socket.create_connection(
                (ts.get("host") or pod_ip, _port(ts["port"], container)), timeout=timeout
            ):
                return True, ""
        if "exec" in probe:
            r = subprocess.run(
                probe["exec"]["command"],
                env=env,
                cwd=cwd,
                timeout=timeout,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
            )
            return r.returncode == 0, f"exec {probe['exec']['command']}: exit {r.returncode}"
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout:g}s"
    except urllib.error.HTTPError as e:
        return False, f"HTTP {e.code} {e.reason}"
    except (OSError, ValueError) as e:  # URLError is an OSError
        reason = getattr(e, "reason", e)
        if isinstance(reason, TimeoutError):
            return False, f"timed out after {timeout:g}s"
        return False, str(reason)
    return True, ""  # no handler: like a probe that cannot fail


@dataclass
class ProbeState:
    """Thresholds and timing of one probe on one container incarnation."""

    probe: dict[str, Any]
    started: float = field(default_factory=time.monotonic)
    next_at: float = 0.0
    successes: int = 0
    failures: int = 0
    ok: bool = False
    last_error: str = ""

    def __post_init__(self) -> None:
        self.next_at = self.started + float(self.probe.get("initialDelaySeconds", 0))

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def record(self, result: tuple[bool, str], now: float) -> None:
        success, why = result
        self.next_at = now + float(self.probe.get("periodSeconds", 10))
        if success:
            self.successes += 1
            self.failures = 0
            if self.successes >= int(self.probe.get("successThreshold", 1)):
                self.ok = True
        else:
            self.last_error = why
            self.failures += 1
            self.successes = 0
            if self.failures >= int(self.probe.get("failureThreshold", 3)):
                self.ok = False

    @property
    def failed(self) -> bool:
        """Liveness: failureThreshold consecutive failures."""
        return self.failures >= int(self.probe.get("failureThreshold", 3))
