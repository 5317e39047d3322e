"""One reconcile cycle in the cluster: observe, call the pure planner, apply its Plan.

observe  GET the job (fresh: never plan from a stale status, or a restart is counted twice),
         list its pods (job name + uid selector), read its members from etcd (unreachable:
         ``members=None`` and one Warning event until it is reachable again);
plan     ``plan.reconcile(obj, observed)`` — pure, never raises;
apply    1. the status write (merge patch with the read resourceVersion as precondition; none
            when the status is unchanged; a 409 means someone wrote in between: plan again);
         2. the actions in order (consecutive pod creations/deletions run concurrently);
         3. return ``requeue_after`` to the caller (the per-job daemon in handlers.py).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, assert_never, cast

import kopf

from rpcjob import contract
from rpcjob.etcd import EtcdError
from rpcjob.records import MemberRecord
from rpcjob_operator import metrics, model
from rpcjob_operator.errors import InvalidSpec
from rpcjob_operator.kube import ApiRefused, Conflict, Kube, merge_patch
from rpcjob_operator.members import EtcdPool, job_endpoints
from rpcjob_operator.plan import reconcile
from rpcjob_operator.render import (
    OperatorDefaults,
    render_network_policy,
    render_pod,
    render_service,
)
from rpcjob_operator.spec import RpcJob, parse_job
from rpcjob_operator.status import JobStatus

log = logging.getLogger("rpcjob_operator.reconciler")
EventSink = Callable[[dict[str, Any], str, str, str], None]
PARALLEL = 8  # concurrent pod creations/deletions of one cycle


def kopf_event(obj: dict[str, Any], etype: str, reason: str, message: str) -> None:
    """Post through kopf's event poster (queued, batched, never raises into the cycle)."""
    kopf.event(
        kopf.Body(cast(kopf.RawBody, obj)), type=etype, reason=reason, message=message[:1024]
    )


class JobGone(Exception):
    """The RpcJob no longer exists: its loop ends."""


@dataclass
class JobMemory:
    etcd_failing: bool = False
    written_rv: str = ""  # the resourceVersion of our own last status write
    # What the last cycle planned from and left behind: a job event that changes neither (our
    # own status write echoing back, kopf's finalizer and bookkeeping patches) needs no cycle.
    generation: int | None = None
    status: dict[str, Any] | None = None
    planned: dict[str, Any] | None = None  # the status being written by the running cycle
    read_rv: str = ""  # the resourceVersion the last cycle planned from
    refused: set[str] = field(default_factory=set)  # warnings already posted (no repeats)


