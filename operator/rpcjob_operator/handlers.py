"""kopf handlers: thin. They only trigger and run :class:`~rpcjob_operator.reconciler.Reconciler`.

* one daemon per RpcJob runs the reconcile loop: a cycle, then wait for a trigger, the plan's
  ``requeue_after`` or the resync period, whichever comes first (retries with backoff on
  transient failures; a 409 on the status write re-plans at once);
* ``on.event`` for RpcJobs and for pods labelled ``rpcjob.dev/job-name`` (server-side label
  selector) sets the job's trigger — a burst of pod events coalesces into one cycle, and the
  echo of our own status write is ignored;
* ``on.delete`` runs the finalizer (finalizer.py): pods, then the etcd prefix.

Settings are applied at startup from :data:`CONFIG` (main.py fills it from the command line).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import kopf

from rpcjob import contract
from rpcjob_operator import finalizer, metrics
from rpcjob_operator.kube import Conflict, Kube
from rpcjob_operator.members import EtcdPool
from rpcjob_operator.reconciler import JobGone, Reconciler
from rpcjob_operator.render import OperatorDefaults

log = logging.getLogger("rpcjob_operator.handlers")
JOB = (contract.GROUP, contract.VERSION, contract.PLURAL)
MAX_BACKOFF_S = 30.0


@dataclass
class OperatorConfig:
    """Knobs main.py sets before kopf starts (defaults = the chart's deployment)."""

    metrics_addr: str = f"0.0.0.0:{contract.OPERATOR_METRICS_PORT}"
    resync_seconds: float = 60.0
    watch_server_timeout: float = 300.0  # the API server ends a watch after this (timeoutSeconds)
    watch_client_timeout: float = 330.0  # we give up on a silent watch connection after this
    watch_connect_timeout: float = 30.0
    api_threads: int = 16
    peering_lifetime: int = 10  # seconds a silent peer counts as alive (main.py explains)


CONFIG = OperatorConfig()


class NoDiffBase(kopf.DiffBaseStorage):
    """A diff-base storage that stores nothing (the operator diffs nothing: it reconciles)."""

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


class Runtime:
    def __init__(self, config: OperatorConfig) -> None:
        self.config = config
        self.defaults = OperatorDefaults.from_env()
        self.kube = Kube(threads=config.api_threads)
        self.etcd = EtcdPool()
        self.reconciler = Reconciler(self.kube, self.etcd, self.defaults)
        self.triggers: dict[tuple[str, str], asyncio.Event] = {}

    def trigger(self, ns: str, name: str) -> None:
        event = self.triggers.get((ns, name))
        if event is not None:
            event.set()

    async def close(self) -> None:
        await self.etcd.close()
        self.kube.close()


_runtime: Runtime | None = None


def runtime() -> Runtime:
    if _runtime is None:
        raise kopf.TemporaryError("the operator is still starting", delay=1)
    return _runtime


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    global _runtime
    cfg = CONFIG
    if not settings.peering.mandatory:  # auto-detect the chart's peering by its name
        settings.peering.name = contract.DEFAULT_PEERING_NAME
    # A short lifetime (kopf's default is 60 s): a standby resumes seconds after the active
    # operator died; kopf sends keep-alives every 1-5 s at 10 s.
    settings.peering.lifetime = cfg.peering_lifetime
    # Our finalizer name: users see what it is for (kubectl get rpj -o yaml).
    settings.persistence.finalizer = contract.FINALIZER
    # kopf's bookkeeping in our annotations only: the status schema is strict (no status.kopf).
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=contract.GROUP)
    # No "last-handled-configuration": the only changing handler is on.delete, which needs no
    # diff; storing it would cost one extra PATCH (and watch event) per spec change.
    settings.persistence.diffbase_storage = NoDiffBase()
    # Events are our decisions (RecordEvent); kopf's handler chatter stays in the log.
    settings.posting.enabled = True
    settings.posting.level = logging.WARNING
    # kopf sends str(server_timeout) as the watch's timeoutSeconds, which the API server parses
    # as an integer: "300.0" is a 400 Bad Request that ends every watch (the operator crashes).
    settings.watching.server_timeout = max(1, round(cfg.watch_server_timeout))
    settings.watching.client_timeout = cfg.watch_client_timeout
    settings.watching.connect_timeout = cfg.watch_connect_timeout
    # Only our pods travel over the pod watch.
    settings.watching.label_selectors["v1", "pods"] = contract.LABEL_JOB_NAME
    metrics.serve(cfg.metrics_addr)
    _runtime = Runtime(cfg)


