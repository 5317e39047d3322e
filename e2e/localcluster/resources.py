"""Resource types the emulated API server serves: built-in groups plus CRD-defined ones."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True)
class ResourceType:
    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool
    singular: str = ""
    short_names: tuple[str, ...] = ()
    subresources: frozenset[str] = frozenset()
    categories: tuple[str, ...] = ()
    # Custom resources only: the CRD's version entry (schema, printer columns, subresources).
    crd_version: dict[str, Any] | None = field(default=None, compare=False, hash=False)
    crd_names: dict[str, Any] | None = field(default=None, compare=False, hash=False)
    # Built-in scale subresource paths (apps/v1 deployments).
    scale_paths: tuple[str, str, str] | None = None

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_resource(self) -> str:
        """``pods`` / ``rpcjobs.rpcjob.dev``: how errors name a resource."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def qualified_kind(self) -> str:
        """``RpcJob.rpcjob.dev`` / ``Pod``: how 422 messages name a kind."""
        return f"{self.kind}.{self.group}" if self.group else self.kind

    @property
    def is_custom(self) -> bool:
        return self.crd_version is not None

    @property
    def storage_key(self) -> tuple[str, str]:
        """Objects of all versions of one group/resource share storage."""
        return (self.group, self.plural)

    def scale_spec(self) -> tuple[str, str, str | None] | None:
        """(specReplicasPath, statusReplicasPath, labelSelectorPath) when /scale is served."""
        if self.crd_version is not None:
            scale = (self.crd_version.get("subresources") or {}).get("scale")
            if scale is None:
                return None
            return (
                scale["specReplicasPath"],
                scale["statusReplicasPath"],
                scale.get("labelSelectorPath"),
            )
        return self.scale_paths

    def discovery_entries(self) -> list[dict[str, Any]]:
        main: dict[str, Any] = {
            "name": self.plural,
            "singularName": self.singular or self.kind.lower(),
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": list(ALL_VERBS),
        }
        if self.short_names:
            main["shortNames"] = list(self.short_names)
        if self.categories:
            main["categories"] = list(self.categories)
        entries = [main]
        for sub in sorted(self.subresources):
            entry: dict[str, Any] = {
                "name": f"{self.plural}/{sub}",
                "singularName": "",
                "namespaced": self.namespaced,
                "kind": self.kind,
                "verbs": ["get", "patch", "update"],
            }
            if sub == "scale":
                entry.update(group="autoscaling", version="v1", kind="Scale")
            if sub == "binding":
                entry.update(kind="Binding", verbs=["create"])
            if sub == "log":
                entry.update(kind="Pod", verbs=["get"])
            entries.append(entry)
        return entries


def _rt(
    group: str,
    version: str,
    plural: str,
    kind: str,
    namespaced: bool = True,
    short: tuple[str, ...] = (),
    subs: tuple[str, ...] = (),
    **kw: Any,
) -> ResourceType:
    return ResourceType(
        group,
        version,
        plural,
        kind,
        namespaced,
        singular=kind.lower(),
        short_names=short,
        subresources=frozenset(subs),
        **kw,
    )


