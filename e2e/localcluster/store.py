"""The object store: one global resourceVersion counter, an event history and watchers.

Thread-safe (one re-entrant lock): the aiohttp handlers and the process kubelet both use it.
Every write bumps the global resourceVersion and appends an event to a bounded history, and
watchers are registered under the same lock that lists read — so a watch started from a list's
resourceVersion replays exactly the events after it (none lost, none duplicated). A watch from a
version older than the history answers 410 Gone, like a compacted etcd behind the real server.
"""

from __future__ import annotations

import copy
import random
import re
import threading
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from . import errors
from .events import Event, Obj, Watcher, now_iso
from .resources import Registry, ResourceType
from .selectors import Predicate
from .validation import Validator, default_validator, error_field

__all__ = ["Event", "Obj", "Store", "Watcher", "now_iso"]  # events.py names re-exported here

Key = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_NAME_HINT = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used "
    r"for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
_GEN_CHARS = "bcdfghjklmnpqrstvwxz2456789"


@dataclass
class Store:
    registry: Registry = field(default_factory=Registry)
    validator: Validator = field(default_factory=default_validator)
    history_limit: int = 100_000
    lock: threading.RLock = field(default_factory=threading.RLock)

    def __post_init__(self) -> None:
        self.rv = 1000
        self.oldest_rv = self.rv  # events after this are all in history
        self.objects: dict[tuple[str, str], dict[Key, Obj]] = {}
        self.history: deque[Event] = deque()
        self.watchers: list[Watcher] = []
        # Called (under the lock) after every committed event: controllers (GC, CRDs, ...).
        self.hooks: list[Callable[[Event], None]] = []

    # --- helpers --------------------------------------------------------------------------
    def _bucket(self, rt: ResourceType) -> dict[Key, Obj]:
        return self.objects.setdefault(rt.storage_key, {})

    def _key(self, rt: ResourceType, ns: str | None, name: str) -> Key:
        return ((ns or "") if rt.namespaced else "", name)

    def _out(self, rt: ResourceType, obj: Obj) -> Obj:
        out = copy.deepcopy(obj)
        out["apiVersion"] = rt.api_version
        return out

    def _commit(self, etype: str, rt: ResourceType, obj: Obj, old: Obj | None) -> None:
        self.rv += 1
        if etype != "DELETED":
            obj["metadata"]["resourceVersion"] = str(self.rv)
            self._bucket(rt)[
                self._key(rt, obj["metadata"].get("namespace"), obj["metadata"]["name"])
            ] = obj
        else:
            obj = copy.deepcopy(obj)
            obj["metadata"]["resourceVersion"] = str(self.rv)
            self._remove(rt, obj)  # gone before watchers and controllers hear of it
        ev = Event(
            etype, rt.storage_key, copy.deepcopy(obj), copy.deepcopy(old) if old else None, self.rv
        )
        self.history.append(ev)
        while len(self.history) > self.history_limit:
            self.oldest_rv = self.history.popleft().rv
        for w in list(self.watchers):
            w.deliver(ev)
        for hook in list(self.hooks):
            hook(ev)

    def compact(self) -> int:
        """Forget the event history (as etcd compaction does); older watches get 410."""
        with self.lock:
            self.history.clear()
            self.oldest_rv = self.rv
            return self.rv

    def raw(self, rt: ResourceType, ns: str | None, name: str) -> Obj | None:
        with self.lock:
            return self._bucket(rt).get(self._key(rt, ns, name))

    def find_by_uid(self, uid: str) -> tuple[tuple[str, str], Obj] | None:
        with self.lock:
            for storage, bucket in self.objects.items():
                for obj in bucket.values():
                    if obj["metadata"].get("uid") == uid:
                        return storage, obj
        return None

    def rt_for_storage(self, storage: tuple[str, str]) -> ResourceType | None:
        return self.registry.storage_version_of(*storage)

    def _require_namespace(self, rt: ResourceType, ns: str | None) -> None:
        if not rt.namespaced:
            return
        ns_rt = self.registry.get("", "v1", "namespaces")
        assert ns_rt is not None
        ns_obj = self._bucket(ns_rt).get(("", ns or ""))
        if ns_obj is None:
            raise errors.namespace_not_found(ns or "")
        if ns_obj["metadata"].get("deletionTimestamp"):
            raise errors.ApiError(
                403,
                "Forbidden",
                f"{rt.plural} is forbidden: unable to create new content in namespace {ns} "
                "because it is being terminated",
            )

    def _normalize(self, rt: ResourceType, obj: Obj) -> None:
        """What built-in types do on write: Secrets fold stringData into base64 data."""
        if rt.kind == "Secret" and not rt.group and obj.get("stringData"):
            import base64

            data = obj.setdefault("data", {})
            for k, v in obj.pop("stringData").items():
                data[k] = base64.b64encode(str(v).encode()).decode()

    def _validate_custom(
        self, rt: ResourceType, obj: Obj, old: Obj | None, strict: bool = False
    ) -> Obj:
        """Prune (or, with fieldValidation=Strict, reject) unknown fields, default, validate."""
        if rt.crd_version is None:
            return obj
        schema = (rt.crd_version.get("schema") or {}).get("openAPIV3Schema")
        if not schema:
            return obj
        if strict:
            unknown = self.validator.unknown_fields(schema, obj)
            if unknown:
                raise errors.bad_request(
                    "strict decoding error: " + ", ".join(f'unknown field "{u}"' for u in unknown)
                )
        obj = self.validator.apply_defaults(schema, self.validator.prune(schema, obj))
        errs = self.validator.validate(schema, obj, old)
        if errs:
            raise errors.invalid(
                rt, obj["metadata"].get("name", ""), [(error_field(e), e) for e in errs]
            )
        return obj

    # --- reads --------------------------------------------------------------------------
    def get(self, rt: ResourceType, ns: str | None, name: str) -> Obj:
        with self.lock:
            obj = self.raw(rt, ns, name)
            if obj is None:
                raise errors.not_found(rt, name)
            return self._out(rt, obj)

    def list(
        self, rt: ResourceType, ns: str | None, labels: Predicate, fields: Predicate
    ) -> tuple[list[Obj], int]:
        with self.lock:
            items = [
                self._out(rt, o)
                for (ons, _), o in sorted(self._bucket(rt).items())
                if (not ns or ons == ns) and labels(o["metadata"].get("labels") or {}) and fields(o)
            ]
            return items, self.rv

    def watch(
        self,
        rt: ResourceType,
        ns: str | None,
        since: int | None,
        labels: Predicate,
        fields: Predicate,
        push: Callable[[Event], None],
    ) -> Callable[[], None]:
        """Register a watcher; replays history after ``since`` (or the current state as ADDED
        when ``since`` is None). Raises 410 when ``since`` is older than the history."""
        with self.lock:
            w = Watcher(rt.storage_key, ns, labels, fields, push)
            if since is None:
                for o in sorted(
                    self._bucket(rt).values(), key=lambda o: int(o["metadata"]["resourceVersion"])
                ):
                    if w.matches(o):
                        push(Event("ADDED", rt.storage_key, copy.deepcopy(o), None, self.rv))
            else:
                if since < self.oldest_rv:
                    raise errors.gone(f"too old resource version: {since} ({self.oldest_rv})")
                for ev in self.history:
                    if ev.rv > since:
                        w.deliver(ev)
            self.watchers.append(w)

            def cancel() -> None:
                with self.lock:
                    if w in self.watchers:
                        self.watchers.remove(w)

            return cancel

    def bookmark(self, rt: ResourceType, push: Callable[[Event], None]) -> None:
        with self.lock:  # under the lock: ordered after every event already pushed
            push(Event("BOOKMARK", rt.storage_key, {"metadata": {}}, None, self.rv))

    # --- writes -------------------------------------------------------------------------
    def create(
        self,
        rt: ResourceType,
        ns: str | None,
        body: Obj,
        strict: bool = False,
        keep_status: bool = False,
    ) -> Obj:
        """POST semantics; ``keep_status`` is for in-process controllers (kubelet Nodes)."""
        with self.lock:
            obj = copy.deepcopy(body)
            if "status" in rt.subresources and not keep_status:
                obj.pop("status", None)  # status is written through /status only
                if rt.kind == "Namespace" and not rt.group:
                    obj["status"] = {"phase": "Active"}
                if rt.kind == "Pod" and not rt.group:
                    obj["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
            meta = obj.setdefault("metadata", {})
            if rt.namespaced:
                ns = ns or meta.get("namespace") or "default"
                if meta.get("namespace") and meta["namespace"] != ns:
                    raise errors.bad_request(
                        "the namespace of the provided object does not match the namespace sent "
                        "on the request"
                    )
                meta["namespace"] = ns
            else:
                meta.pop("namespace", None)
            self._require_namespace(rt, ns)
            if not meta.get("name"):
                if not meta.get("generateName"):
                    raise errors.invalid(
                        rt,
                        "",
                        [
                            (
                                "metadata.name",
                                "metadata.name: Required value: name or generateName is required",
                            )
                        ],
                    )
                bucket = self._bucket(rt)
                while True:
                    name = meta["generateName"] + "".join(random.choices(_GEN_CHARS, k=5))
                    if self._key(rt, ns, name) not in bucket:
                        break
                meta["name"] = name
            name = meta["name"]
            if not _DNS_SUBDOMAIN.match(name) or len(name) > 253:
                raise errors.invalid(
                    rt,
                    name,
                    [("metadata.name", f'metadata.name: Invalid value: "{name}": {_NAME_HINT}')],
                )
            if self._bucket(rt).get(self._key(rt, ns, name)) is not None:
                raise errors.already_exists(rt, name)
            if meta.get("resourceVersion"):
                raise errors.bad_request(
                    "resourceVersion should not be set on objects to be created"
                )
            obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=now_iso(), generation=1)
            for k in ("deletionTimestamp", "deletionGracePeriodSeconds"):
                meta.pop(k, None)
            self._normalize(rt, obj)
            obj = self._validate_custom(rt, obj, None, strict)
            self._commit("ADDED", rt, obj, None)
            return self._out(rt, obj)

    def update(
        self,
        rt: ResourceType,
        ns: str | None,
        name: str,
        body: Obj,
        subresource: str | None = None,
        check_rv: bool = True,
        strict: bool = False,
    ) -> Obj:
        """PUT semantics (also the last step of PATCH): 409 on a stale resourceVersion."""
        with self.lock:
            old = self.raw(rt, ns, name)
            if old is None:
                raise errors.not_found(rt, name)
            new = copy.deepcopy(body)
            meta = new.setdefault("metadata", {})
            if meta.get("name", name) != name:
                raise errors.bad_request(
                    f"the name of the object ({meta.get('name')}) does not match the name on the "
                    f"URL ({name})"
                )
            sent_rv = meta.get("resourceVersion")
            if check_rv and sent_rv and sent_rv != old["metadata"]["resourceVersion"]:
                raise errors.conflict(rt, name)
            return self._apply_update(rt, old, new, subresource, strict)

    def _apply_update(
        self, rt: ResourceType, old: Obj, new: Obj, subresource: str | None, strict: bool = False
    ) -> Obj:
        has_status = "status" in rt.subresources
        if subresource == "status":
            status = new.get("status")
            new = copy.deepcopy(old)  # a status write changes nothing but status
            if status is None:
                new.pop("status", None)
            else:
                new["status"] = status
        elif has_status:
            if "status" in old:
                new["status"] = copy.deepcopy(old["status"])
            else:
                new.pop("status", None)
        meta, old_meta = new["metadata"], old["metadata"]
        for k in (
            "uid",
            "creationTimestamp",
            "namespace",
            "name",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ):
            if k in old_meta:
                meta[k] = old_meta[k]
            else:
                meta.pop(k, None)
        if old_meta.get("deletionTimestamp"):
            added = set(meta.get("finalizers") or []) - set(old_meta.get("finalizers") or [])
            if added:
                raise errors.invalid(
                    rt,
                    old_meta["name"],
                    [
                        (
                            "metadata.finalizers",
                            "metadata.finalizers: Forbidden: no new finalizers can be added if "
                            f"the object is being deleted, found new finalizers {sorted(added)!r}",
                        )
                    ],
                )
        new["apiVersion"], new["kind"] = rt.api_version, rt.kind
        self._normalize(rt, new)
        new = self._validate_custom(rt, new, old, strict)
        ignore = {"metadata", "status"} if has_status else {"metadata"}
        if {k: v for k, v in new.items() if k not in ignore | {"apiVersion"}} != {
            k: v for k, v in old.items() if k not in ignore | {"apiVersion"}
        }:
            new["metadata"]["generation"] = int(old_meta.get("generation", 1)) + 1
        nmeta = new["metadata"]
        if (
            nmeta.get("deletionTimestamp")
            and not nmeta.get("finalizers")
            and not self._graceful_pending(rt, new)
        ):
            self._commit("DELETED", rt, new, old)
            return self._out(rt, new)
        new["metadata"]["resourceVersion"] = old_meta["resourceVersion"]
        if new == old:
            return self._out(rt, old)  # a no-op write does not bump resourceVersion
        self._commit("MODIFIED", rt, new, old)
        return self._out(rt, new)

    def _graceful_pending(self, rt: ResourceType, obj: Obj) -> bool:
        """A pod on a node stays (terminating) until its kubelet deletes it with grace 0."""
        return (
            rt.kind == "Pod"
            and not rt.group
            and bool(obj.get("spec", {}).get("nodeName"))
            and obj["metadata"].get("deletionGracePeriodSeconds", 0) > 0
        )

    def _remove(self, rt: ResourceType, obj: Obj) -> None:
        meta = obj["metadata"]
        self._bucket(rt).pop(self._key(rt, meta.get("namespace"), meta["name"]), None)

    def delete(
        self,
        rt: ResourceType,
        ns: str | None,
        name: str,
        grace: int | None = None,
        propagation: str | None = None,
        precondition_uid: str | None = None,
        precondition_rv: str | None = None,
    ) -> Obj:
        with self.lock:
            old = self.raw(rt, ns, name)
            if old is None:
                raise errors.not_found(rt, name)
            meta = old["metadata"]
            if precondition_uid and precondition_uid != meta["uid"]:
                raise errors.conflict(rt, name)
            if precondition_rv and precondition_rv != meta["resourceVersion"]:
                raise errors.conflict(rt, name)
            new = copy.deepcopy(old)
            nmeta = new["metadata"]
            finalizers = list(nmeta.get("finalizers") or [])
            if propagation == "Foreground" and "foregroundDeletion" not in finalizers:
                finalizers.append("foregroundDeletion")
            if propagation == "Orphan" and "orphan" not in finalizers:
                finalizers.append("orphan")
            is_pod_on_node = (
                rt.kind == "Pod" and not rt.group and bool(new.get("spec", {}).get("nodeName"))
            )
            if is_pod_on_node:
                if grace is None:
                    grace = int(new["spec"].get("terminationGracePeriodSeconds", 30))
                current = nmeta.get("deletionGracePeriodSeconds")
                if current is not None and grace >= current and grace > 0:
                    return self._out(rt, old)  # already terminating with a shorter grace
                nmeta["deletionGracePeriodSeconds"] = grace
            else:
                nmeta.setdefault("deletionGracePeriodSeconds", 0)
            is_ns = rt.kind == "Namespace" and not rt.group
            if is_ns:
                new.setdefault("status", {})["phase"] = "Terminating"
            if finalizers or is_ns or (is_pod_on_node and grace and grace > 0):
                nmeta["finalizers"] = finalizers
                if not finalizers:
                    nmeta.pop("finalizers")
                if not nmeta.get("deletionTimestamp"):
                    nmeta["deletionTimestamp"] = now_iso()
                if new != old:
                    self._commit("MODIFIED", rt, new, old)
                return self._out(rt, new)
            nmeta.setdefault("deletionTimestamp", now_iso())
            self._commit("DELETED", rt, new, old)
            self._remove(rt, new)
            return self._out(rt, new)

    def finalize_removal(self, rt: ResourceType, ns: str | None, name: str) -> None:
        """Remove an object whose deletion a controller completed (namespaces)."""
        with self.lock:
            old = self.raw(rt, ns, name)
            if old is not None:
                self._commit("DELETED", rt, copy.deepcopy(old), old)
                self._remove(rt, old)

    def mutate(
        self,
        rt: ResourceType,
        ns: str | None,
        name: str,
        fn: Callable[[Obj], None],
        subresource: str | None = None,
    ) -> Obj | None:
        """Read-modify-write under the lock (in-process controllers: kubelet, CRD status)."""
        with self.lock:
            old = self.raw(rt, ns, name)
            if old is None:
                return None
            new = copy.deepcopy(old)
            fn(new)
            return self._apply_update(rt, old, new, subresource)
