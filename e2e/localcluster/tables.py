"""``Table`` responses (``Accept: application/json;as=Table;g=meta.k8s.io;v=v1``) for kubectl."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from .resources import ResourceType

_TOKEN = re.compile(
    r"""\.([A-Za-z0-9_-]+)|\[['"]([^'"]+)['"]\]|\[(\d+|\*)\]|\[\?\(@\.([\w.-]+)\s*==\s*['"]([^'"]*)['"]\)\]"""
)


def jsonpath(obj: Any, path: str) -> list[Any]:
    """The subset of JSONPath printer columns use: .a.b, ['k'], [0], [*], [?(@.f=="v")]."""
    path = path.strip()
    if path.startswith("{") and path.endswith("}"):
        path = path[1:-1]
    if path.startswith("$"):
        path = path[1:]
    current = [obj]
    pos = 0
    while pos < len(path):
        m = _TOKEN.match(path, pos)
        if not m:
            return []
        pos = m.end()
        nxt: list[Any] = []
        for cur in current:
            key = m.group(1) or m.group(2)
            if key is not None:
                if isinstance(cur, dict) and key in cur:
                    nxt.append(cur[key])
            elif m.group(3) is not None:
                if isinstance(cur, list):
                    if m.group(3) == "*":
                        nxt.extend(cur)
                    elif int(m.group(3)) < len(cur):
                        nxt.append(cur[int(m.group(3))])
            elif isinstance(cur, list):
                fld, val = m.group(4), m.group(5)
                for item in cur:
                    got = jsonpath(item, "." + fld)
                    if got and str(got[0]) == val:
                        nxt.append(item)
        current = nxt
    return current


def human_age(ts: str | None) -> str:
    if not ts:
        return "<unknown>"
    then = dt.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    secs = max(0, int((dt.datetime.now(dt.UTC) - then).total_seconds()))
    if secs < 120:
        return f"{secs}s"
    if secs < 3600 * 2:
        return f"{secs // 60}m"
    if secs < 86400 * 2:
        return f"{secs // 3600}h"
    return f"{secs // 86400}d"


def _cell(value: list[Any], col_type: str) -> Any:
    if not value:
        return None
    v = value[0] if len(value) == 1 else ",".join(str(x) for x in value)
    if col_type == "date" and isinstance(v, str):
        return human_age(v)
    if isinstance(v, dict | list):
        import json

        return json.dumps(v)
    return v


def _pod_cells(obj: dict[str, Any]) -> list[Any]:
    statuses = (obj.get("status") or {}).get("containerStatuses") or []
    total = len((obj.get("spec") or {}).get("containers") or [])
    ready = sum(1 for s in statuses if s.get("ready"))
    restarts = sum(int(s.get("restartCount", 0)) for s in statuses)
    phase = (obj.get("status") or {}).get("phase", "Pending")
    if obj["metadata"].get("deletionTimestamp"):
        phase = "Terminating"
    return [f"{ready}/{total}", phase, restarts]


_BUILTIN_COLUMNS: dict[str, list[tuple[str, str]]] = {
    "Pod": [("Ready", "string"), ("Status", "string"), ("Restarts", "integer")],
    "Node": [("Status", "string")],
    "Namespace": [("Status", "string")],
    "Deployment": [("Ready", "string"), ("Up-to-date", "integer"), ("Available", "integer")],
    "ReplicaSet": [("Desired", "integer"), ("Current", "integer"), ("Ready", "integer")],
    "Event": [
        ("Type", "string"),
        ("Reason", "string"),
        ("Object", "string"),
        ("Message", "string"),
    ],
}


def columns_for(rt: ResourceType) -> list[dict[str, Any]]:
    cols = [
        {"name": "Name", "type": "string", "format": "name", "description": "Name", "priority": 0}
    ]
    if rt.crd_version is not None:
        for c in rt.crd_version.get("additionalPrinterColumns") or []:
            cols.append(
                {
                    "name": c["name"],
                    "type": c.get("type", "string"),
                    "format": c.get("format", ""),
                    "description": c.get("description", ""),
                    "priority": int(c.get("priority", 0)),
                    "_jsonPath": c["jsonPath"],
                }
            )
        if not rt.crd_version.get("additionalPrinterColumns"):
            cols.append(
                {
                    "name": "Age",
                    "type": "date",
                    "format": "",
                    "description": "Age",
                    "priority": 0,
                    "_jsonPath": ".metadata.creationTimestamp",
                }
            )
        return cols
    for name, typ in _BUILTIN_COLUMNS.get(rt.kind, []):
        cols.append({"name": name, "type": typ, "format": "", "description": name, "priority": 0})
    cols.append(
        {"name": "Age", "type": "string", "format": "", "description": "Age", "priority": 0}
    )
    if rt.kind == "Pod" and not rt.group:  # kubectl get pods -o wide
        for name in ("IP", "Node"):
            cols.append(
                {"name": name, "type": "string", "format": "", "description": name, "priority": 1}
            )
    return cols


def _row_cells(rt: ResourceType, cols: list[dict[str, Any]], obj: dict[str, Any]) -> list[Any]:
    cells: list[Any] = [obj["metadata"]["name"]]
    if rt.crd_version is not None:
        for c in cols[1:]:
            cells.append(_cell(jsonpath(obj, c["_jsonPath"]), c["type"]))
        return cells
    if rt.kind == "Pod":
        cells += _pod_cells(obj)
    elif rt.kind == "Node":
        conds = (obj.get("status") or {}).get("conditions") or []
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)
        cells.append("Ready" if ready else "NotReady")
    elif rt.kind in ("Deployment", "ReplicaSet"):
        st, want = obj.get("status") or {}, (obj.get("spec") or {}).get("replicas", 1)
        ready = st.get("readyReplicas", 0)
        cells += (
            [f"{ready}/{want}", st.get("updatedReplicas", 0), st.get("availableReplicas", 0)]
            if rt.kind == "Deployment"
            else [want, st.get("replicas", 0), ready]
        )
    elif rt.kind == "Namespace":
        cells.append((obj.get("status") or {}).get("phase", "Active"))
    elif rt.kind == "Event":
        ref = obj.get("involvedObject") or obj.get("regarding") or {}
        obj_ref = f"{str(ref.get('kind', '')).lower()}/{ref.get('name', '')}"
        cells += [obj.get("type", ""), obj.get("reason", ""), obj_ref,
                  obj.get("message") or obj.get("note", "")]  # fmt: skip
    cells.append(human_age(obj["metadata"].get("creationTimestamp")))
    if rt.kind == "Pod" and not rt.group:
        cells.append((obj.get("status") or {}).get("podIP") or "<none>")
        cells.append((obj.get("spec") or {}).get("nodeName") or "<none>")
    return cells


def to_table(
    rt: ResourceType, items: list[dict[str, Any]], rv: str | None, include_object: str
) -> dict[str, Any]:
    cols = columns_for(rt)
    rows = []
    for obj in items:
        row: dict[str, Any] = {"cells": _row_cells(rt, cols, obj)}
        if include_object == "Object":
            row["object"] = obj
        elif include_object != "None":
            row["object"] = {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": obj["metadata"],
            }
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv} if rv else {},
        "columnDefinitions": [{k: v for k, v in c.items() if not k.startswith("_")} for c in cols],
        "rows": rows,
    }
