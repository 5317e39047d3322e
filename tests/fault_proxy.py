"""A TCP proxy in front of a real etcd whose faults a test switches on.

``drop("replies")``: requests still reach etcd, its answers are swallowed (a write is applied
but the client never hears so); ``drop("requests")``: requests are swallowed before etcd sees
them. ``cut()`` then resets every connection, so the call in flight breaks the way a dying
node or a network fault breaks it, and traffic flows again on the client's next connection.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Literal, TypeVar

from etcd_waits import wait_until

Direction = Literal["replies", "requests"]
T = TypeVar("T")


class FaultProxy(contextlib.AbstractContextManager["FaultProxy"]):
    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self._target = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._dropping: Direction | None = None
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self.swallowed = 0  # bytes dropped since the last drop()
        threading.Thread(target=self._accept, daemon=True, name="fault-proxy").start()

    def drop(self, direction: Direction) -> None:
        with self._lock:
            self._dropping, self.swallowed = direction, 0

    def cut(self) -> None:
        """Reset every open connection and stop dropping."""
        with self._lock:
            socks, self._socks, self._dropping = self._socks, [], None
        for s in socks:
            _reset(s)

    def close(self) -> None:
        self.cut()
        self._listener.close()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            upstream = socket.create_connection(self._target)
            with self._lock:
                self._socks += [client, upstream]
            for src, dst, d in ((client, upstream, "requests"), (upstream, client, "replies")):
                threading.Thread(target=self._pump, args=(src, dst, d), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, direction: Direction) -> None:
        try:
            while data := src.recv(65536):
                with self._lock:
                    # A connection cut() has taken is being reset: nothing more goes through.
                    # (cut() stops dropping as it takes them, and a reply that reached this
                    # pump in between would slip through to the client before the reset.)
                    dropping = self._dropping == direction or dst not in self._socks
                    if dropping:
                        self.swallowed += len(data)
                if not dropping:
                    dst.sendall(data)
        except OSError:
            pass
        _reset(dst)


def _reset(s: socket.socket) -> None:
    """Close with a TCP reset (linger 0); shutdown first wakes a thread blocked in recv."""
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()


def cut_after(
    proxy: FaultProxy, direction: Direction, call: Callable[[], T], reached: Callable[[], bool]
) -> Future[T]:
    """Run ``call`` through ``proxy`` dropping ``direction``; once ``reached()`` holds, reset
    the connection under it. The future holds what the call returned or raised."""
    proxy.drop(direction)
    pool = ThreadPoolExecutor(1)
    fut = pool.submit(call)
    pool.shutdown(wait=False)
    wait_until(reached, 30, f"the call to reach the proxy's fault ({direction})")
    proxy.cut()
    return fut
