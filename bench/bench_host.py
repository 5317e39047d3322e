"""What the benchmarks read off this machine: a free loopback port, a process's CPU time and
memory from /proc, the load average.

Shared by the scripts in bench/, which import it by its plain name (a script's own folder is
first on ``sys.path``).
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 at the time of the call."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds (/proc/<pid>/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # the command name, in parentheses, may hold spaces: count the fields after it
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_rate(pids: list[int], window: float) -> float:
    """CPU seconds per second of ``pids`` together over ``window`` seconds."""
    before, t0 = sum(cpu_s(p) for p in pids), time.monotonic()
    time.sleep(window)  # the measurement window itself, not a synchronisation
    return (sum(cpu_s(p) for p in pids) - before) / (time.monotonic() - t0)


def rss_anon_mib(pids: list[int]) -> float:
    """Anonymous resident memory of ``pids`` together (MiB): what each process costs on top of
    the shared library pages."""
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                total += int(line.split()[1])
    return total / 1024


def rss_mb(pid: int) -> float:
    """Resident memory of one process (MB), from psutil where installed, else /proc."""
    try:
        import psutil  # type: ignore[import-untyped]

        return float(psutil.Process(pid).memory_info().rss) / 2**20
    except ImportError:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def load() -> str:
    """The load average, for progress lines (the machine may be shared)."""
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} CPUs"
