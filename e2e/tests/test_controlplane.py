"""The real control plane (e2e/cluster): what the emulated API server got wrong, checked with the
kubectl built from the same pinned release.

No nodes: each check here is the API server's own behaviour (version, dry-run, watch tables,
RBAC, service-account tokens). Skips only when the binaries are not built or not root.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.cluster import build
from e2e.cluster.cluster import E2ECluster, unavailable
from tests.helm_chart import CHART, helm_binary

from .jobs import elastic_job

pytestmark = pytest.mark.slow  # starts a whole control plane

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "rpcjob.dev_rpcjobs.yaml"
NS = "cp-test"
CRD_REJECTION: list[str] = []  # the API server's answer to crds/ as it is ("" = accepted)
OPERATOR_NS = "rpcjob-system"


@pytest.fixture(scope="module")
def k8s(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2ECluster]:
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    cluster = E2ECluster(tmp_path_factory.mktemp("k8s"), nodes=0).start()
    try:
        crd = kubectl(cluster, "apply", "--server-side", "-f", str(CRD), check=False)
        CRD_REJECTION.append(crd.stderr if crd.returncode else "")
        if crd.returncode:  # test_the_crd_is_accepted reports it; the rest need a CRD
            _apply_cluster(cluster, _without_message_expressions(yaml.safe_load(CRD.read_text())))
        kubectl(cluster, "wait", "--for=condition=Established", "crd/rpcjobs.rpcjob.dev")
        kubectl(cluster, "create", "namespace", NS)
        yield cluster
    finally:
        cluster.stop()


def kubectl(
    cluster: E2ECluster, *args: str, check: bool = True, kubeconfig: Path | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = [str(build.binary("kubectl")), "--kubeconfig", str(kubeconfig or cluster.kubeconfig)]
    proc = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


def test_the_crd_is_accepted_by_the_api_server(k8s: E2ECluster) -> None:
    # The emulated API server never ran the CEL cost estimator; the real one rejects rules
    # (and messageExpressions) whose estimated cost exceeds the budget.
    assert CRD_REJECTION == [""], CRD_REJECTION[0]


def test_kubectl_version_reports_the_pinned_release(k8s: E2ECluster) -> None:
    out = json.loads(kubectl(k8s, "version", "-o", "json").stdout)
    pinned = build.pinned_version()
    assert out["serverVersion"]["gitVersion"] == pinned
    assert out["clientVersion"]["gitVersion"] == pinned


def test_scale_dry_run_server_changes_nothing(k8s: E2ECluster) -> None:
    job = elastic_job("dry", replicas=1, max_replicas=4)
    _apply(k8s, job)
    before = json.loads(kubectl(k8s, "get", "rpj", "dry", "-n", NS, "-o", "json").stdout)
    out = kubectl(k8s, "scale", "rpj/dry", "-n", NS, "--replicas=3", "--dry-run=server")
    assert "scaled (server dry run)" in out.stdout
    after = json.loads(kubectl(k8s, "get", "rpj", "dry", "-n", NS, "-o", "json").stdout)
    assert after["spec"]["roles"]["worker"]["replicas"] == 1
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    # The same request without --dry-run does change it (the check above is not vacuous).
    kubectl(k8s, "scale", "rpj/dry", "-n", NS, "--replicas=3")
    scaled = json.loads(kubectl(k8s, "get", "rpj", "dry", "-n", NS, "-o", "json").stdout)
    assert scaled["spec"]["roles"]["worker"]["replicas"] == 3


def test_get_watch_keeps_the_printer_columns(k8s: E2ECluster) -> None:
    _apply(k8s, elastic_job("watched", replicas=1))
    cmd = [str(build.binary("kubectl")), "--kubeconfig", str(k8s.kubeconfig),
           "get", "rpj", "watched", "-n", NS, "-w"]  # fmt: skip
    with subprocess.Popen(cmd, stdout=subprocess.PIPE) as watch:
        try:
            lines = _Lines(watch)
            assert lines.next(60).split() == ["NAME", "READY", "RESTARTS", "STATE", "AGE"]
            lines.next(60)  # the first listing
            status = {"status": {"ready": "1/1", "restarts": 7, "state": "Running"}}
            kubectl(k8s, "patch", "rpj", "watched", "-n", NS, "--subresource=status",
                    "--type=merge", "-p", json.dumps(status))  # fmt: skip
            row = lines.next(60).split()
            assert row[:4] == ["watched", "1/1", "7", "Running"], row
        finally:
            watch.kill()


def test_auth_can_i_follows_the_charts_rbac(k8s: E2ECluster) -> None:
    sa = _install_operator_rbac(k8s)
    as_sa = f"--as=system:serviceaccount:{OPERATOR_NS}:{sa}"
    allowed = kubectl(k8s, "auth", "can-i", "patch", "rpcjobs.rpcjob.dev", "-n", NS, as_sa)
    assert allowed.stdout.strip() == "yes"
    denied = kubectl(k8s, "auth", "can-i", "delete", "nodes", as_sa, check=False)
    assert (denied.returncode, denied.stdout.strip()) == (1, "no")
    secrets = kubectl(k8s, "auth", "can-i", "get", "secrets", "-n", "kube-system", as_sa,
                      check=False)  # fmt: skip
    assert secrets.stdout.strip() == "no"


def test_service_account_token_from_the_api_server_authenticates(
    k8s: E2ECluster, tmp_path: Path
) -> None:
    sa = _install_operator_rbac(k8s)
    token = kubectl(k8s, "create", "token", sa, "-n", OPERATOR_NS, "--duration=10m").stdout
    config = yaml.safe_load(k8s.kubeconfig.read_text())
    config["users"] = [{"name": "sa", "user": {"token": token.strip()}}]
    config["contexts"][0]["context"]["user"] = "sa"
    token_config = tmp_path / "token.kubeconfig"
    token_config.write_text(yaml.safe_dump(config))
    who = json.loads(kubectl(k8s, "auth", "whoami", "-o", "json", kubeconfig=token_config).stdout)
    assert who["status"]["userInfo"]["username"] == f"system:serviceaccount:{OPERATOR_NS}:{sa}"
    # The token carries the ServiceAccount's permissions, nothing more.
    kubectl(k8s, "get", "rpj", "-n", NS, kubeconfig=token_config)
    denied = kubectl(k8s, "get", "secrets", "-n", "kube-system", kubeconfig=token_config,
                     check=False)  # fmt: skip
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower()
    bogus = tmp_path / "bogus.kubeconfig"
    config["users"][0]["user"]["token"] = token.strip()[:-4] + "AAAA"
    bogus.write_text(yaml.safe_dump(config))
    unauth = kubectl(k8s, "get", "rpj", "-n", NS, kubeconfig=bogus, check=False)
    assert "Unauthorized" in unauth.stderr or "must be logged in" in unauth.stderr


# --- helpers ----------------------------------------------------------------------------------
def _apply(k8s: E2ECluster, obj: dict[str, object]) -> None:
    proc = subprocess.run(
        [str(build.binary("kubectl")), "--kubeconfig", str(k8s.kubeconfig), "apply", "-n", NS,
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


def _install_operator_rbac(k8s: E2ECluster) -> str:
    """The chart's operator ServiceAccount and RBAC (helm template, applied as the admin);
    returns the ServiceAccount's name."""
    out = subprocess.run(
        [str(helm_binary()), "template", "rpcjob", str(CHART), "-n", OPERATOR_NS,
         "--show-only", "templates/operator-serviceaccount.yaml",
         "--show-only", "templates/rbac-operator.yaml"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    docs = [d for d in yaml.safe_load_all(out) if d]
    kubectl(k8s, "create", "namespace", OPERATOR_NS, check=False)
    for doc in docs:
        _apply_cluster(k8s, doc)
    return str(next(d for d in docs if d["kind"] == "ServiceAccount")["metadata"]["name"])


def _without_message_expressions(obj: Any) -> Any:
    """The CRD with every messageExpression dropped (each rule keeps its static message)."""
    if isinstance(obj, dict):
        return {k: _without_message_expressions(v) for k, v in obj.items()
                if k != "messageExpression"}  # fmt: skip
    if isinstance(obj, list):
        return [_without_message_expressions(v) for v in obj]
    return obj


def _apply_cluster(k8s: E2ECluster, obj: dict[str, Any]) -> None:
    proc = subprocess.run(
        [str(build.binary("kubectl")), "--kubeconfig", str(k8s.kubeconfig), "apply",
         "--server-side", "-n", OPERATOR_NS, "-f", "-"],
        input=json.dumps(obj), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
