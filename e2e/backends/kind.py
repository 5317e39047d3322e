"""The ``kind`` backend: a kind cluster (pinned config, e2e/kind/kind-config.yaml), the images
built from the repository's Dockerfiles and ``kind load``-ed, the chart installed with
``helm install --wait`` (bundled etcd), a namespace per test.

Skipped cleanly (``unavailable()`` returns the reason) when docker, a running docker engine,
kind or kubectl is missing. Knobs (environment):

* ``RPCJOB_E2E_KIND_CLUSTER`` — cluster name (default ``rpcjob-e2e``); an existing cluster of
  that name is reused (images are still rebuilt and loaded, the release upgraded).
* ``RPCJOB_E2E_KIND_KEEP=1`` — keep the cluster after the run (default: delete what we created).
* ``RPCJOB_E2E_SKIP_BUILD=1`` — do not build images (they exist locally already).
* ``RPCJOB_E2E_TORCH_IMAGE`` — base image of the example worker image (its ``TORCH_IMAGE``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import yaml

from rpcjob.etcd import Client
from tests.helm_chart import CHART, helm_binary

from .base import REPO, Backend, wait_for
from .chart import ChartOperator, JobAccount

KIND_CONFIG = REPO / "e2e" / "kind" / "kind-config.yaml"
TAG = "e2e"
OPERATOR_IMAGE = f"ghcr.io/rpcjob/rpcjob-operator:{TAG}"
SIDECAR_IMAGE = f"ghcr.io/rpcjob/rpcjob-sidecar:{TAG}"
# The scenarios' own workloads (python -c ...) need torch + rpcjob only: any example image.
WORKER_IMAGE = f"ghcr.io/rpcjob/e2e-worker:{TAG}"
WORKER_DOCKERFILE = "examples/worker-image/Dockerfile"
IMAGES = (
    (OPERATOR_IMAGE, "operator/Dockerfile", ()),
    (SIDECAR_IMAGE, "sidecar/Dockerfile", ()),
    (WORKER_IMAGE, WORKER_DOCKERFILE, ("EXAMPLE=parameter_server",)),
)
RELEASE = "rpcjob"


def _run(*args: str, timeout: float = 900, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=str(REPO))  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(args)} exited {proc.returncode}:\n{proc.stderr}{proc.stdout}"
        )
    return proc.stdout


def unavailable() -> str | None:
    """Why the kind backend cannot run here, or None."""
    for tool in ("docker", "kind", "kubectl"):
        if shutil.which(tool) is None:
            return f"the kind backend needs {tool} on PATH"
    try:
        info = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"],
                              capture_output=True, text=True, timeout=30)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"docker info failed: {exc}"
    if info.returncode != 0 or not info.stdout.strip():
        first = (info.stderr.strip().splitlines() or ["no server version"])[0]
        return f"no docker engine (`docker info` failed: {first})"
    try:
        helm_binary()
    except RuntimeError as exc:
        return str(exc)
    return None


class KindBackend(JobAccount, ChartOperator, Backend):
    name = "kind"
    job_timeout = 600.0  # first pulls of the torch image are slow

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.cluster_name = os.environ.get("RPCJOB_E2E_KIND_CLUSTER", "rpcjob-e2e")
        self.kubeconfig = str(workdir / "kubeconfig")
        self.created = False
        self.loaded: set[str] = set()

    # --- lifecycle ----------------------------------------------------------------------
    def start(self) -> KindBackend:
        existing = _run("kind", "get", "clusters").split()
        if self.cluster_name in existing:
            _run("kind", "export", "kubeconfig", "--name", self.cluster_name,
                 "--kubeconfig", self.kubeconfig)  # fmt: skip
        else:
            _run("kind", "create", "cluster", "--name", self.cluster_name, "--config",
                 str(KIND_CONFIG), "--kubeconfig", self.kubeconfig, "--wait", "180s")  # fmt: skip
            self.created = True
        try:
            self._images()
            self._install_chart()
        except BaseException:
            self.stop()
            raise
        return self

    def _images(self) -> None:
        for image, dockerfile, build_args in IMAGES:
            self._image(image, dockerfile, build_args)

    def _image(self, image: str, dockerfile: str, build_args: Sequence[str]) -> None:
        """Build (unless RPCJOB_E2E_SKIP_BUILD=1) and `kind load` one image, once per run."""
        if image in self.loaded:
            return
        if os.environ.get("RPCJOB_E2E_SKIP_BUILD") != "1":
            args = [a for arg in build_args for a in ("--build-arg", arg)]
            torch_image = os.environ.get("RPCJOB_E2E_TORCH_IMAGE")
            if torch_image and dockerfile == WORKER_DOCKERFILE:
                args += ["--build-arg", f"TORCH_IMAGE={torch_image}"]
            _run("docker", "build", "-f", dockerfile, "-t", image, *args, ".", timeout=3600)
        _run("kind", "load", "docker-image", image, "--name", self.cluster_name, timeout=1800)
        self.loaded.add(image)

    def use_example(self, folder: Path) -> None:
        """Build and load the example's image: examples/worker-image/Dockerfile with
        EXAMPLE=<folder> (its WORKDIR holds the example's app.py), tagged as the RpcJob names it."""
        job = yaml.safe_load((folder / "rpcjob.yaml").read_text())
        for role in job["spec"]["roles"].values():
            for c in role["template"]["spec"]["containers"]:
                self._image(c["image"], WORKER_DOCKERFILE, (f"EXAMPLE={folder.name}",))

    def _helm(self, *args: str, timeout: float = 900) -> str:
        env = {**os.environ, "KUBECONFIG": self.kubeconfig}
        return _run(str(helm_binary()), *args, env=env, timeout=timeout)

    def _install_chart(self) -> None:
        self._helm(
            "upgrade", "--install", RELEASE, str(CHART), "--namespace", self.operator_namespace,
            "--create-namespace", "--wait", "--timeout", "10m",
            "--set", f"operator.image.tag={TAG}", "--set", "operator.image.pullPolicy=Never",
            "--set", f"jobs.sidecar.image.tag={TAG}",
            "--set", "jobs.sidecar.image.pullPolicy=Never",
        )  # fmt: skip

    def stop(self) -> None:
        if self.created and os.environ.get("RPCJOB_E2E_KIND_KEEP") != "1":
            subprocess.run(["kind", "delete", "cluster", "--name", self.cluster_name],
                           capture_output=True, timeout=300)  # fmt: skip

    def _kubectl(self, *args: str, timeout: float = 300) -> str:
        return _run(*self.kubectl_base(), *args, timeout=timeout)

    # --- operator -----------------------------------------------------------------------
    # --- etcd (the bundled one, through a port-forward) --------------------------------
    @contextmanager
    def etcd_client(self) -> Iterator[Client]:
        proc = subprocess.Popen(
            [*self.kubectl_base(), "-n", self.operator_namespace, "port-forward",
             f"svc/{RELEASE}-etcd", ":2379"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            stdout = proc.stdout

            def port() -> int | None:
                line = stdout.readline()
                m = re.search(r"Forwarding from 127\.0\.0\.1:(\d+)", line)
                if m:
                    return int(m.group(1))
                if proc.poll() is not None:
                    raise AssertionError(f"kubectl port-forward exited: {line}")
                return None

            local = wait_for(port, 60, "kubectl port-forward to the bundled etcd")
            client = Client([f"127.0.0.1:{local}"])
            try:
                yield client
            finally:
                client.close()
        finally:
            proc.terminate()
            proc.wait(10)

    def collect_logs(self, dest: Path, namespace: str) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "operator.log").write_text(self.operator_logs())
        subprocess.run(["kind", "export", "logs", str(dest / "kind"), "--name", self.cluster_name],
                       capture_output=True, timeout=600)  # fmt: skip
