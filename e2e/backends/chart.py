"""The rpcjob chart on a real API server: ``helm install``/``uninstall`` (the real helm, private
config and cache dirs) and the operator the chart's Deployment runs, reached with kubectl."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.helm_chart import CHART, helm_binary

RELEASE = "rpcjob"


def _helm(kubeconfig: str, workdir: Path, args: list[str]) -> str:
    home = workdir / "helm"
    env = {
        **os.environ,
        "KUBECONFIG": kubeconfig,
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    proc = subprocess.run([str(helm_binary()), *args], env=env, capture_output=True, text=True,
                          timeout=330)  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"helm {' '.join(args)} failed:\n{proc.stderr}{proc.stdout}")
    return proc.stdout


def helm_install(
    kubeconfig: str,
    workdir: Path,
    namespace: str,
    set_values: Mapping[str, str] | None = None,
    values_files: Sequence[str] = (),
    set_json: Mapping[str, str] | None = None,
    wait: bool = False,
    release: str = RELEASE,
) -> str:
    """`helm install` the chart; helm's stdout."""
    args = ["install", release, str(CHART), "--namespace", namespace, "--create-namespace",
            "--timeout", "300s"]  # fmt: skip
    for path in values_files:
        args += ["-f", path]
    for key, value in sorted((set_values or {}).items()):
        args += ["--set", f"{key}={value}"]
    for key, value in sorted((set_json or {}).items()):
        args += ["--set-json", f"{key}={value}"]
    if wait:
        args.append("--wait")
    return _helm(kubeconfig, workdir, args)


def helm_uninstall(kubeconfig: str, workdir: Path, namespace: str, release: str) -> str:
    return _helm(kubeconfig, workdir, ["uninstall", release, "--namespace", namespace,
                                       "--ignore-not-found", "--timeout", "120s"])  # fmt: skip


class JobAccount:
    """The job ServiceAccount in each job namespace and its `get nodes` grant, for the backends
    whose chart serves the cluster scope (cluster, kind)."""

    if TYPE_CHECKING:

        def _kubectl(self, *args: str, timeout: float = 300) -> str: ...

    def prepare_namespace(self, namespace: str) -> None:
        """The job ServiceAccount (the chart creates it only in the namespaces it is told) and
        its `get nodes` grant, as `jobs.serviceAccount.namespaces` would."""
        self._kubectl("-n", namespace, "create", "serviceaccount", "rpcjob-job")
        self._kubectl("create", "clusterrolebinding", f"rpcjob-e2e-{namespace}",
                      f"--clusterrole={RELEASE}-node-reader",
                      f"--serviceaccount={namespace}:rpcjob-job")  # fmt: skip

    def cleanup_namespace(self, namespace: str) -> None:
        self._kubectl("delete", "clusterrolebinding", f"rpcjob-e2e-{namespace}",
                      "--ignore-not-found")  # fmt: skip


class ChartOperator:
    """The operator as the chart installs it (a Deployment), reached with kubectl: shared by
    the backends that install the chart (cluster, kind)."""

    # Provided by the backend: operator_namespace, kubectl_base(), _kubectl(*args).
    operator_namespace: str
    release: str = RELEASE  # names the Deployment (the release name contains the chart's)

    if TYPE_CHECKING:

        def _kubectl(self, *args: str, timeout: float = 300) -> str: ...

        def kubectl_base(self) -> list[str]: ...

    def operator_pods(self) -> list[dict[str, Any]]:
        out = self._kubectl("-n", self.operator_namespace, "get", "pods", "-o", "json", "-l",
                            "app.kubernetes.io/component=operator")  # fmt: skip
        return list(json.loads(out)["items"])

    def restart_operator(self) -> None:
        deploy = f"deployment/{self.release}-operator"
        self._kubectl("-n", self.operator_namespace, "rollout", "restart", deploy)
        self._kubectl("-n", self.operator_namespace, "rollout", "status", deploy,
                      "--timeout=300s")  # fmt: skip

    def operator_logs(self) -> str:
        return subprocess.run(
            [*self.kubectl_base(), "-n", self.operator_namespace, "logs",
             f"deployment/{self.release}-operator", "--all-containers", "--tail=-1"],
            capture_output=True, text=True, timeout=120,
        ).stdout  # fmt: skip
