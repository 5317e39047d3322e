"""The rpcjob chart for the local e2e backend: ``helm install`` (the real helm) and the operator
Deployment's container as a plain process (``RPCJOB_E2E_OPERATOR=process``)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.helm_chart import CHART, helm_binary

RELEASE = "rpcjob"


def helm_install(
    kubeconfig: str,
    workdir: Path,
    namespace: str,
    set_values: Mapping[str, str] | None = None,
    values_files: Sequence[str] = (),
    set_json: Mapping[str, str] | None = None,
    wait: bool = False,
) -> str:
    """`helm install` the chart (the real helm, private config/cache dirs); helm's stdout."""
    home = workdir / "helm"
    env = {
        **os.environ,
        "KUBECONFIG": kubeconfig,
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    args = [
        "install",
        RELEASE,
        str(CHART),
        "--namespace",
        namespace,
        "--create-namespace",
        "--timeout",
        "300s",
    ]
    for path in values_files:
        args += ["-f", path]
    for key, value in sorted((set_values or {}).items()):
        args += ["--set", f"{key}={value}"]
    for key, value in sorted((set_json or {}).items()):
        args += ["--set-json", f"{key}={value}"]
    if wait:
        args.append("--wait")
    proc = subprocess.run([str(helm_binary()), *args], env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"helm {' '.join(args)} failed:\n{proc.stderr}{proc.stdout}")
    return proc.stdout


def operator_deployment(docs: Iterable[dict[str, Any]]) -> dict[str, Any]:
    found = [
        d
        for d in docs
        if d["kind"] == "Deployment"
        and d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "operator"
    ]
    if len(found) != 1:
        raise ValueError(f"the chart rendered {len(found)} operator Deployments, expected 1")
    return found[0]


def literal_env(container: Mapping[str, Any], field_values: Mapping[str, str]) -> dict[str, str]:
    """A container's env with fieldRefs resolved from ``field_values`` (for a process)."""
    out: dict[str, str] = {}
    for item in container.get("env") or []:
        if "value" in item:
            out[item["name"]] = str(item["value"])
        elif "fieldRef" in (item.get("valueFrom") or {}):
            path = item["valueFrom"]["fieldRef"]["fieldPath"]
            if path not in field_values:
                raise ValueError(f"env {item['name']}: no local value for fieldRef {path}")
            out[item["name"]] = field_values[path]
        else:
            raise ValueError(f"env {item['name']}: only literal values and fieldRefs run locally")
    return out


class ChartOperator:
    """The operator as the chart installs it (a Deployment), reached with kubectl: shared by
    the backends that install the chart on a real API server (cluster, kind)."""

    # Provided by the backend: operator_namespace, kubectl_base(), _kubectl(*args).
    operator_namespace: str

    def operator_pods(self) -> list[dict[str, Any]]:
        import json

        out = self._kubectl("-n", self.operator_namespace, "get", "pods", "-o", "json", "-l",
                            "app.kubernetes.io/component=operator")  # fmt: skip
        return list(json.loads(out)["items"])

    def restart_operator(self) -> None:
        deploy = f"deployment/{RELEASE}-operator"
        self._kubectl("-n", self.operator_namespace, "rollout", "restart", deploy)
        self._kubectl("-n", self.operator_namespace, "rollout", "status", deploy,
                      "--timeout=300s")  # fmt: skip

    def operator_logs(self) -> str:
        return subprocess.run(
            [*self.kubectl_base(), "-n", self.operator_namespace, "logs",
             f"deployment/{RELEASE}-operator", "--all-containers", "--tail=-1"],
            capture_output=True, text=True, timeout=120,
        ).stdout  # fmt: skip
