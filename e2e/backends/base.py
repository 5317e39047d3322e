"""The e2e ``Cluster``: one namespace on a running backend, driven with the REAL kubectl.

Scenarios only use this class, so they run unchanged on every backend (cluster, kind). Every
read and write goes through kubectl with the backend's kubeconfig (cluster: the kubectl built
from the pinned release); the backend adds what kubectl cannot do the same way everywhere
(operator restart, etcd access, the API server's audit log).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

from rpcjob import contract

if TYPE_CHECKING:
    from rpcjob.etcd import Client

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]


class KubectlError(AssertionError):
    """kubectl exited non-zero where the scenario needed it to succeed."""

    def __init__(self, args: tuple[str, ...], proc: subprocess.CompletedProcess[str]) -> None:
        super().__init__(
            f"kubectl {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}{proc.stdout}"
        )
        self.proc = proc


class WaitTimeout(AssertionError):
    pass


def wait_for(
    predicate: Callable[[], T | None],
    timeout: float,
    what: str,
    interval: float = 0.2,
    *,
    fatal: tuple[type[Exception], ...] = (),
) -> T:
    """Poll ``predicate`` until it returns something truthy (returned) or the deadline passes.

    Exceptions from the predicate count as "not yet" (but ``fatal`` ones end the wait); the last
    one is part of the timeout error, as is the last falsy value (so a failure says what the
    cluster looked like).
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = predicate()
            if value:
                return value
            last = value
        except fatal:
            raise
        except Exception as exc:  # not there yet
            last = exc
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")
        time.sleep(interval)


