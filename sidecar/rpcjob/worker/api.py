"""The user API: ``rpcjob.init_rpc()``, ``rpcjob.shutdown()``, ``rpcjob.on_drain(cb)``.

``init_rpc`` asks the pod's sidecar who this worker is, initialises CUDA on its devices, builds
the EtcdStore and joins torch's dynamic RPC group (``world_size=None``) with device maps
declared for every slot the job can have. Afterwards a background thread applies the
sidecar's membership events (evictions of crashed peers, device re-application after joins and
leaves). A failed join is cleaned up and retried with a fresh rank. SIGTERM (or the sidecar's
DRAIN) runs the drain callbacks, leaves gracefully and exits 0.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rpcjob import contract
from rpcjob.sidecar._pb import sidecar_pb2 as pb
from rpcjob.worker.client import Session, SidecarClient, SidecarError, SidecarNotFound
from rpcjob.worker.events import MembershipApplier, fatal

__all__ = ["JoinFailed", "SidecarError", "SidecarNotFound", "init_rpc", "on_drain", "shutdown"]

log = logging.getLogger("rpcjob.worker")
R = pb.WorkerReport
DEFAULT_JOIN_ATTEMPTS = 10
DEFAULT_METRICS_INTERVAL_S = 10.0
EXIT_LOST_SIDECAR = 1
EXIT_EVICTED = 1


class JoinFailed(RuntimeError):
    """Every join attempt failed."""


class _Worker:
    """Process-wide state of the one incarnation that is joined now."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.drain_callbacks: list[Callable[[], None]] = []
        self.client: SidecarClient | None = None
        self.session: Session | None = None
        self.applier: MembershipApplier | None = None
        self.joined = False
        self.leaving = False
        self.stop = threading.Event()


_w = _Worker()
# Seconds spent in each phase of the last successful join (logged; read by bench/).
join_timings: dict[str, float] = {}


def on_drain(callback: Callable[[], None]) -> Callable[[], None]:
    """Run ``callback`` before the graceful leave on SIGTERM or the sidecar's DRAIN.

    Callbacks run in registration order on a background thread, while this worker is still
    a member (RPCs to peers work). Usable as a decorator.
    """
    _w.drain_callbacks.append(callback)
    return callback


def init_rpc(
    *,
    socket: str | None = None,
    timeout: float | None = None,
    join_attempts: int = DEFAULT_JOIN_ATTEMPTS,
    metrics_interval: float = DEFAULT_METRICS_INTERVAL_S,
    install_sigterm: bool = True,
    **rpc_options_overrides: Any,
) -> Any:
    """Join the job's RPC group; returns the sidecar's Identity (``.worker_name``, ``.rank``).

    ``timeout`` bounds each Hello to the sidecar (default 60 s: it may still be starting).
    ``rpc_options_overrides`` go to ``TensorPipeRpcBackendOptions`` (e.g. ``_transports``) and
    win over ``spec.rpc.transport`` (env ``RPCJOB_RPC_TRANSPORT``).
    """
    from rpcjob.worker import join as J

    with _w.lock:
        if _w.joined:
            raise RuntimeError("rpcjob.init_rpc() was already called in this process")
        client = SidecarClient(socket)
        _w.client = client
        # the pod's env (spec.rpc.transport), not the Identity: the sidecar does not need it
        transport = os.environ.get(contract.ENV_RPC_TRANSPORT, "") or contract.DEFAULT_RPC_TRANSPORT
        J.transport_options(transport, ())  # a bad value fails here, before any Hello
        errors: list[str] = []
        for attempt in range(max(1, join_attempts)):
            result = _join_attempt(client, attempt, timeout, transport, rpc_options_overrides)
            if isinstance(result, _Joined):
                _complete_join(result, metrics_interval, install_sigterm)
                return result.identity
            errors.append(f"attempt {attempt + 1} (rank {result.rank}): {result.cause}")
            if isinstance(result.error, ValueError | TypeError):
                break  # bad options: retrying cannot help
            time.sleep(min(2.0, 0.2 * 2**attempt))  # backoff while a dead peer is evicted
        raise JoinFailed(
            f"could not join the RPC group after {len(errors)} attempt(s): "
            + "; ".join(errors)
            + " — check that every member's sidecar is running and etcd is reachable"
        )


@dataclass(frozen=True)
class _Joined:
    """One attempt joined torch's group."""

    identity: pb.Identity
    session: Session


