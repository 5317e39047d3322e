"""``LocalCluster``: the emulated API server + process kubelet + kubeconfig, in this process."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import yaml

from .errors import ApiError
from .kubelet import Kubelet, NodeSpec
from .server import ApiServer
from .workloads import WorkloadControllers

T = TypeVar("T")
REPO_ROOT = Path(__file__).resolve().parents[2]
# Images whose entrypoint the kubelet knows (matched on the last path component, tag ignored).
DEFAULT_IMAGE_ENTRYPOINTS: dict[str, list[str]] = {
    "rpcjob-sidecar": ["rpcjob-sidecar"],
    "rpcjob-operator": ["rpcjob-operator"],
}


def example_workdirs() -> dict[str, str]:
    """The WORKDIR of each example image (examples/worker-image/Dockerfile builds
    ``example-<folder with '-'>`` with the folder as /app): the folder itself, locally."""
    out = {}
    for folder in sorted((REPO_ROOT / "examples").glob("*/")):
        if (folder / "app.py").exists():
            out["example-" + folder.name.replace("_", "-")] = str(folder)
    return out


class OperatorUnavailable(RuntimeError):
    pass


class WaitTimeout(AssertionError):
    pass


def kubeconfig_text(url: str, namespace: str = "default") -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "rpcjob-local", "cluster": {"server": url}}],
            # A token so that clients which insist on credentials (kopf) find one; never checked.
            "users": [{"name": "rpcjob-local", "user": {"token": "local-cluster"}}],
            "contexts": [
                {
                    "name": "rpcjob-local",
                    "context": {
                        "cluster": "rpcjob-local",
                        "user": "rpcjob-local",
                        "namespace": namespace,
                    },
                }
            ],
            "current-context": "rpcjob-local",
        }
    )


class LocalCluster:
    def __init__(
        self,
        *,
        nodes: int = 1,
        gpus_per_node: int = 0,
        node_labels: Mapping[str, str] | Sequence[Mapping[str, str]] | None = None,
        workdir: str | None = None,
        kubeconfig: str | None = None,
        crds: str | Path | None = REPO_ROOT / "crds",
        kubelet: bool = True,
        image_entrypoints: Mapping[str, Sequence[str]] | None = None,
        image_workdirs: Mapping[str, str] | None = None,
        pod_env: Mapping[str, str] | None = None,
        backoff_base: float = 1.0,
        backoff_cap: float = 10.0,
        bookmark_interval: float = 5.0,
        port: int = 0,
        default_cwd: str | None = None,
        workloads: bool = False,
    ) -> None:
        self._own_workdir = workdir is None
        self.workdir = workdir or tempfile.mkdtemp(prefix="rpcjob-localcluster-")
        self.kubeconfig = kubeconfig or os.path.join(self.workdir, "kubeconfig")
        self.server = ApiServer(port=port, bookmark_interval=bookmark_interval)
        self.store = self.server.store
        self.audit = self.server.audit
        # Deployment -> ReplicaSet -> Pod and Service cluster IPs (workloads.py), when asked.
        self.workloads = WorkloadControllers(self.store) if workloads else None
        self.crds = Path(crds) if crds else None
        labels: list[Mapping[str, str]] = (
            list(node_labels)
            if isinstance(node_labels, list | tuple)
            else [cast(Mapping[str, str], node_labels or {})] * nodes
        )
        self.node_specs = [
            NodeSpec.make(i, gpus_per_node, labels[i] if i < len(labels) else {})
            for i in range(nodes)
        ]
        self.kubelet: Kubelet | None = None
        self._kubelet_opts: dict[str, Any] = dict(
            default_cwd=default_cwd or str(REPO_ROOT),
            image_entrypoints={**DEFAULT_IMAGE_ENTRYPOINTS, **(image_entrypoints or {})},
            image_workdirs={**example_workdirs(), **(image_workdirs or {})},
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
        )
        self._pod_env = dict(pod_env or {})
        self._with_kubelet = kubelet
        self.operator: subprocess.Popen[bytes] | None = None

    # --- lifecycle ----------------------------------------------------------------------
    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> LocalCluster:
        self.server.start()
        Path(self.kubeconfig).write_text(kubeconfig_text(self.url))
        if self.crds and self.crds.is_dir():
            for f in sorted(self.crds.glob("*.yaml")):
                self.apply_file(f)
        if self._with_kubelet:
            env = {"KUBECONFIG": self.kubeconfig, **self._pod_env}
            self.kubelet = Kubelet(
                self.store,
                self.node_specs,
                os.path.join(self.workdir, "pods"),
                extra_env=env,
                **self._kubelet_opts,
            )
            self.kubelet.start()
            self.server.handlers.pod_logs = self.kubelet.logs
        return self

    def stop(self) -> None:
        self.stop_operator()
        if self.kubelet is not None:
            self.kubelet.stop()
        self.server.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- clients ------------------------------------------------------------------------
    def api_client(self) -> Any:
        """A fresh ``kubernetes.client.ApiClient`` for this cluster (close it when done)."""
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = self.url
        return client.ApiClient(cfg)

    def kubectl(
        self, *args: str, check: bool = False, timeout: float = 60, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        binary = shutil.which("kubectl")
        if binary is None:
            raise FileNotFoundError("kubectl is not on PATH")
        return subprocess.run(
            [binary, "--kubeconfig", self.kubeconfig, *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )

    # --- objects --------------------------------------------------------------------------
    def apply_docs(self, docs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """Create (or replace) objects in-process, like ``kubectl apply`` without the diff."""
        out = []
        for doc in docs:
            if not doc:
                continue
            rt = self.store.registry.by_kind(doc["apiVersion"], doc["kind"])
            if rt is None:
                raise ValueError(
                    f"{doc['apiVersion']}/{doc['kind']} is not served by the local cluster"
                )
            meta = doc.get("metadata") or {}
            ns = meta.get("namespace", "default") if rt.namespaced else None
            try:
                out.append(self.store.create(rt, ns, doc))
            except ApiError as exc:
                if exc.code != 409:
                    raise
                cur = self.store.get(rt, ns, meta["name"])
                body = {**doc, "metadata": {**cur["metadata"], **meta}}
                out.append(self.store.update(rt, ns, meta["name"], body))
        return out

    def apply_file(self, path: str | Path) -> list[dict[str, Any]]:
        return self.apply_docs(yaml.safe_load_all(Path(path).read_text()))

    def create_namespace(self, name: str) -> str:
        self.apply_docs([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}])
        return name

    def add_node(self, index: int, gpus: int = 0, labels: Mapping[str, str] | None = None) -> str:
        spec = NodeSpec.make(index, gpus, labels)
        assert self.kubelet is not None, "the cluster runs without a kubelet"
        self.kubelet.add_node(spec)
        return spec.name

    def pod_logs(self, namespace: str, name: str, container: str | None = None) -> str:
        assert self.kubelet is not None
        return self.kubelet.logs(namespace, name, container)

    # --- waiting --------------------------------------------------------------------------
    @staticmethod
    def wait_for(
        predicate: Callable[[], T],
        timeout: float = 30.0,
        interval: float = 0.05,
        message: str = "condition",
    ) -> T:
        """Poll ``predicate`` until it returns a truthy value (returned) or raise WaitTimeout.
        Exceptions from the predicate count as "not yet" and the last one is reported."""
        deadline = time.monotonic() + timeout
        last_exc: BaseException | None = None
        while True:
            try:
                value = predicate()
                if value:
                    return value
            except Exception as exc:  # not there yet
                last_exc = exc
            if time.monotonic() >= deadline:
                extra = f" (last error: {last_exc!r})" if last_exc else ""
                raise WaitTimeout(f"timed out after {timeout}s waiting for {message}{extra}")
            time.sleep(interval)

    # --- operator -------------------------------------------------------------------------
    def start_operator(
        self,
        args: Sequence[str] = ("--all-namespaces",),
        env: Mapping[str, str] | None = None,
        log_path: str | None = None,
    ) -> subprocess.Popen[bytes]:
        if importlib.util.find_spec("rpcjob_operator.main") is None:
            raise OperatorUnavailable(
                "rpcjob_operator.main is not importable: rpcjob is not installed "
                "('pip install -e .[dev]'); start without "
                "--with-operator and run the operator yourself with KUBECONFIG=" + self.kubeconfig
            )
        full_env = {**os.environ, "KUBECONFIG": self.kubeconfig, **(env or {})}
        log_path = log_path or os.path.join(self.workdir, "operator.log")
        with open(log_path, "ab") as out:
            self.operator = subprocess.Popen(
                [sys.executable, "-m", "rpcjob_operator.main", *args],
                env=full_env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=str(REPO_ROOT),
                start_new_session=True,
            )
        return self.operator

    def stop_operator(self, grace: float = 10.0) -> int | None:
        proc, self.operator = self.operator, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode
