"""The worker-facing gRPC API (sidecar.proto) over the pod-local unix socket."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc

from rpcjob import contract

from ._pb import sidecar_pb2 as pb
from ._pb import sidecar_pb2_grpc as pb_grpc
from .daemon import Sidecar
from .incarnation import HelloError

log = logging.getLogger("rpcjob.sidecar.server")


class Servicer(pb_grpc.SidecarServicer):
    def __init__(self, sidecar: Sidecar, hello_timeout: float) -> None:
        self.incarnations = sidecar.incarnations
        self.hello_timeout = hello_timeout

    def Hello(self, request: pb.HelloRequest, context: grpc.ServicerContext) -> pb.Identity:
        try:
            inc, ident = self.incarnations.hello(
                self.hello_timeout, request.pid, request.fresh_rank
            )
        except HelloError as e:
            context.abort(getattr(grpc.StatusCode, e.code), str(e))
        except Exception as e:  # an etcd error: the worker retries Hello
            log.exception("Hello failed")
            context.abort(
                grpc.StatusCode.UNAVAILABLE, f"sidecar could not start an incarnation: {e}"
            )
        if not context.is_active():  # the worker went away while Hello waited
            self.incarnations.end(inc, "the worker left before Hello returned")
            context.abort(grpc.StatusCode.CANCELLED, "worker gone")
        # A worker that never opens its Session must not hold a rank forever.
        timer = threading.Timer(self.hello_timeout, self.incarnations.end_if_no_session, (inc,))
        timer.daemon = True
        timer.start()
        return ident

    def Session(
        self, request_iterator: Iterator[pb.WorkerReport], context: grpc.ServicerContext
    ) -> Iterator[pb.MembershipEvent]:
        inc = self.incarnations.inc
        if inc is None or inc.session_open:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "no incarnation to attach to: call Hello first (once per incarnation)",
            )
        assert inc is not None
        self.incarnations.open_session(inc)

        def read_reports() -> None:
            try:
                for report in request_iterator:
                    self.incarnations.on_report(inc, report)
            except Exception as e:  # the stream broke: the worker is gone
                log.debug("session stream error: %s", e)
            finally:
                self.incarnations.on_stream_closed(inc)

        threading.Thread(target=read_reports, daemon=True, name="rpcjob-reports").start()
        while True:
            ev = inc.events.get()
            if ev is None:
                return
            yield ev


def serve(sidecar: Sidecar, socket_path: str, hello_timeout: float) -> grpc.Server:
    path = Path(socket_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A shared emptyDir may be owned by another uid; the socket itself is 0600 either way.
    with contextlib.suppress(PermissionError):
        os.chmod(path.parent, 0o700)
    if path.exists() or path.is_symlink():
        path.unlink()
    bind = Path(contract.socket_bind_path(str(path)))
    if bind != path and (bind.exists() or bind.is_socket()):
        bind.unlink()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="rpcjob-grpc"),
        options=[("grpc.so_reuseport", 0)],
    )
    pb_grpc.add_SidecarServicer_to_server(Servicer(sidecar, hello_timeout), server)
    old = os.umask(0o177)
    try:
        if not server.add_insecure_port(f"unix:{bind}"):
            raise OSError(f"cannot listen on unix socket {bind}")
        server.start()
    finally:
        os.umask(old)
    os.chmod(bind, 0o600)
    if bind != path:
        path.symlink_to(bind)
        # The short path lives outside the pod's volume: remove it when the sidecar exits.
        atexit.register(lambda: bind.unlink(missing_ok=True))
    return server
