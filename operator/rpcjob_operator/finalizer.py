"""Deletion of an RpcJob: its pods first, then its etcd keys (finalizer contract.FINALIZER).

kopf holds the finalizer (``settings.persistence.finalizer = contract.FINALIZER``) and calls
:func:`cleanup` from the on-delete handler until it returns:

1. delete the job's pods (uid precondition) and wait until they are gone — a terminating
   sidecar still writes its graceful-leave marker, so deleting the keys earlier would leak.
   The wait is part of every normal deletion: it happens inside the handler and is logged at
   INFO (a ``kopf.TemporaryError`` would log each retry as an ERROR);
2. delete every key under ``contract.job_prefix(ns, name)`` (all incarnations of the job name:
   no other job of this name can exist while this one holds its finalizer).

etcd unreachable: ``kopf.TemporaryError`` — kopf retries with backoff and the job stays
``Terminating``. The way out when that etcd is gone for good: annotate the job
``rpcjob.dev/skip-etcd-cleanup=true`` (the keys are left behind and logged), or remove the
finalizer by hand (docs/operator.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import kopf

from rpcjob import contract
from rpcjob.etcd import EtcdError
from rpcjob_operator import metrics
from rpcjob_operator.kube import Kube
from rpcjob_operator.members import EtcdPool, job_endpoints

log = logging.getLogger("rpcjob_operator.finalizer")
POD_WAIT_S = 1.0
ETCD_RETRY_S = 5.0


def skip_requested(obj: dict[str, Any]) -> bool:
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    value = str(annotations.get(contract.ANNOTATION_SKIP_ETCD_CLEANUP, ""))
    return value.lower() in ("true", "1", "yes")


async def delete_pods(kube: Kube, obj: dict[str, Any]) -> int:
    """Ask every pod of the job to go; the number still present (terminating included)."""
    md = obj["metadata"]
    selector = {contract.LABEL_JOB_NAME: md["name"], contract.LABEL_JOB_UID: md["uid"]}
    pods = await kube.list_pods(md["namespace"], selector)
    for p in pods:
        pmd = p["metadata"]
        if not pmd.get("deletionTimestamp") and await kube.delete_pod(
            md["namespace"], pmd["name"], pmd["uid"], None
        ):
            metrics.PODS_DELETED.labels("JobDeleted").inc()
    return len(pods)


async def delete_pods_and_wait(kube: Kube, obj: dict[str, Any], logger: Any = log) -> None:
    """Delete the job's pods and return once none is left (each change of the count is one
    INFO line: pods take their grace period to drain, that is no error)."""
    md = obj["metadata"]
    last = 0
    while left := await delete_pods(kube, obj):
        if left != last:
            logger.info(
                "waiting for %d pod(s) of %s/%s to terminate", left, md["namespace"], md["name"]
            )
            last = left
        await asyncio.sleep(POD_WAIT_S)


async def cleanup(
    kube: Kube,
    etcd: EtcdPool,
    obj: dict[str, Any],
    default_endpoints: Sequence[str],
    logger: Any = log,
) -> str:
    """Returns what was done; raises kopf.TemporaryError (etcd unreachable) to be called again."""
    md = obj["metadata"]
    ns, name = md["namespace"], md["name"]
    await delete_pods_and_wait(kube, obj, logger)
    prefix = contract.job_prefix(ns, name)
    endpoints = job_endpoints(obj, default_endpoints)
    if not endpoints:
        return f"no etcd endpoints configured: nothing to delete under {prefix}"
    if skip_requested(obj):
        msg = (
            f"etcd cleanup skipped ({contract.ANNOTATION_SKIP_ETCD_CLEANUP}): keys under "
            f"{prefix} on {', '.join(endpoints)} are left behind"
        )
        log.warning(msg)
        return msg
    try:
        n = await etcd.delete_prefix(endpoints, prefix)
    except EtcdError as e:
        metrics.ERRORS.labels("etcd").inc()
        raise kopf.TemporaryError(
            f"cannot delete the job's etcd keys under {prefix} ({e}); retrying. If this etcd "
            f"is gone for good: kubectl annotate rpj {name} -n {ns} "
            f"{contract.ANNOTATION_SKIP_ETCD_CLEANUP}=true",
            delay=ETCD_RETRY_S,
        ) from e
    return f"deleted {n} etcd key(s) under {prefix}"