@dataclass(frozen=True)
class _Failed:
    """One attempt failed; the sidecar was told (JOIN_FAILED) and the session closed."""

    rank: int
    error: Exception
    cause: str


def _join_attempt(
    client: SidecarClient,
    attempt: int,
    timeout: float | None,
    transport: str,
    overrides: dict[str, Any],
) -> _Joined | _Failed:
    """Hello (a fresh rank after the first attempt), set up devices and store, join torch."""
    from rpcjob.worker import join as J

    t_hello = time.monotonic()
    identity = client.hello(fresh_rank=attempt > 0, timeout=timeout)
    t_store = time.monotonic()
    store = _prepare_member(identity)
    session = client.session()
    session.report(R.JOINING, detail=f"rank={identity.rank} attempt={attempt + 1}")
    spec = J.JoinSpec(
        name=identity.worker_name,
        rank=identity.rank,
        rpc_timeout=identity.rpc_timeout or contract.DEFAULT_RPC_TIMEOUT,
        num_worker_threads=identity.num_worker_threads or contract.DEFAULT_RPC_THREADS,
        devices=list(identity.devices),
        device_maps={k: dict(v.map) for k, v in identity.device_maps.items()},
        transport=transport,
        overrides=overrides,
    )
    t_join = time.monotonic()
    try:
        J.join(spec, store)
    except Exception as err:  # torch raises RuntimeError/DistStoreError/ValueError
        cause = _root_cause(err)
        # The token and our half-registered keys stay as they are: the sidecar ends
        # this incarnation, and its cleaner takes the token over and broadcasts EVICT
        # for our (name, rank) (a survivor torch already told about us must drop it,
        # or it keeps our stale address when we rejoin under the same name).
        session.report(R.JOIN_FAILED, detail=cause[:2000])
        session.close()
        return _Failed(rank=identity.rank, error=err, cause=cause)
    t_done = time.monotonic()
    join_timings.clear()
    join_timings.update(hello=t_store - t_hello, setup=t_join - t_store, torch_join=t_done - t_join)
    log.info(
        "rpcjob: %s joined with rank %d (hello %.3fs, store %.3fs, torch join %.3fs)",
        identity.worker_name, identity.rank, *join_timings.values(),
    )  # fmt: skip
    return _Joined(identity=identity, session=session)


def _prepare_member(identity: pb.Identity) -> Any:
    """Check the Identity, initialise CUDA and torch's guards; the guarded store to join with."""
    from rpcjob.devices import agent as dagent
    from rpcjob.worker import join as J
    from rpcjob.worker.guard_store import GuardStore

    contract.validate_worker_name(identity.worker_name)
    for warning in identity.warnings:
        log.warning("rpcjob sidecar: %s", warning)
    J.init_cuda(list(identity.devices))
    # every member installs them: they fix torch's join/leave device bookkeeping
    dagent.install_membership_guards(list(identity.devices))
    return GuardStore(_build_store(identity), identity.worker_name, identity.rank)


def _complete_join(joined: _Joined, metrics_interval: float, install_sigterm: bool) -> None:
    """Record the incarnation, tell the sidecar, start the background threads and hooks."""
    identity, session = joined.identity, joined.session
    _w.session, _w.joined = session, True
    session.report(R.JOINED, detail=f"rank={identity.rank}")
    _start_background(identity, session, metrics_interval)
    if install_sigterm and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda _signum, _frame: _start_drain())
    sys.excepthook = _excepthook
    atexit.register(_atexit_leave)


def shutdown(graceful: bool = True) -> None:
    """Leave the group: LEAVING → ``rpc.shutdown()`` → LEFT (graceful), or a local stop
    that the sidecar treats as a crash (``graceful=False``: peers evict this worker)."""
    import torch.distributed.rpc as rpc

    from rpcjob.worker import join as J

    with _w.lock:
        if not _w.joined or _w.leaving:
            return
        _w.leaving = True
        session = _w.session
        assert session is not None
        if _w.applier is not None:
            with _w.applier.lock:
                _w.applier.stopped = True
        _w.stop.set()
        try:
            if not graceful:
                rpc.shutdown(graceful=False)
                return
            session.report(R.LEAVING)
            # If a peer died and is not evicted yet, this raises: the stream closes without
            # LEFT, so the sidecar treats it as a crash (its cleaner takes over our token).
            J.leave()  # torch's graceful leave, members told at once
            session.report(R.LEFT)
        finally:
            session.close()
            _w.joined = False


