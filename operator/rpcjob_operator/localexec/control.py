"""How ``rpcjob scale`` and ``rpcjob status`` reach a job that ``rpcjob run`` is running.

The running job registers itself in a state file (``$RPCJOB_STATE_DIR`` or
``~/.rpcjob/local/<name>.json``: pid, etcd endpoint, uid) and keeps its spec and status under
``contract.local_control_prefix(name)`` in its embedded etcd. ``rpcjob scale`` validates the new
spec exactly as the cluster would (schema, CEL transition rules, operator checks) and writes
``scale/<role>``; the running job applies it on its next cycle.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rpcjob import contract
from rpcjob.etcd import Client, EtcdError
from rpcjob_operator import crdschema, spec_schema
from rpcjob_operator.localexec import jobfile, lifeline

ENV_STATE_DIR = "RPCJOB_STATE_DIR"


class ControlError(RuntimeError):
    pass


def state_dir() -> Path:
    raw = os.environ.get(ENV_STATE_DIR)
    return Path(raw) if raw else Path.home() / ".rpcjob" / "local"


@dataclass(frozen=True)
class Registration:
    name: str
    pid: int
    etcd: str
    uid: str

    @property
    def path(self) -> Path:
        return state_dir() / f"{self.name}.json"

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.__dict__))
        tmp.replace(self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def running_jobs() -> list[str]:
    d = state_dir()
    return sorted(p.stem for p in d.glob("*.json")) if d.is_dir() else []


def find(name: str) -> Registration:
    path = state_dir() / f"{name}.json"
    try:
        reg = Registration(**json.loads(path.read_text()))
    except FileNotFoundError:
        known = ", ".join(running_jobs()) or "none"
        raise ControlError(
            f"no local job named {name!r} is running (running: {known}); start one with "
            "'rpcjob run JOB.yaml'"
        ) from None
    if not lifeline.alive(reg.pid):
        reg.remove()
        raise ControlError(f"local job {name!r} is no longer running (pid {reg.pid} is gone)")
    return reg


def keys(name: str) -> tuple[str, str, str]:
    root = contract.local_control_prefix(name)
    return root + "spec", root + "status", root + "scale/"


def read_json(client: Client, key: str) -> dict[str, Any]:
    kv = client.get(key)
    if kv is None:
        raise ControlError(f"the running job has not published {key!r} yet; try again")
    value: dict[str, Any] = json.loads(kv.value)
    return value


def parse_scale(args: tuple[str, ...] | list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for arg in args:
        role, sep, n = arg.partition("=")
        if not sep or not role or not n.strip().lstrip("-").isdigit():
            raise ControlError(f"{arg!r}: expected ROLE=REPLICAS, e.g. worker=8")
        out[role] = int(n)
    if not out:
        raise ControlError("nothing to scale: give ROLE=REPLICAS, e.g. worker=8")
    return out


def scale(name: str, replicas: dict[str, int]) -> dict[str, Any]:
    """Validate and request a scale; returns the new spec. Raises ControlError naming the fix."""
    reg = find(name)
    spec_key, _status_key, scale_prefix = keys(name)
    with Client(reg.etcd, timeout=5.0) as client:
        try:
            old = read_json(client, spec_key)
            new: dict[str, Any] = json.loads(json.dumps(old))
            for role, n in replicas.items():
                roles = new.get("spec", {}).get("roles", {})
                if role not in roles:
                    raise ControlError(
                        f"job {name!r} has no role {role!r} (roles: {', '.join(sorted(roles))})"
                    )
                roles[role]["replicas"] = n
            errs = crdschema.validate(spec_schema.crd(), new, old)
            if errs:
                raise ControlError("scale rejected:\n" + "\n".join(f"  - {e}" for e in errs))
            jobfile.validate(new, source=name)
            for role, n in replicas.items():
                client.put(scale_prefix + role, str(n))
        except EtcdError as exc:
            raise ControlError(f"cannot reach local job {name!r}: {exc}") from exc
        except jobfile.JobFileError as exc:
            raise ControlError(str(exc)) from exc
    return new


def status(name: str) -> dict[str, Any]:
    reg = find(name)
    with Client(reg.etcd, timeout=5.0) as client:
        try:
            return read_json(client, keys(name)[1])
        except EtcdError as exc:
            raise ControlError(f"cannot reach local job {name!r}: {exc}") from exc