class Backend:
    """What a backend provides: the kubeconfig, operator control, etcd and (cluster) audit."""

    name = "base"
    kubeconfig: str
    operator_namespace = "rpcjob-system"
    # Seconds allowed for a job to run an example to success (the kind backend pulls images).
    job_timeout = 240.0

    def prepare_namespace(self, namespace: str) -> None:
        """Anything a job namespace needs besides the Namespace (e.g. the job ServiceAccount)."""

    def use_example(self, folder: Path) -> None:
        """Make the images of ``folder``'s RpcJob runnable (examples/<x>/: each example's image
        has that folder as its WORKDIR, where `python -m app` finds app.py). On the cluster
        backend nothing to do: the process kubelet maps each example image to its folder."""

    def cleanup_namespace(self, namespace: str) -> None:
        """Undo prepare_namespace's cluster-scoped parts."""

    def operator_missing(self) -> str | None:
        """Why no operator runs (scenarios that need one skip with it), or None."""
        return None

    def restart_operator(self) -> None:
        raise NotImplementedError

    def operator_pods(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def operator_logs(self) -> str:
        raise NotImplementedError

    @contextmanager
    def etcd_client(self) -> Iterator[Client]:
        raise NotImplementedError
        yield  # pragma: no cover

    def audit_records(self) -> list[Any] | None:
        """The API server's audit log (cluster only); None where the backend has none."""
        return None

    def collect_logs(self, dest: Path, namespace: str) -> None:
        """Write what helps debug a failed test under ``dest``."""

    def kubectl_base(self) -> list[str]:
        binary = shutil.which("kubectl")
        if binary is None:
            raise FileNotFoundError("kubectl is not on PATH: install kubectl (any 1.29+ client)")
        return [binary, "--kubeconfig", self.kubeconfig]


class Cluster:
    """One test's namespace on a backend (API table: docs/testing.md, "The e2e suite")."""

    def __init__(self, backend: Backend, namespace: str) -> None:
        self.backend = backend
        self.namespace = namespace

    # --- kubectl ------------------------------------------------------------------------------
    def kubectl(
        self,
        *args: str,
        check: bool = True,
        input: str | None = None,
        timeout: float = 120,
        namespaced: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run the real kubectl in this namespace; raises KubectlError on failure if ``check``."""
        ns = ["--namespace", self.namespace] if namespaced else []
        proc = subprocess.run(
            [*self.backend.kubectl_base(), *ns, *args],
            input=input, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        if check and proc.returncode != 0:
            raise KubectlError(args, proc)
        return proc

    def apply(self, path_or_obj: str | Path | Mapping[str, Any]) -> str:
        """``kubectl apply -f`` a file or an object (written to a temp file); kubectl's stdout."""
        if isinstance(path_or_obj, Mapping):
            with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
                yaml.safe_dump(dict(path_or_obj), f)
            try:
                return self.kubectl("apply", "-f", f.name).stdout
            finally:
                Path(f.name).unlink()
        return self.kubectl("apply", "-f", str(path_or_obj)).stdout

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        """The object as JSON, or None when it does not exist."""
        proc = self.kubectl("get", kind, name, "-o", "json", "--ignore-not-found", check=True)
        return json.loads(proc.stdout) if proc.stdout.strip() else None

    def objects(self, kind: str, selector: str | None = None) -> list[dict[str, Any]]:
        args = ["get", kind, "-o", "json"]
        if selector:
            args += ["-l", selector]
        return list(json.loads(self.kubectl(*args).stdout)["items"])

    @staticmethod
    def wait_for(
        predicate: Callable[[], T | None], timeout: float, what: str, interval: float = 0.2
    ) -> T:
        """``wait_for``; a predicate that runs a Python CLI (a second of CPU) polls at a longer
        ``interval``, leaving the 2-core machine to what it waits for."""
        return wait_for(predicate, timeout, what, interval)

    # --- jobs and pods ------------------------------------------------------------------------
    def pods(self, job: str, role: str | None = None) -> list[dict[str, Any]]:
        """The job's pods (terminating ones included), sorted by name."""
        selector = f"{contract.LABEL_JOB_NAME}={job}"
        if role:
            selector += f",{contract.LABEL_ROLE}={role}"
        return sorted(self.objects("pods", selector), key=lambda p: p["metadata"]["name"])

    def live_pods(self, job: str, role: str | None = None) -> list[dict[str, Any]]:
        return [p for p in self.pods(job, role) if not p["metadata"].get("deletionTimestamp")]

    def delete_pod(self, name: str, force: bool = False) -> None:
        args = ["delete", "pod", name, "--wait=false"]
        if force:
            args += ["--grace-period=0", "--force"]
        self.kubectl(*args)

    def job(self, name: str) -> dict[str, Any] | None:
        return self.get(contract.PLURAL, name)

    def job_status(self, name: str) -> dict[str, Any]:
        job = self.job(name)
        return dict((job or {}).get("status") or {})

    def wait_state(self, name: str, state: str, timeout: float | None = None) -> dict[str, Any]:
        """Wait until the job's status.state is ``state``; fail at once on another final state."""
        final = {"Succeeded", "Failed", "Invalid"} - {state}

        def check() -> dict[str, Any] | None:
            status = self.job_status(name)
            if status.get("state") in final:
                raise AssertionError(f"job {name} ended {status['state']}: {json.dumps(status)}")
            return status if status.get("state") == state else None

        # an AssertionError from check (the job ended otherwise) ends the wait at once
        return wait_for(check, timeout or self.backend.job_timeout, f"{name} {state}", 0.3,
                        fatal=(AssertionError,))  # fmt: skip

    def logs(self, pod: str, container: str = contract.WORKER_CONTAINER) -> str:
        return self.kubectl("logs", pod, "-c", container, check=False).stdout

    # --- backend services -----------------------------------------------------------------
    @contextmanager
    def etcd(self) -> Iterator[Client]:
        with self.backend.etcd_client() as client:
            yield client

    def restart_operator(self) -> None:
        self.backend.restart_operator()

    def use_example(self, folder: Path) -> None:
        self.backend.use_example(folder)


# own_operator(values_files=(), extra_namespaces=0) -> Cluster (e2e/tests/conftest.py).
OwnOperator = Callable[..., Cluster]
