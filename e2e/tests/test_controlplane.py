"""The real control plane (e2e/cluster): what the emulated API server got wrong, checked with the
kubectl built from the same pinned release.

Each check here is the API server's own behaviour (version, dry-run, watch tables, RBAC,
service-account tokens, the CRD's validation rules): on this process's private cluster
(e2e/backends/private.py: the CRD installed, no operator running during these tests), each test
in namespaces of its own. Skips only when the binaries are not built or not root.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from e2e.backends import private
from e2e.cluster import build
from e2e.cluster.cluster import unavailable
from tests.helm_chart import CHART, helm_binary

from .jobs import elastic_job

pytestmark = pytest.mark.slow  # the private control plane

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "rpcjob.dev_rpcjobs.yaml"
TEST_LABEL = "rpcjob.dev/e2e-test-namespace"  # on the cluster-scoped objects a test makes


@dataclass
class K8s:
    """The private cluster as one test sees it: its namespace for jobs (``ns``) and one for the
    operator's ServiceAccount (``operator_ns``)."""

    kubeconfig: str
    ns: str
    operator_ns: str


@pytest.fixture
def k8s() -> Iterator[K8s]:
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    cluster = private.get()
    with cluster.namespace("cp") as ns, cluster.namespace("cp-op") as operator_ns:
        try:
            yield K8s(cluster.kubeconfig, ns, operator_ns)
        finally:
            cluster.kubectl("delete", "clusterrole,clusterrolebinding", "-l", f"{TEST_LABEL}={ns}")


