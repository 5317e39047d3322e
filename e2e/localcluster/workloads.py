"""Optional kube-controller-manager stand-ins: Deployment -> ReplicaSet -> Pods, and Service
cluster IPs (``LocalCluster(workloads=True)``).

Enough for ``helm install --wait`` and ``kubectl rollout status`` to behave as on a real cluster:
a Deployment owns one ReplicaSet per pod template (``pod-template-hash``), the ReplicaSet keeps
``spec.replicas`` active pods (re-creating deleted or finished ones), and both report the status
fields those clients read (observedGeneration, replicas, updated/ready/availableReplicas,
Available/Progressing). ``Recreate`` starts the new template's pods only after the old pods are
gone; ``RollingUpdate`` is simplified to "old ReplicaSets scale to 0 at once". Not modelled:
minReadySeconds, maxSurge/maxUnavailable, progress deadlines, revision history limits, pausing.

Off by default: the e2e local backend plays the operator Deployment's ReplicaSet itself.
Runs synchronously inside the store's commit like the other controllers (controllers.py); a
queue keeps it from re-entering itself when its own writes come back as events.
"""

from __future__ import annotations

import copy
import hashlib
import ipaddress
import json
import logging
from typing import Any

from .errors import ApiError
from .store import Event, Obj, Store, now_iso

log = logging.getLogger(__name__)

DEPLOYMENTS = ("apps", "deployments")
REPLICASETS = ("apps", "replicasets")
PODS = ("", "pods")
SERVICES = ("", "services")
HASH_LABEL = "pod-template-hash"
SERVICE_CIDR = ipaddress.ip_network("10.96.0.0/16")

Key = tuple[tuple[str, str], str, str]  # (storage, namespace, name)


def template_hash(template: Obj) -> str:
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


def controller_of(obj: Obj) -> dict[str, Any] | None:
    refs = obj["metadata"].get("ownerReferences") or []
    return next((r for r in refs if r.get("controller")), None)


def owner_ref(owner: Obj, api_version: str, kind: str) -> dict[str, Any]:
    meta = owner["metadata"]
    return {"apiVersion": api_version, "kind": kind, "name": meta["name"], "uid": meta["uid"],
            "controller": True, "blockOwnerDeletion": True}  # fmt: skip


def is_active(pod: Obj) -> bool:
    phase = (pod.get("status") or {}).get("phase")
    return not pod["metadata"].get("deletionTimestamp") and phase not in ("Succeeded", "Failed")


def is_ready(pod: Obj) -> bool:
    conds = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)


def condition(old: list[dict[str, Any]], ctype: str, ok: bool, reason: str, msg: str) -> Obj:
    """A condition that keeps its old timestamps while unchanged (no write loops)."""
    status = "True" if ok else "False"
    prev = next((c for c in old if c.get("type") == ctype), None)
    if prev and prev.get("status") == status and prev.get("reason") == reason:
        return dict(prev, message=msg)
    ts = now_iso()
    return {"type": ctype, "status": status, "reason": reason, "message": msg,
            "lastTransitionTime": ts, "lastUpdateTime": ts}  # fmt: skip


