"""TCP ports for local servers (embedded etcd, test sidecars and operators), without races.

Binding port 0, reading the port and closing the socket races: until the server binds it, any
process may get the same port, because the kernel hands out that (ephemeral) range to every
``bind(0)`` and every outgoing connection. Parallel test workers and ``rpcjob run`` jobs then
collide now and then. Here a port is

1. drawn from a range *below* the kernel's ephemeral range, so no ``bind(0)`` or outgoing
   connection of any process is ever given it;
2. claimed with an exclusive ``flock`` on ``LOCK_DIR/<port>``, held by this process until
   :func:`release_port` or its exit (the kernel drops the lock however the process ends, so
   nothing goes stale), so two processes that use this module never pick the same port;
3. checked bindable on the host, for listeners outside this scheme.

The server (often a child process) then binds the port while this process holds the claim.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import socket
import threading

LOCK_DIR = "/tmp/rpcjob-ports"  # fixed, not TMPDIR: every process must see the same claims
_held: dict[int, int] = {}  # port -> fd of its lock file
_lock = threading.Lock()


def port_range(path: str = "/proc/sys/net/ipv4/ip_local_port_range") -> range:
    """Ports below the kernel's ephemeral range (above it where that leaves too few)."""
    try:
        with open(path) as f:
            low, high = (int(x) for x in f.read().split())
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default
    if low >= 12000:
        return range(max(1024, low - 12000), low)
    return range(high + 1, 65536)


def bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # as servers bind (etcd, grpc and aiohttp set SO_REUSEADDR): TIME_WAIT is no conflict
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _claim(port: int) -> int | None:
    fd = os.open(os.path.join(LOCK_DIR, str(port)), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def reserve_port(host: str = "127.0.0.1") -> int:
    """A port free on ``host`` that no other user of this module will pick while this process
    holds it (until :func:`release_port` or exit)."""
    if not os.path.isdir(LOCK_DIR):
        os.makedirs(LOCK_DIR, exist_ok=True)
        with contextlib.suppress(OSError):
            os.chmod(LOCK_DIR, 0o1777)  # shared by every user's processes, like /tmp
    ports = port_range()
    start = random.randrange(len(ports))
    with _lock:
        for i in range(len(ports)):
            port = ports[(start + i) % len(ports)]
            if port in _held:
                continue
            fd = _claim(port)
            if fd is None:
                continue
            if bindable(host, port):
                _held[port] = fd
                return port
            os.close(fd)
    raise RuntimeError(
        f"no free TCP port in {ports.start}-{ports.stop - 1} on {host}: every one is bound or "
        f"claimed (lock files in {LOCK_DIR}); stop leftover local jobs or test runs"
    )


def release_port(port: int) -> None:
    """Give a reserved port back (its server has stopped)."""
    with _lock:
        fd = _held.pop(port, None)
    if fd is not None:
        os.close(fd)