class Reconciler:
    def __init__(
        self,
        kube: Kube,
        etcd: EtcdPool,
        defaults: OperatorDefaults,
        *,
        post_event: EventSink = kopf_event,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.kube = kube
        self.etcd = etcd
        self.defaults = defaults
        self.post_event = post_event
        self.now = now
        self.memory: dict[tuple[str, str], JobMemory] = {}
        self.states = metrics.JobStates()

    def mem(self, ns: str, name: str) -> JobMemory:
        return self.memory.setdefault((ns, name), JobMemory())

    def seen(self, ns: str, name: str, body: Any) -> bool:
        """Record a watch event of the job; whether it carries anything the last cycle did not
        plan from (our own status write echoing back, kopf's finalizer and bookkeeping patches
        do not)."""
        mem = self.mem(ns, name)
        if mem.status is None:
            return True
        md = body.get("metadata") or {}
        if md.get("deletionTimestamp"):
            return True
        rv = str(md.get("resourceVersion", ""))
        if rv == mem.written_rv or _not_after(rv, mem.read_rv):
            return False  # already planned from this version (or a later one)
        status = body.get("status") or {}
        return bool(
            md.get("generation") != mem.generation
            or (status != mem.status and status != mem.planned)
        )

    def forget(self, ns: str, name: str) -> None:
        self.memory.pop((ns, name), None)
        self.states.set((ns, name), None)

    # --- observe ------------------------------------------------------------------------------
    async def _members(
        self, obj: dict[str, Any], job: RpcJob | None
    ) -> tuple[MemberRecord, ...] | None:
        if job is None or job.meta.deletion_timestamp is not None:
            return None
        meta = job.meta
        mem = self.mem(meta.namespace, meta.name)
        endpoints = job_endpoints(obj, self.defaults.etcd_endpoints)
        if not endpoints:
            return None  # nowhere to read from; the pods' sidecars report the same problem
        keys = contract.JobKeys(meta.namespace, meta.name, meta.uid)
        try:
            members = await self.etcd.read_members(endpoints, keys)
        except EtcdError as e:
            metrics.ERRORS.labels("etcd").inc()
            if not mem.etcd_failing:
                mem.etcd_failing = True
                self.post_event(
                    obj,
                    "Warning",
                    "EtcdUnreachable",
                    f"cannot read the job's members from etcd ({', '.join(endpoints)}): {e}; "
                    "status counts joined workers from pod readiness until etcd answers",
                )
            return None
        if mem.etcd_failing:
            mem.etcd_failing = False
            self.post_event(obj, "Normal", "EtcdReachable", "etcd answers again")
        return members

    async def observe(self, obj: dict[str, Any]) -> tuple[model.Observed, RpcJob | None]:
        md = obj["metadata"]
        try:
            job: RpcJob | None = parse_job(obj)
        except InvalidSpec:
            job = None
        selector = {contract.LABEL_JOB_NAME: md["name"], contract.LABEL_JOB_UID: md["uid"]}
        raw_pods, members = await asyncio.gather(
            self.kube.list_pods(md["namespace"], selector), self._members(obj, job)
        )
        pods = []
        for p in raw_pods:
            try:
                pods.append(model.PodView.from_pod(p))
            except (ValueError, TypeError):  # a pod whose rpcjob labels were edited by hand
                log.warning("ignoring pod %s: bad rpcjob labels", p["metadata"].get("name"))
        observed = model.Observed(
            pods=tuple(pods),
            members=members,
            status=JobStatus.from_dict(obj.get("status")),
            now=self.now(),
        )
        return observed, job

    # --- one cycle ----------------------------------------------------------------------------
    async def cycle(self, ns: str, name: str) -> float | None:
        """Run one cycle; the seconds until the next one is due (None: only on events).

        Raises kopf.TemporaryError on transient API/etcd failures and Conflict on a stale
        status write (the caller retries both)."""
        started = time.monotonic()
        try:
            mem = self.mem(ns, name)
            # A fresh read, never the watch's copy: planning from a stale status would count
            # a restart twice (the resourceVersion precondition of the write catches the rest).
            obj = await self.kube.get_job(ns, name)
            if obj is None:
                self.forget(ns, name)
                raise JobGone(f"{ns}/{name}")
            mem.generation, mem.status = obj["metadata"].get("generation"), obj.get("status") or {}
            mem.read_rv = str(obj["metadata"].get("resourceVersion", ""))
            observed, job = await self.observe(obj)
            plan = reconcile(obj, observed)
            status = plan.status.to_dict()  # the one serialisation of the cycle's status
            mem.planned = status
            await self._write_status(obj, status)
            await self._apply(obj, job, plan.actions)
        except JobGone:
            raise
        except Conflict:
            metrics.RECONCILES.labels("conflict").inc()
            raise
        except kopf.TemporaryError:
            metrics.RECONCILES.labels("error").inc()
            metrics.ERRORS.labels("api").inc()
            raise
        finally:
            metrics.DURATION.observe(time.monotonic() - started)
        metrics.RECONCILES.labels("ok").inc()
        self.states.set((ns, name), plan.status.state or "Pending")
        mem.generation, mem.status = obj["metadata"].get("generation"), status
        return plan.requeue_after

    async def _write_status(self, obj: dict[str, Any], status: dict[str, Any]) -> None:
        old = obj.get("status") or {}
        if status == old:
            return
        md = obj["metadata"]
        written = await self.kube.patch_job_status(
            md["namespace"], md["name"], md["resourceVersion"], merge_patch(old, status)
        )
        metrics.STATUS_WRITES.inc()
        mem = self.mem(md["namespace"], md["name"])
        mem.written_rv = str((written.get("metadata") or {}).get("resourceVersion", ""))

    async def _apply(
        self, obj: dict[str, Any], job: RpcJob | None, actions: Sequence[model.Action]
    ) -> None:
        for kind, group in itertools.groupby(actions, type):
            if kind in (model.CreatePod, model.DeletePod):  # consecutive ones run at once
                await _bounded([self._one(obj, job, a) for a in group])
            else:
                for action in group:
                    await self._one(obj, job, action)

    async def _one(self, obj: dict[str, Any], job: RpcJob | None, action: model.Action) -> None:
        md = obj["metadata"]
        ns = md["namespace"]
        try:
            match action:
                case model.RecordEvent():
                    self.post_event(obj, action.type, action.reason, action.message)
                case model.CreatePod():
                    assert job is not None, "the planner creates pods only for a valid spec"
                    pod = render_pod(job, action.slot, defaults=self.defaults)
                    if await self.kube.create(pod):
                        metrics.PODS_CREATED.inc()
                case model.DeletePod():
                    if await self.kube.delete_pod(
                        ns, action.name, action.uid, action.grace_seconds
                    ):
                        metrics.PODS_DELETED.labels(action.reason).inc()
                case model.EnsureService():
                    assert job is not None
                    await self.kube.create_or_patch(render_service(job))
                case model.EnsureNetworkPolicy():
                    assert job is not None
                    policy = render_network_policy(job, defaults=self.defaults)
                    await self.kube.create_or_patch(policy)
                case model.DeleteJob():
                    await self.kube.delete_job(ns, md["name"], md["uid"])
                case _:
                    assert_never(action)
        except Conflict:
            raise kopf.TemporaryError(
                f"{type(action).__name__}: conflict, retrying", delay=1
            ) from None
        except ApiRefused as e:
            # The API server refuses what the spec asks for (e.g. a pod template it rejects):
            # a user error — a Warning event once, then keep retrying slowly; never crash.
            metrics.ERRORS.labels("refused").inc()
            mem = self.mem(ns, md["name"])
            if e.message not in mem.refused:
                mem.refused.add(e.message)
                self.post_event(
                    obj, "Warning", f"{type(action).__name__}Failed", f"the API refused: {e}"
                )
            raise kopf.TemporaryError(f"{type(action).__name__} refused: {e}", delay=10) from e


def _not_after(rv: str, other: str) -> bool:
    """rv <= other, for resourceVersions that are numbers (etcd revisions in practice);
    False when either is not (then the event is compared by content)."""
    try:
        return int(rv) <= int(other)
    except ValueError:
        return False


async def _bounded(aws: list[Awaitable[None]]) -> None:
    sem = asyncio.Semaphore(PARALLEL)

    async def run(a: Awaitable[None]) -> None:
        async with sem:
            await a

    results = await asyncio.gather(*(run(a) for a in aws), return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r
