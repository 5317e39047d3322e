"""Reading an RpcJob YAML for ``rpcjob run`` / ``rpcjob validate``: parse, ``--set``, validate.

Validation is the API server's (the CRD's schema and CEL rules, via crdschema) followed by the
operator's own checks (spec.parse_job), so a file that passes here is accepted by a cluster.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from rpcjob import contract
from rpcjob_operator import crdschema, spec_schema
from rpcjob_operator.errors import InvalidSpec
from rpcjob_operator.spec import RpcJob, parse_job


class JobFileError(ValueError):
    """A job file that cannot run; the message names the file, the field and the fix."""


def read(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise JobFileError(f"{p}: cannot read the job file: {exc.strerror}") from exc
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise JobFileError(f"{p}: not valid YAML{where}: {problem}") from exc
    jobs = [d for d in docs if isinstance(d, dict) and d.get("kind") == contract.KIND]
    if len(jobs) != 1:
        kinds = [d.get("kind") if isinstance(d, dict) else type(d).__name__ for d in docs]
        raise JobFileError(
            f"{p}: expected exactly one document of kind {contract.KIND} "
            f"(apiVersion {contract.API_VERSION}), found kinds {kinds}"
        )
    return jobs[0]


def _scalar(text: str) -> Any:
    """Helm's ``--set`` rules: integers, true/false and null are typed, all else is a string
    (YAML 1.1 would turn ``off`` into False: ``--set rpc.deviceMaps=off`` must stay "off")."""
    t = text.strip()
    if t in ("true", "false"):
        return t == "true"
    if t == "null":
        return None
    if t.lstrip("-").isdigit():
        return int(t)
    return text


def apply_set(obj: dict[str, Any], assignment: str) -> dict[str, Any]:
    """``roles.worker.replicas=4`` (paths relative to ``spec``; a leading ``spec.`` is fine)."""
    path, sep, raw = assignment.partition("=")
    keys = [k for k in path.strip().split(".") if k]
    if not sep or not keys:
        raise JobFileError(
            f"--set {assignment!r}: expected PATH=VALUE, e.g. --set roles.worker.replicas=4"
        )
    if keys[0] == "spec":
        keys = keys[1:]
    out = copy.deepcopy(obj)
    node: dict[str, Any] = out.setdefault("spec", {})
    for i, key in enumerate(keys[:-1]):
        nxt = node.get(key)
        if nxt is None:
            nxt = node[key] = {}
        if not isinstance(nxt, dict):
            done = ".".join(["spec", *keys[: i + 1]])
            raise JobFileError(f"--set {assignment!r}: {done} is not a mapping")
        node = nxt
    node[keys[-1]] = _scalar(raw)
    return out


def validate(obj: dict[str, Any], *, source: str = "job") -> RpcJob:
    """Schema + CEL, then the operator's checks; raises JobFileError listing every problem."""
    errs = crdschema.validate(spec_schema.crd(), obj)
    if errs:
        raise JobFileError(
            f"{source}: the RpcJob is invalid (as a cluster would reject it):\n"
            + "\n".join(f"  - {e}" for e in errs)
        )
    try:
        return parse_job(obj)
    except InvalidSpec as exc:
        raise JobFileError(
            f"{source}: the RpcJob is invalid:\n" + "\n".join(f"  - {e}" for e in exc.errors)
        ) from exc


def load(path: str | Path, sets: list[str] | tuple[str, ...] = ()) -> tuple[dict[str, Any], RpcJob]:
    obj = read(path)
    for assignment in sets:
        obj = apply_set(obj, assignment)
    return obj, validate(obj, source=str(path))
