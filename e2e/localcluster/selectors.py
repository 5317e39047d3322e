"""Label and field selectors (the string syntax of ``labelSelector=`` / ``fieldSelector=``)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from .errors import bad_request
from .resources import ResourceType

Predicate = Callable[[dict[str, Any]], bool]

_SET_RE = re.compile(r"^\s*([^\s!=]+)\s+(in|notin)\s+\((.*)\)\s*$")


def _split_top(selector: str) -> list[str]:
    """Split on commas outside parentheses (``a in (x,y),b=c``)."""
    parts, depth, cur = [], 0, ""
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def _label_in(key: str, values: set[str], inside: bool) -> Predicate:
    return lambda labels: (labels.get(key) in values) == inside


def _has_label(key: str, present: bool) -> Predicate:
    return lambda labels: (key in labels) == present


def _field_test(path: str, value: str, equal: bool) -> Predicate:
    return lambda obj: (_field_value(obj, path) == value) == equal


def parse_label_selector(selector: str | None) -> Predicate:
    if not selector:
        return lambda labels: True
    reqs: list[Predicate] = []
    for part in _split_top(selector):
        m = _SET_RE.match(part)
        if m:
            key, op, raw = m.group(1), m.group(2), m.group(3)
            values = {v.strip() for v in raw.split(",") if v.strip()}
            if op == "in":
                reqs.append(_label_in(key, values, True))
            else:
                reqs.append(_label_in(key, values, False))
            continue
        if "!=" in part:
            key, val = (s.strip() for s in part.split("!=", 1))
            reqs.append(_label_in(key, {val}, False))
        elif "==" in part or "=" in part:
            key, val = (s.strip() for s in re.split("==?", part, maxsplit=1))
            reqs.append(_label_in(key, {val}, True))
        elif part.startswith("!"):
            key = part[1:].strip()
            reqs.append(_has_label(key, False))
        else:
            if not re.match(r"^[A-Za-z0-9._/-]+$", part):
                raise bad_request(f"unable to parse requirement: invalid label key {part!r}")
            reqs.append(_has_label(part, True))
    return lambda labels: all(r(labels) for r in reqs)


def _field_value(obj: dict[str, Any], path: str) -> str:
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, dict):
            return ""
        cur = cur.get(part)
    if cur is None:
        return ""
    if isinstance(cur, bool):
        return "true" if cur else "false"
    return str(cur)


# Fields the real server supports in field selectors, per kind (metadata.* always).
_BUILTIN_FIELDS: dict[str, set[str]] = {
    "Pod": {
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "spec.hostNetwork",
        "status.phase",
        "status.podIP",
        "status.nominatedNodeName",
    },
    "Event": {
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
        "regarding.kind",
        "regarding.name",
        "regarding.namespace",
        "regarding.uid",
    },
    "Node": {"spec.unschedulable"},
    "Secret": {"type"},
    "Namespace": {"status.phase"},
}


def parse_field_selector(
    selector: str | None, rt: ResourceType, label_selector: str | None = None
) -> Predicate:
    if not selector:
        return lambda obj: True
    allowed = {"metadata.name", "metadata.namespace"} | _BUILTIN_FIELDS.get(rt.kind, set())
    if rt.crd_version is not None:
        allowed = {"metadata.name", "metadata.namespace"} | {
            f["jsonPath"].lstrip(".") for f in rt.crd_version.get("selectableFields") or []
        }
    reqs: list[Predicate] = []
    for part in _split_top(selector):
        if "!=" in part:
            path, val = (s.strip() for s in part.split("!=", 1))
            neg = True
        elif "=" in part:
            path, val = (s.strip() for s in re.split("==?", part, maxsplit=1))
            neg = False
        else:
            raise bad_request(f"invalid selector: '{selector}'; can't understand '{part}'")
        if path not in allowed:
            raise bad_request(
                f'Unable to find "{rt.group}/{rt.version}, Resource={rt.plural}" that match label '
                f'selector "{label_selector or ""}", field selector "{selector}": '
                f"field label not supported: {path}"
            )
        if neg:
            reqs.append(_field_test(path, val, False))
        else:
            reqs.append(_field_test(path, val, True))
    return lambda obj: all(r(obj) for r in reqs)
