"""Labels, owner references and names shared by every rendered object."""

from __future__ import annotations

from typing import Any

from rpcjob import contract
from rpcjob_operator.spec import RpcJob


def job_labels(job: RpcJob) -> dict[str, str]:
    return {
        contract.LABEL_JOB_NAME: job.meta.name,
        contract.LABEL_JOB_UID: job.meta.uid,
        contract.LABEL_MANAGED_BY: contract.MANAGED_BY,
    }


def job_selector(job: RpcJob) -> dict[str, str]:
    """Selects the pods of this job (uid included: a recreated job never adopts old pods)."""
    return {contract.LABEL_JOB_NAME: job.meta.name, contract.LABEL_JOB_UID: job.meta.uid}


def owner_reference(job: RpcJob) -> dict[str, Any]:
    return {
        "apiVersion": contract.API_VERSION,
        "kind": contract.KIND,
        "name": job.meta.name,
        "uid": job.meta.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def service_name(job: RpcJob) -> str:
    """The headless Service (and the pods' subdomain) is named after the job."""
    return job.meta.name


def object_meta(job: RpcJob, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": job.meta.namespace,
        "labels": job_labels(job),
        "ownerReferences": [owner_reference(job)],
    }
