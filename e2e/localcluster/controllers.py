"""In-process controllers driven by store events: CRD registration and status, garbage
collection (ownerReferences, propagationPolicy), namespace deletion, CRD instance cleanup.

They run synchronously inside the store's commit (under its lock), after watchers got the
event. The real controllers run asynchronously; the observable end states are the same.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

from . import errors
from .resources import ResourceType, crd_resource_types
from .store import Event, Obj, Store

CRD_STORAGE = ("apiextensions.k8s.io", "customresourcedefinitions")
NS_STORAGE = ("", "namespaces")
CRD_CLEANUP = "customresourcecleanup.apiextensions.k8s.io"


def _cond(ctype: str, reason: str, message: str) -> dict[str, Any]:
    from .store import now_iso

    return {
        "type": ctype,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastTransitionTime": now_iso(),
    }


class Controllers:
    def __init__(self, store: Store) -> None:
        self.store = store
        store.hooks.append(self.on_event)

    def rt(self, storage: tuple[str, str]) -> ResourceType:
        rt = self.store.rt_for_storage(storage)
        assert rt is not None, storage
        return rt

    def on_event(self, ev: Event) -> None:
        if ev.type == "BOOKMARK":
            return
        meta = ev.obj["metadata"]
        if ev.storage == CRD_STORAGE:
            self._crd(ev)
        if ev.type == "DELETED":
            self._collect_dependents(meta["uid"])
            self._release_foreground_owners(ev.obj)
            self._maybe_finish_crd_cleanup(ev.storage)
            ns = meta.get("namespace")
            if ns:
                self._maybe_finish_namespace(ns)
        elif meta.get("deletionTimestamp"):
            finalizers = meta.get("finalizers") or []
            if "orphan" in finalizers:
                self._orphan(ev)
            if "foregroundDeletion" in finalizers:
                self._foreground(ev)
            if ev.storage == NS_STORAGE and (
                ev.old is None or not ev.old["metadata"].get("deletionTimestamp")
            ):
                self._delete_namespace_content(meta["name"])

    # --- CRDs ---------------------------------------------------------------------------
    def _crd(self, ev: Event) -> None:
        crd = ev.obj
        name = crd["metadata"]["name"]
        reg = self.store.registry
        if ev.type == "DELETED":
            reg.remove_crd(name)
            spec = crd["spec"]
            self.store.objects.pop((spec["group"], spec["names"]["plural"]), None)
            return
        if crd["metadata"].get("deletionTimestamp"):
            if ev.old is None or not ev.old["metadata"].get("deletionTimestamp"):
                self._delete_all_instances(crd)
            return
        old_spec = ev.old.get("spec") if ev.old else None
        if ev.type == "ADDED" or old_spec != crd["spec"]:
            reg.set_crd(name, crd_resource_types(crd))
        conds = {c["type"] for c in (crd.get("status") or {}).get("conditions") or []}
        needs_finalizer = CRD_CLEANUP not in (crd["metadata"].get("finalizers") or [])
        if {"Established", "NamesAccepted"} <= conds and not needs_finalizer:
            return
        crd_rt = self.rt(CRD_STORAGE)

        def establish(o: Obj) -> None:
            status = o.setdefault("status", {})
            status["acceptedNames"] = copy.deepcopy(o["spec"]["names"])
            status["storedVersions"] = [
                v["name"] for v in o["spec"]["versions"] if v.get("storage")
            ]
            status["conditions"] = [
                _cond("NamesAccepted", "NoConflicts", "no conflicts found"),
                _cond(
                    "Established", "InitialNamesAccepted", "the initial names have been accepted"
                ),
            ]

        def add_finalizer(o: Obj) -> None:
            fins = o["metadata"].setdefault("finalizers", [])
            if CRD_CLEANUP not in fins:
                fins.append(CRD_CLEANUP)

        if needs_finalizer:
            self.store.mutate(crd_rt, None, name, add_finalizer)
        if not {"Established", "NamesAccepted"} <= conds:
            self.store.mutate(crd_rt, None, name, establish, subresource="status")

    def _delete_all_instances(self, crd: Obj) -> None:
        spec = crd["spec"]
        storage = (spec["group"], spec["names"]["plural"])
        rt = self.store.rt_for_storage(storage)
        if rt is not None:
            for ns, name in list(self.store.objects.get(storage, {})):
                self._try_delete(rt, ns, name)
        self._maybe_finish_crd_cleanup(storage)

    def _maybe_finish_crd_cleanup(self, storage: tuple[str, str]) -> None:
        if self.store.objects.get(storage):
            return
        for crd in list(self.store.objects.get(CRD_STORAGE, {}).values()):
            spec = crd["spec"]
            if (spec["group"], spec["names"]["plural"]) != storage:
                continue
            if crd["metadata"].get("deletionTimestamp") and CRD_CLEANUP in (
                crd["metadata"].get("finalizers") or []
            ):
                self.store.mutate(
                    self.rt(CRD_STORAGE), None, crd["metadata"]["name"], _drop(CRD_CLEANUP)
                )

    # --- garbage collection -------------------------------------------------------------
    def _dependents(self, uid: str) -> list[tuple[tuple[str, str], Obj]]:
        out = []
        for storage, bucket in self.store.objects.items():
            for obj in bucket.values():
                refs = obj["metadata"].get("ownerReferences") or []
                if any(r.get("uid") == uid for r in refs):
                    out.append((storage, obj))
        return out

    def _try_delete(self, rt: ResourceType, ns: str, name: str) -> None:
        with contextlib.suppress(errors.ApiError):  # already gone
            self.store.delete(rt, ns or None, name)

    def _collect_dependents(self, uid: str) -> None:
        for storage, dep in self._dependents(uid):
            rt = self.rt(storage)
            meta = dep["metadata"]
            others = [
                r
                for r in meta.get("ownerReferences") or []
                if r.get("uid") != uid and self.store.find_by_uid(r["uid"]) is not None
            ]
            if others:
                self.store.mutate(rt, meta.get("namespace"), meta["name"], _drop_owner(uid))
            elif not meta.get("deletionTimestamp"):
                self._try_delete(rt, meta.get("namespace", ""), meta["name"])

    def _orphan(self, ev: Event) -> None:
        uid = ev.obj["metadata"]["uid"]
        for storage, dep in self._dependents(uid):
            meta = dep["metadata"]
            self.store.mutate(
                self.rt(storage), meta.get("namespace"), meta["name"], _drop_owner(uid)
            )
        meta = ev.obj["metadata"]
        self.store.mutate(self.rt(ev.storage), meta.get("namespace"), meta["name"], _drop("orphan"))

    def _foreground(self, ev: Event) -> None:
        uid = ev.obj["metadata"]["uid"]
        for storage, dep in self._dependents(uid):
            meta = dep["metadata"]
            if not meta.get("deletionTimestamp"):
                self._try_delete(self.rt(storage), meta.get("namespace", ""), meta["name"])
        self._release_if_no_dependents(ev.storage, ev.obj)

    def _release_if_no_dependents(self, storage: tuple[str, str], owner: Obj) -> None:
        meta = owner["metadata"]
        if not self._dependents(meta["uid"]):
            self.store.mutate(
                self.rt(storage), meta.get("namespace"), meta["name"], _drop("foregroundDeletion")
            )

    def _release_foreground_owners(self, obj: Obj) -> None:
        for ref in obj["metadata"].get("ownerReferences") or []:
            found = self.store.find_by_uid(ref["uid"])
            if found is None:
                continue
            storage, owner = found
            if "foregroundDeletion" in (owner["metadata"].get("finalizers") or []):
                self._release_if_no_dependents(storage, owner)

    # --- namespaces ---------------------------------------------------------------------
    def _delete_namespace_content(self, ns: str) -> None:
        for storage, bucket in list(self.store.objects.items()):
            if storage == NS_STORAGE:
                continue
            rt = self.store.rt_for_storage(storage)
            if rt is None or not rt.namespaced:
                continue
            for ons, name in list(bucket):
                if ons == ns:
                    self._try_delete(rt, ns, name)
        self._maybe_finish_namespace(ns)

    def _maybe_finish_namespace(self, ns: str) -> None:
        ns_obj = self.store.objects.get(NS_STORAGE, {}).get(("", ns))
        if ns_obj is None or not ns_obj["metadata"].get("deletionTimestamp"):
            return
        if ns_obj["metadata"].get("finalizers"):
            return
        for storage, bucket in self.store.objects.items():
            if storage != NS_STORAGE and any(ons == ns for ons, _ in bucket):
                return
        self.store.finalize_removal(self.rt(NS_STORAGE), None, ns)


def _drop(finalizer: str) -> Any:
    def fn(o: Obj) -> None:
        fins = [f for f in o["metadata"].get("finalizers") or [] if f != finalizer]
        if fins:
            o["metadata"]["finalizers"] = fins
        else:
            o["metadata"].pop("finalizers", None)

    return fn


def _drop_owner(uid: str) -> Any:
    def fn(o: Obj) -> None:
        refs = [r for r in o["metadata"].get("ownerReferences") or [] if r.get("uid") != uid]
        if refs:
            o["metadata"]["ownerReferences"] = refs
        else:
            o["metadata"].pop("ownerReferences", None)

    return fn
