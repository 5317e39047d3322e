"""The socket API's messages the sidecar sends, built from its config and state (pure)."""

from __future__ import annotations

from rpcjob import contract as c
from rpcjob import devices as dv
from rpcjob.records import MemberRecord

from ._pb import sidecar_pb2 as pb
from .config import SidecarConfig


def identity(
    cfg: SidecarConfig, keys: c.JobKeys, rank: int, revision: int, plan: dv.DevicePlan
) -> pb.Identity:
    """Hello's answer: who the worker is for this incarnation and how to reach etcd."""
    return pb.Identity(
        namespace=cfg.namespace, job_name=cfg.job_name, job_uid=cfg.job_uid, role=cfg.role,
        index=cfg.index, worker_name=cfg.worker_name, rank=rank, incarnation=revision,
        etcd_endpoints=list(cfg.etcd.endpoints), store_prefix=keys.store,
        etcd_ca=cfg.etcd.ca, etcd_cert=cfg.etcd.cert, etcd_key=cfg.etcd.key,
        etcd_user=cfg.etcd.user, etcd_password=cfg.etcd.password,
        rpc_timeout=cfg.rpc_timeout, num_worker_threads=cfg.rpc_threads,
        devices=list(plan.devices),
        device_maps={n: pb.DeviceMap(map=dict(m)) for n, m in plan.device_maps.items()},
        warnings=list(plan.warnings), pod_ip=cfg.pod_ip,
    )  # fmt: skip


def member(m: MemberRecord, plan: dv.DevicePlan) -> pb.Member:
    """A peer as the worker sees it, with the reverse map it needs for that peer."""
    rev = plan.reverse_map(dv.Peer(m.name, m.node, m.clique, m.devices))
    return pb.Member(name=m.name, rank=m.rank, pod=m.pod, node=m.node, ip=m.ip,
                     devices=list(m.devices), incarnation=m.incarnation,
                     reverse_map=rev)  # fmt: skip