@kopf.on.cleanup()
async def shutdown(**_: Any) -> None:
    global _runtime
    rt, _runtime = _runtime, None
    if rt is not None:
        await rt.close()


@kopf.on.event(*JOB)
async def job_changed(
    type: str, body: kopf.Body, name: str, namespace: str | None, **_: Any
) -> None:
    rt = _runtime
    if rt is None or namespace is None:
        return
    if type == "DELETED":
        rt.reconciler.forget(namespace, name)
        return
    if not rt.reconciler.seen(namespace, name, body):
        return  # our own status write echoing back, or kopf's bookkeeping patches
    rt.trigger(namespace, name)


@kopf.on.event("v1", "pods", labels={contract.LABEL_JOB_NAME: kopf.PRESENT})
async def pod_changed(body: kopf.Body, namespace: str | None, **_: Any) -> None:
    if _runtime is not None and namespace is not None:
        _runtime.trigger(namespace, str(body.metadata.labels.get(contract.LABEL_JOB_NAME, "")))


async def _wait(trigger: asyncio.Event, stopped: kopf.DaemonStopped, timeout: float) -> None:
    waits = {asyncio.ensure_future(trigger.wait()), asyncio.ensure_future(stopped.wait())}
    try:
        await asyncio.wait(waits, timeout=max(timeout, 0.0), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


@kopf.daemon(*JOB, cancellation_timeout=10.0)
async def job_loop(name: str, namespace: str | None, stopped: kopf.DaemonStopped, **_: Any) -> None:
    rt = runtime()
    if namespace is None:
        return  # RpcJobs are namespaced
    key = (namespace, name)
    trigger = rt.triggers.setdefault(key, asyncio.Event())
    trigger.set()  # the first cycle runs at once
    backoff = 0.5
    wait = 0.0
    try:
        while not stopped:
            await _wait(trigger, stopped, wait)  # a trigger, the stop, or the cycle is due
            if stopped:
                break
            trigger.clear()
            wait = rt.config.resync_seconds
            try:
                requeue = await rt.reconciler.cycle(namespace, name)
                backoff = 0.5
                if requeue is not None:
                    wait = min(wait, requeue)
            except JobGone:
                return
            except Conflict:
                wait = 0.0  # someone wrote the job in between: plan again from a fresh read
            except kopf.TemporaryError as e:
                log.warning("%s/%s: %s", namespace, name, e)
                wait, backoff = max(float(e.delay or 0), backoff), min(backoff * 2, MAX_BACKOFF_S)
            except Exception:  # a bug must not stop the job's loop nor crash the operator
                metrics.ERRORS.labels("internal").inc()
                metrics.RECONCILES.labels("error").inc()
                log.exception(
                    "%s/%s: reconcile failed; retrying in %.1fs", namespace, name, backoff
                )
                wait, backoff = backoff, min(backoff * 2, MAX_BACKOFF_S)
    finally:
        rt.triggers.pop(key, None)


@kopf.on.delete(*JOB)
async def job_deleted(body: kopf.Body, logger: Any, **_: Any) -> None:
    rt = runtime()
    obj = dict(body)
    message = await finalizer.cleanup(rt.kube, rt.etcd, obj, rt.defaults.etcd_endpoints, logger)
    logger.info(message)
    rt.reconciler.forget(body.metadata.namespace or "", body.metadata.name or "")