BUILTIN: tuple[ResourceType, ...] = (
    _rt(
        "",
        "v1",
        "pods",
        "Pod",
        short=("po",),
        subs=("status", "binding", "log"),
        categories=("all",),
    ),
    _rt("", "v1", "services", "Service", short=("svc",), subs=("status",), categories=("all",)),
    _rt("", "v1", "nodes", "Node", namespaced=False, short=("no",), subs=("status",)),
    _rt("", "v1", "events", "Event", short=("ev",)),
    _rt("", "v1", "namespaces", "Namespace", namespaced=False, short=("ns",), subs=("status",)),
    _rt("", "v1", "secrets", "Secret"),
    _rt("", "v1", "configmaps", "ConfigMap", short=("cm",)),
    _rt("", "v1", "serviceaccounts", "ServiceAccount", short=("sa",)),
    _rt("", "v1", "endpoints", "Endpoints", short=("ep",)),
    _rt(
        "",
        "v1",
        "persistentvolumeclaims",
        "PersistentVolumeClaim",
        short=("pvc",),
        subs=("status",),
    ),
    _rt(
        "apps",
        "v1",
        "deployments",
        "Deployment",
        short=("deploy",),
        subs=("status", "scale"),
        categories=("all",),
        scale_paths=(".spec.replicas", ".status.replicas", ".status.selector"),
    ),
    _rt("apps", "v1", "statefulsets", "StatefulSet", short=("sts",), subs=("status",)),
    _rt("apps", "v1", "daemonsets", "DaemonSet", short=("ds",), subs=("status",)),
    _rt("apps", "v1", "replicasets", "ReplicaSet", short=("rs",), subs=("status",)),
    _rt("batch", "v1", "jobs", "Job", subs=("status",)),
    _rt("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", short=("netpol",)),
    _rt("coordination.k8s.io", "v1", "leases", "Lease"),
    _rt("events.k8s.io", "v1", "events", "Event", short=("ev",)),
    _rt(
        "policy",
        "v1",
        "poddisruptionbudgets",
        "PodDisruptionBudget",
        short=("pdb",),
        subs=("status",),
    ),
    _rt(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        namespaced=False,
        short=("crd", "crds"),
        subs=("status",),
    ),
    _rt("rbac.authorization.k8s.io", "v1", "roles", "Role"),
    # Reviews are answered (always allowed), never stored: see Handlers.handle().
    _rt(
        "authorization.k8s.io",
        "v1",
        "selfsubjectaccessreviews",
        "SelfSubjectAccessReview",
        namespaced=False,
    ),
    _rt(
        "authorization.k8s.io",
        "v1",
        "subjectaccessreviews",
        "SubjectAccessReview",
        namespaced=False,
    ),
    _rt("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
    _rt("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", namespaced=False),
    _rt(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterrolebindings",
        "ClusterRoleBinding",
        namespaced=False,
    ),
    _rt(
        "scheduling.k8s.io",
        "v1",
        "priorityclasses",
        "PriorityClass",
        namespaced=False,
        short=("pc",),
    ),
    _rt(
        "autoscaling",
        "v2",
        "horizontalpodautoscalers",
        "HorizontalPodAutoscaler",
        short=("hpa",),
        subs=("status",),
    ),
)


def crd_resource_types(crd: dict[str, Any]) -> list[ResourceType]:
    """The served versions of a CRD as resource types."""
    spec = crd["spec"]
    names = spec["names"]
    out = []
    for version in spec["versions"]:
        if not version.get("served", True):
            continue
        subs = tuple(sorted((version.get("subresources") or {}).keys()))
        out.append(
            ResourceType(
                group=spec["group"],
                version=version["name"],
                plural=names["plural"],
                kind=names["kind"],
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                singular=names.get("singular", names["kind"].lower()),
                short_names=tuple(names.get("shortNames") or ()),
                subresources=frozenset(subs),
                categories=tuple(names.get("categories") or ()),
                crd_version=version,
                crd_names=names,
            )
        )
    return out


class Registry:
    """Which (group, version, plural) are served; CRDs add and remove entries at runtime."""

    def __init__(self) -> None:
        self._types: dict[tuple[str, str, str], ResourceType] = {}
        self._crd_owned: dict[str, list[tuple[str, str, str]]] = {}
        for rt in BUILTIN:
            self._types[(rt.group, rt.version, rt.plural)] = rt

    def get(self, group: str, version: str, plural: str) -> ResourceType | None:
        return self._types.get((group, version, plural))

    def by_kind(self, api_version: str, kind: str) -> ResourceType | None:
        group, _, version = api_version.rpartition("/")
        for rt in self._types.values():
            if rt.group == group and rt.version == version and rt.kind == kind:
                return rt
        return None

    def all(self) -> list[ResourceType]:
        return list(self._types.values())

    def groups(self) -> dict[str, list[str]]:
        """group -> versions (preferred first), core excluded."""
        out: dict[str, list[str]] = {}
        for rt in self._types.values():
            if rt.group and rt.version not in out.setdefault(rt.group, []):
                out[rt.group].append(rt.version)
        return out

    def in_group_version(self, group: str, version: str) -> list[ResourceType]:
        return [rt for rt in self._types.values() if rt.group == group and rt.version == version]

    def set_crd(self, crd_name: str, types: list[ResourceType]) -> None:
        self.remove_crd(crd_name)
        keys = []
        for rt in types:
            key = (rt.group, rt.version, rt.plural)
            self._types[key] = rt
            keys.append(key)
        self._crd_owned[crd_name] = keys

    def remove_crd(self, crd_name: str) -> None:
        for key in self._crd_owned.pop(crd_name, []):
            self._types.pop(key, None)

    def storage_version_of(self, group: str, plural: str) -> ResourceType | None:
        """The version objects of a group/resource are stored in."""
        candidates = [rt for rt in self._types.values() if rt.storage_key == (group, plural)]
        for rt in candidates:
            if rt.crd_version is not None and rt.crd_version.get("storage"):
                return rt
        return candidates[0] if candidates else None
