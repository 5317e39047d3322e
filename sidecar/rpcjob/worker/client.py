"""The worker's end of the pod-local gRPC API (sidecar.proto) over the sidecar's unix socket."""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc

from rpcjob import contract
from rpcjob.sidecar._pb import sidecar_pb2 as pb
from rpcjob.sidecar._pb import sidecar_pb2_grpc as pb_grpc

DEFAULT_HELLO_TIMEOUT_S = 60.0


class SidecarError(RuntimeError):
    """The sidecar answered but refused (its message says why: etcd, rank space, stopping)."""


class SidecarNotFound(SidecarError):
    """The sidecar socket does not exist or nothing answers on it."""


def resolve_socket(socket: str | None = None, wait: float | None = None) -> str:
    """The sidecar's socket path. Containers of a pod start in parallel (a native sidecar
    without a startupProbe gives no ordering), so wait up to ``wait`` seconds
    (RPCJOB_SIDECAR_WAIT, default 120) for the sidecar to create it."""
    path = socket or os.environ.get(contract.ENV_SOCKET) or contract.socket_path()
    if wait is None:
        wait = float(os.environ.get(contract.ENV_SIDECAR_WAIT, "120"))
    deadline = time.monotonic() + wait
    while not os.path.exists(path):
        if time.monotonic() >= deadline:
            raise SidecarNotFound(
                f"sidecar socket {path} not found after {wait:g}s: is the rpcjob sidecar "
                f"running in this pod? (set {contract.ENV_SOCKET}; "
                f"{contract.ENV_SIDECAR_WAIT} sets how long to wait)"
            )
        time.sleep(0.05)
    return path


class Session:
    """One incarnation's bidirectional stream: reports out, membership events in."""

    def __init__(self, stub: Any) -> None:
        self._out: queue.Queue[Any] = queue.Queue()
        self._closed = threading.Event()
        self._responses: Any = stub.Session(self._requests())

    def _requests(self) -> Iterator[Any]:
        while True:
            item = self._out.get()
            if item is None:
                return
            yield item

    def report(
        self,
        state: pb.WorkerReport.State.ValueType,
        *,
        peer: str = "",
        detail: str = "",
        metrics: dict[str, float] | None = None,
        event_id: int = 0,
        payload: bytes = b"",
    ) -> None:
        if self._closed.is_set():
            return
        self._out.put(
            pb.WorkerReport(
                state=state,
                peer=peer,
                detail=detail,
                metrics=metrics or {},
                event_id=event_id,
                payload=payload,
            )
        )

    def events(self) -> Iterator[pb.MembershipEvent]:
        """Blocks; ends when the stream ends. Raises grpc.RpcError when the sidecar is gone."""
        yield from self._responses

    def close(self) -> None:
        """Half-close: the sidecar sees the end of our reports (after any queued ones)."""
        if not self._closed.is_set():
            self._closed.set()
            self._out.put(None)


class SidecarClient:
    def __init__(self, socket: str | None = None) -> None:
        self.path = resolve_socket(socket)
        # realpath: a long socket path is a link to the short path the sidecar bound.
        self._channel = grpc.insecure_channel(f"unix://{os.path.realpath(self.path)}")
        self._stub = pb_grpc.SidecarStub(self._channel)

    def hello(self, *, fresh_rank: bool = False, timeout: float | None = None) -> pb.Identity:
        try:
            identity: pb.Identity = self._stub.Hello(
                pb.HelloRequest(pid=os.getpid(), fresh_rank=fresh_rank),
                timeout=timeout or DEFAULT_HELLO_TIMEOUT_S,
                wait_for_ready=True,
            )
        except grpc.RpcError as err:
            code = err.code() if hasattr(err, "code") else None
            details = err.details() if hasattr(err, "details") else str(err)
            if code == grpc.StatusCode.DEADLINE_EXCEEDED or (
                code == grpc.StatusCode.UNAVAILABLE and "failed to connect" in (details or "")
            ):
                raise SidecarNotFound(
                    f"the rpcjob sidecar at {self.path} did not answer Hello ({code.name}: "
                    f"{details}); check the sidecar container's log"
                ) from err
            name = code.name if code is not None else "error"
            raise SidecarError(f"the rpcjob sidecar refused Hello ({name}): {details}") from err
        return identity

    def wait_ready(self, timeout: float) -> None:
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError as err:
            raise SidecarNotFound(
                f"nothing answers on the sidecar socket {self.path} after {timeout:.0f}s: is "
                f"the rpcjob sidecar running in this pod? (set {contract.ENV_SOCKET})"
            ) from err

    def session(self) -> Session:
        return Session(self._stub)

    def close(self) -> None:
        self._channel.close()