def kubectl(
    cluster: K8s, *args: str, check: bool = True, kubeconfig: Path | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = [str(build.binary("kubectl")), "--kubeconfig", str(kubeconfig or cluster.kubeconfig)]
    proc = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


def test_the_crd_is_accepted_by_the_api_server(k8s: K8s) -> None:
    # The emulated API server never ran the CEL cost estimator; the real one rejects rules
    # (and messageExpressions) whose estimated cost exceeds the budget. The check is a create
    # (an update exempts rules already stored): the CRD as it is under a group of its own,
    # dry-run, so the cluster's CRD stays as it is.
    crd = yaml.safe_load(CRD.read_text())
    group = f"crdcheck.{crd['spec']['group']}"
    crd["spec"]["group"] = group
    crd["metadata"]["name"] = f"{crd['spec']['names']['plural']}.{group}"
    proc = subprocess.run(
        [str(build.binary("kubectl")), "--kubeconfig", k8s.kubeconfig, "create",
         "--dry-run=server", "-o", "name", "-f", "-"],
        input=json.dumps(crd), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (
        proc.stdout.strip()
        == f"customresourcedefinition.apiextensions.k8s.io/{crd['metadata']['name']}"
    )


def test_kubectl_version_reports_the_pinned_release(k8s: K8s) -> None:
    out = json.loads(kubectl(k8s, "version", "-o", "json").stdout)
    pinned = build.pinned_version()
    assert out["serverVersion"]["gitVersion"] == pinned
    assert out["clientVersion"]["gitVersion"] == pinned


def test_scale_dry_run_server_changes_nothing(k8s: K8s) -> None:
    job = elastic_job("dry", replicas=1, max_replicas=4)
    _apply(k8s, job)
    before = json.loads(kubectl(k8s, "get", "rpj", "dry", "-n", k8s.ns, "-o", "json").stdout)
    out = kubectl(k8s, "scale", "rpj/dry", "-n", k8s.ns, "--replicas=3", "--dry-run=server")
    assert "scaled (server dry run)" in out.stdout
    after = json.loads(kubectl(k8s, "get", "rpj", "dry", "-n", k8s.ns, "-o", "json").stdout)
    assert after["spec"]["roles"]["worker"]["replicas"] == 1
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    # The same request without --dry-run does change it (the check above is not vacuous).
    kubectl(k8s, "scale", "rpj/dry", "-n", k8s.ns, "--replicas=3")
    scaled = json.loads(kubectl(k8s, "get", "rpj", "dry", "-n", k8s.ns, "-o", "json").stdout)
    assert scaled["spec"]["roles"]["worker"]["replicas"] == 3


def test_get_watch_keeps_the_printer_columns(k8s: K8s) -> None:
    _apply(k8s, elastic_job("watched", replicas=1))
    cmd = [str(build.binary("kubectl")), "--kubeconfig", str(k8s.kubeconfig),
           "get", "rpj", "watched", "-n", k8s.ns, "-w"]  # fmt: skip
    with subprocess.Popen(cmd, stdout=subprocess.PIPE) as watch:
        try:
            lines = _Lines(watch)
            assert lines.next(60).split() == ["NAME", "READY", "RESTARTS", "STATE", "AGE"]
            lines.next(60)  # the first listing
            status = {"status": {"ready": "1/1", "restarts": 7, "state": "Running"}}
            kubectl(k8s, "patch", "rpj", "watched", "-n", k8s.ns, "--subresource=status",
                    "--type=merge", "-p", json.dumps(status))  # fmt: skip
            row = lines.next(60).split()
            assert row[:4] == ["watched", "1/1", "7", "Running"], row
        finally:
            watch.kill()


def test_auth_can_i_follows_the_charts_rbac(k8s: K8s) -> None:
    sa = _install_operator_rbac(k8s)
    as_sa = f"--as=system:serviceaccount:{k8s.operator_ns}:{sa}"
    allowed = kubectl(k8s, "auth", "can-i", "patch", "rpcjobs.rpcjob.dev", "-n", k8s.ns, as_sa)
    assert allowed.stdout.strip() == "yes"
    denied = kubectl(k8s, "auth", "can-i", "delete", "nodes", as_sa, check=False)
    assert (denied.returncode, denied.stdout.strip()) == (1, "no")
    secrets = kubectl(k8s, "auth", "can-i", "get", "secrets", "-n", "kube-system", as_sa,
                      check=False)  # fmt: skip
    assert secrets.stdout.strip() == "no"


def test_service_account_token_from_the_api_server_authenticates(k8s: K8s, tmp_path: Path) -> None:
    sa = _install_operator_rbac(k8s)
    token = kubectl(k8s, "create", "token", sa, "-n", k8s.operator_ns, "--duration=10m").stdout
    config = yaml.safe_load(Path(k8s.kubeconfig).read_text())
    config["users"] = [{"name": "sa", "user": {"token": token.strip()}}]
    config["contexts"][0]["context"]["user"] = "sa"
    token_config = tmp_path / "token.kubeconfig"
    token_config.write_text(yaml.safe_dump(config))
    who = json.loads(kubectl(k8s, "auth", "whoami", "-o", "json", kubeconfig=token_config).stdout)
    assert who["status"]["userInfo"]["username"] == f"system:serviceaccount:{k8s.operator_ns}:{sa}"
    # The token carries the ServiceAccount's permissions, nothing more.
    kubectl(k8s, "get", "rpj", "-n", k8s.ns, kubeconfig=token_config)
    denied = kubectl(k8s, "get", "secrets", "-n", "kube-system", kubeconfig=token_config,
                     check=False)  # fmt: skip
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower()
    bogus = tmp_path / "bogus.kubeconfig"
    config["users"][0]["user"]["token"] = token.strip()[:-4] + "AAAA"
    bogus.write_text(yaml.safe_dump(config))
    unauth = kubectl(k8s, "get", "rpj", "-n", k8s.ns, kubeconfig=bogus, check=False)
    assert "Unauthorized" in unauth.stderr or "must be logged in" in unauth.stderr


# --- helpers ----------------------------------------------------------------------------------
def _apply(k8s: K8s, obj: dict[str, object]) -> None:
    proc = subprocess.run(
        [str(build.binary("kubectl")), "--kubeconfig", str(k8s.kubeconfig), "apply", "-n", k8s.ns,
         "-f", "-"], input=json.dumps(obj), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr


class _Lines:
    """Lines of a child's stdout, each awaited with a deadline (never blocks forever)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.fd = proc.stdout.fileno()
        self.buf = b""

    def next(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line from kubectl within {timeout}s: {self.buf!r}")
            if select.select([self.fd], [], [], min(left, 0.5))[0]:
                chunk = os.read(self.fd, 65536)
                assert chunk, f"kubectl exited; partial output {self.buf!r}"
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()


def _install_operator_rbac(k8s: K8s) -> str:
    """The chart's operator ServiceAccount and RBAC (helm template, applied as the admin; a
    release named after the test, so its ClusterRoles are the test's own); returns the
    ServiceAccount's name."""
    out = subprocess.run(
        [str(helm_binary()), "template", f"rpcjob-{k8s.ns}", str(CHART), "-n", k8s.operator_ns,
         "--show-only", "templates/operator-serviceaccount.yaml",
         "--show-only", "templates/rbac-operator.yaml"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    docs = [d for d in yaml.safe_load_all(out) if d]
    for doc in docs:
        doc["metadata"].setdefault("labels", {})[TEST_LABEL] = k8s.ns  # the fixture deletes them
        proc = subprocess.run(
            [str(build.binary("kubectl")), "--kubeconfig", k8s.kubeconfig, "apply",
             "--server-side", "-n", k8s.operator_ns, "-f", "-"],
            input=json.dumps(doc), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
    return str(next(d for d in docs if d["kind"] == "ServiceAccount")["metadata"]["name"])