class WorkloadControllers:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._queue: dict[Key, None] = {}  # ordered set
        self._running = False
        store.hooks.append(self.on_event)

    def _rt(self, storage: tuple[str, str]) -> Any:
        rt = self.store.rt_for_storage(storage)
        assert rt is not None, storage
        return rt

    def _owned(self, storage: tuple[str, str], ns: str, uid: str) -> list[Obj]:
        bucket = self.store.objects.get(storage, {})
        return [o for (ons, _), o in sorted(bucket.items())
                if ons == ns and (controller_of(o) or {}).get("uid") == uid]  # fmt: skip

    # --- event intake -------------------------------------------------------------------
    def on_event(self, ev: Event) -> None:
        if ev.type == "BOOKMARK":
            return
        meta = ev.obj["metadata"]
        ns = meta.get("namespace", "")
        if ev.storage == SERVICES and ev.type == "ADDED":
            self._allocate_cluster_ip(ns, meta["name"])
        elif ev.storage in (DEPLOYMENTS, REPLICASETS) and ev.type != "DELETED":
            self._queue[(ev.storage, ns, meta["name"])] = None
        if ev.storage in (REPLICASETS, PODS):
            ref = controller_of(ev.obj)
            owner_kind = "Deployment" if ev.storage == REPLICASETS else "ReplicaSet"
            if ref and ref.get("kind") == owner_kind:
                owner = DEPLOYMENTS if ev.storage == REPLICASETS else REPLICASETS
                self._queue[(owner, ns, ref["name"])] = None
        if self._running:
            return  # our own write: the outer loop picks the key up
        self._running = True
        try:
            while self._queue:
                key = next(iter(self._queue))
                del self._queue[key]
                storage, ns, name = key
                try:
                    if storage == DEPLOYMENTS:
                        self._deployment(ns, name)
                    else:
                        self._replicaset(ns, name)
                except ApiError as exc:  # e.g. its namespace is terminating: not the writer's
                    log.debug("%s %s/%s: %s", storage[1], ns, name, exc)
        finally:
            self._running = False

    # --- Deployment ---------------------------------------------------------------------
    def _deployment(self, ns: str, name: str) -> None:
        dep_rt, rs_rt = self._rt(DEPLOYMENTS), self._rt(REPLICASETS)
        dep = self.store.raw(dep_rt, ns, name)
        if dep is None or dep["metadata"].get("deletionTimestamp"):
            return
        spec = dep["spec"]
        desired = int(spec.get("replicas", 1))
        thash = template_hash(spec["template"])
        owned = self._owned(REPLICASETS, ns, dep["metadata"]["uid"])
        new = next((rs for rs in owned if rs["metadata"]["labels"].get(HASH_LABEL) == thash), None)
        old = [rs for rs in owned if rs is not new]
        if new is None:
            new = self.store.create(rs_rt, ns, self._replicaset_for(dep, thash, len(owned) + 1))
        recreate = (spec.get("strategy") or {}).get("type") == "Recreate"
        old_pods = [p for rs in old for p in self._owned(PODS, ns, rs["metadata"]["uid"])]
        for rs in old:
            self._scale(rs, 0)
        self._scale(new, 0 if recreate and old_pods else desired)
        self._deployment_status(dep, desired, new["metadata"]["name"])

    def _replicaset_for(self, dep: Obj, thash: str, revision: int) -> Obj:
        template = copy.deepcopy(dep["spec"]["template"])
        labels = {**(template.get("metadata") or {}).get("labels", {}), HASH_LABEL: thash}
        template.setdefault("metadata", {})["labels"] = labels
        selector = copy.deepcopy(dep["spec"].get("selector") or {})
        selector.setdefault("matchLabels", {})[HASH_LABEL] = thash
        return {
            "metadata": {
                "name": f"{dep['metadata']['name']}-{thash}",
                "labels": labels,
                "annotations": {"deployment.kubernetes.io/revision": str(revision)},
                "ownerReferences": [owner_ref(dep, "apps/v1", "Deployment")],
            },
            "spec": {"replicas": 0, "selector": selector, "template": template},
        }

    def _scale(self, rs: Obj, replicas: int) -> None:
        if rs["spec"].get("replicas", 1) != replicas:
            meta = rs["metadata"]
            self.store.mutate(self._rt(REPLICASETS), meta["namespace"], meta["name"],
                              lambda o: o["spec"].__setitem__("replicas", replicas))  # fmt: skip

    def _deployment_status(self, dep: Obj, desired: int, new_name: str) -> None:
        meta = dep["metadata"]
        sets = self._owned(REPLICASETS, meta["namespace"], meta["uid"])
        st = [rs.get("status") or {} for rs in sets]
        new_st = next((rs.get("status") or {} for rs in sets
                       if rs["metadata"]["name"] == new_name), {})  # fmt: skip
        available = sum(s.get("availableReplicas", 0) for s in st)
        replicas = sum(s.get("replicas", 0) for s in st)
        updated = new_st.get("replicas", 0)
        done = updated == desired and replicas == desired and available >= desired
        conds = (dep.get("status") or {}).get("conditions") or []
        status: Obj = {
            "observedGeneration": meta.get("generation", 1),
            "replicas": replicas,
            "updatedReplicas": updated,
            "readyReplicas": sum(s.get("readyReplicas", 0) for s in st),
            "availableReplicas": available,
            "unavailableReplicas": max(desired - available, 0),
            "conditions": [
                condition(conds, "Available", available >= desired,
                          "MinimumReplicasAvailable" if available >= desired
                          else "MinimumReplicasUnavailable",
                          "Deployment has minimum availability." if available >= desired
                          else "Deployment does not have minimum availability."),
                condition(conds, "Progressing", True,
                          "NewReplicaSetAvailable" if done else "ReplicaSetUpdated",
                          f'ReplicaSet "{new_name}" '
                          + ("has successfully progressed." if done else "is progressing.")),
            ],
        }  # fmt: skip
        status = {k: v for k, v in status.items() if v != 0 or k == "observedGeneration"}
        if dep.get("status") != status:
            self.store.mutate(self._rt(DEPLOYMENTS), meta["namespace"], meta["name"],
                              lambda o: o.__setitem__("status", status), "status")  # fmt: skip

    # --- ReplicaSet ---------------------------------------------------------------------
    def _replicaset(self, ns: str, name: str) -> None:
        rs_rt, pod_rt = self._rt(REPLICASETS), self._rt(PODS)
        rs = self.store.raw(rs_rt, ns, name)
        if rs is None or rs["metadata"].get("deletionTimestamp"):
            return
        desired = int(rs["spec"].get("replicas", 1))
        pods = [p for p in self._owned(PODS, ns, rs["metadata"]["uid"]) if is_active(p)]
        template = rs["spec"]["template"]
        tmeta = template.get("metadata") or {}
        for _ in range(desired - len(pods)):
            self.store.create(pod_rt, ns, {
                "metadata": {
                    "generateName": f"{name}-",
                    "labels": copy.deepcopy(tmeta.get("labels") or {}),
                    "annotations": copy.deepcopy(tmeta.get("annotations") or {}),
                    "ownerReferences": [owner_ref(rs, "apps/v1", "ReplicaSet")],
                },
                "spec": copy.deepcopy(template["spec"]),
            })  # fmt: skip
        # Scale down: not-ready pods first, then the newest (as the ReplicaSet controller ranks).
        extra = sorted(pods, key=lambda p: (is_ready(p), p["metadata"]["creationTimestamp"]))
        for pod in extra[: max(len(pods) - desired, 0)]:
            self.store.delete(pod_rt, ns, pod["metadata"]["name"])
        pods = [p for p in self._owned(PODS, ns, rs["metadata"]["uid"]) if is_active(p)]
        ready = sum(1 for p in pods if is_ready(p))
        status = {"replicas": len(pods), "fullyLabeledReplicas": len(pods),
                  "readyReplicas": ready, "availableReplicas": ready,
                  "observedGeneration": rs["metadata"].get("generation", 1)}  # fmt: skip
        status = {k: v for k, v in status.items() if v != 0 or k == "replicas"}
        if rs.get("status") != status:
            self.store.mutate(rs_rt, ns, name, lambda o: o.__setitem__("status", status), "status")
        ref = controller_of(rs)
        if ref and ref.get("kind") == "Deployment":  # pods gone may unblock a Recreate rollout
            self._queue[(DEPLOYMENTS, ns, ref["name"])] = None

    # --- Services -----------------------------------------------------------------------
    def _allocate_cluster_ip(self, ns: str, name: str) -> None:
        svc_rt = self._rt(SERVICES)
        svc = self.store.raw(svc_rt, ns, name)
        spec = (svc or {}).get("spec") or {}
        if svc is None or spec.get("clusterIP") or spec.get("type") == "ExternalName":
            return
        used = {o.get("spec", {}).get("clusterIP")
                for o in self.store.objects.get(SERVICES, {}).values()}  # fmt: skip
        ip = next(str(a) for a in SERVICE_CIDR.hosts() if a.packed[-1] >= 10 and str(a) not in used)

        def assign(o: Obj) -> None:
            o["spec"]["clusterIP"] = ip
            o["spec"]["clusterIPs"] = [ip]

        self.store.mutate(svc_rt, ns, name, assign)