def _drain_and_exit() -> None:
    with _w.lock:
        if _w.leaving or not _w.joined:
            return
        for cb in list(_w.drain_callbacks):
            try:
                cb()
            except Exception:
                log.exception("rpcjob: drain callback %r failed", cb)
        code = 0
        try:
            shutdown(graceful=True)
        except Exception as err:
            fatal(f"graceful leave failed during drain: {err}")
            code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


_drain_thread: threading.Thread | None = None


def _start_drain() -> None:
    global _drain_thread
    if _drain_thread is None:
        _drain_thread = threading.Thread(target=_drain_and_exit, name="rpcjob-drain", daemon=True)
        _drain_thread.start()


def _excepthook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
    # While draining, the application's own RPCs fail because the group is being left: that is
    # the drain, not a crash. Let the drain finish (it exits 0) instead of dying with a trace.
    if _drain_thread is not None and _drain_thread.is_alive():
        _drain_thread.join()
    _previous_excepthook(exc_type, exc, tb)


_previous_excepthook = sys.excepthook


def _atexit_leave() -> None:
    if _w.joined and not _w.leaving:
        try:
            shutdown(graceful=True)
        except Exception as err:
            fatal(f"graceful leave at exit failed: {err}")


def _on_self_evicted() -> None:
    fatal(
        "this worker was evicted from the RPC group (its sidecar lost the membership lease); "
        "exiting so that the pod restarts it as a new incarnation"
    )
    os._exit(EXIT_EVICTED)


def _start_background(identity: pb.Identity, session: Session, metrics_interval: float) -> None:
    def ack(peer: str, event_id: int) -> None:
        session.report(R.EVICTED, peer=peer, event_id=event_id)

    from rpcjob.devices import agent
    from rpcjob.worker import introspect

    introspect.calls.install()
    applier = MembershipApplier(
        me=(identity.worker_name, identity.rank),
        devices=list(identity.devices),
        ops=agent,
        ack=ack,
        on_drain=_start_drain,
        on_self_evicted=_on_self_evicted,
    )
    _w.applier = applier

    def reply(event_id: int, payload: bytes) -> None:
        session.report(R.INTROSPECTION, event_id=event_id, payload=payload)

    def events() -> None:
        try:
            for ev in session.events():
                if ev.kind == pb.MembershipEvent.INTROSPECT:  # docs/observability.md
                    introspect.answer(ev.id, ev.request, reply)
                    continue
                try:
                    applier.apply(ev)
                except Exception:
                    log.exception("rpcjob: applying membership event %s failed", ev.kind)
        except Exception as err:
            if _w.stop.is_set():
                return
            fatal(f"lost the rpcjob sidecar (Session stream broke: {_short(err)}); exiting")
            os._exit(EXIT_LOST_SIDECAR)
        if not _w.stop.is_set():
            fatal("the rpcjob sidecar ended the Session stream; exiting")
            os._exit(EXIT_LOST_SIDECAR)

    def metrics() -> None:
        while not _w.stop.wait(metrics_interval):
            try:
                session.report(R.METRICS, metrics=agent.metrics())
            except Exception:
                return  # the agent is shutting down

    threading.Thread(target=events, name="rpcjob-events", daemon=True).start()
    threading.Thread(target=metrics, name="rpcjob-metrics", daemon=True).start()


def _build_store(identity: pb.Identity) -> Any:
    from datetime import timedelta

    from rpcjob.store import EtcdStore  # type: ignore[import-not-found,unused-ignore]

    return EtcdStore(
        list(identity.etcd_endpoints),
        prefix=identity.store_prefix,
        timeout=timedelta(seconds=identity.rpc_timeout or contract.DEFAULT_RPC_TIMEOUT),
        ca=identity.etcd_ca or None,
        cert=identity.etcd_cert or None,
        key=identity.etcd_key or None,
        user=identity.etcd_user or None,
        password=identity.etcd_password or None,
    )


def _root_cause(err: BaseException) -> str:
    # torch's join error path raises from rpc.shutdown(); the real cause is the context
    seen = err
    while seen.__context__ is not None and type(seen).__name__ == "TokenSelfWait":
        seen = seen.__context__
    return _short(seen)


def _short(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}"
    return text if len(text) < 600 else text[:600] + "…"
