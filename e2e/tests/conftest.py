"""The e2e suite's fixtures: one backend per session, one namespace per test.

* ``--e2e-backend=cluster|kind`` (or ``RPCJOB_E2E_BACKEND``; default ``cluster``) picks the
  backend: ``cluster`` is the real control plane of e2e/cluster with process kubelets, one per
  pytest session shared by every xdist worker (e2e/backends/shared.py); ``kind`` a kind cluster.
  Each skips cleanly, naming the fix, where it cannot run (binaries not built, not root; no
  docker engine or kind).
* ``e2e_backend`` (session scope): the started backend with the chart installed.
* ``cluster`` (per test): a ``Cluster`` on a fresh namespace. On failure the job pods' logs (every
  container), the operator's log and the control plane's logs (kind: ``kind export logs``) are
  written under ``$RPCJOB_E2E_LOGS/<test>`` (default: the test's temp dir) and the operator
  log's tail is attached to the report. Teardown deletes the namespace's RpcJobs and waits for
  their pods to go, so the next test starts on an idle machine.
* ``own_operator(namespaces, values_files)``: for scenarios that disrupt the operator (restart
  it, audit it alone): a chart release in namespace scope of their own (cluster backend: on this
  process's private cluster, e2e/backends/private.py); kind has one cluster, so there it is the
  session's backend.
* ``@pytest.mark.e2e_no_operator``: the test needs no operator (schema checks, printer columns).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from e2e.backends import BACKENDS, ENV_BACKEND, Backend, Cluster, OwnOperator, wait_for
from rpcjob import contract


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--e2e-backend", choices=BACKENDS, default=None,
        help=f"e2e backend: cluster (default: the real control plane) or kind; also ${ENV_BACKEND}",
    )  # fmt: skip


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e_no_operator: an e2e scenario that needs no operator")
    backend_name(config)  # a bad RPCJOB_E2E_BACKEND is a usage error before anything runs


def backend_name(config: pytest.Config) -> str:
    name = config.getoption("--e2e-backend", default=None) or os.environ.get(ENV_BACKEND, "cluster")
    if name not in BACKENDS:
        raise pytest.UsageError(f"{ENV_BACKEND}={name!r}: use one of {', '.join(BACKENDS)}")
    return str(name)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    # Remember each phase's outcome on the item: the cluster fixture collects logs on failure.
    rep = yield
    setattr(item, f"e2e_rep_{rep.when}", rep)
    return rep


@pytest.fixture(scope="session")
def e2e_backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if backend_name(request.config) == "kind":
        yield from _kind_backend()
        return
    from e2e.backends import cluster as real
    from e2e.backends import shared

    reason = real.unavailable()
    if reason:
        pytest.skip(f"cluster backend: {reason}")
    # Started once per session by whichever process asks first; stopped by the session's end.
    yield real.ClusterBackend.attach(shared.attach("chart"))


def _kind_backend() -> Iterator[Backend]:
    from e2e.backends import kind

    reason = kind.unavailable()
    if reason:
        pytest.skip(f"kind backend: {reason}")
    workdir = Path(tempfile.mkdtemp(prefix="e2e-"))
    try:
        backend = kind.KindBackend(workdir).start()
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    try:
        yield backend
    finally:
        backend.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def own_operator(e2e_backend: Backend, request: pytest.FixtureRequest) -> Iterator[OwnOperator]:
    """``own_operator(values_files=(), extra_namespaces=0)`` -> a Cluster on the first of this
    test's namespaces, served by an operator of its own (see the module docstring)."""
    made: list[Any] = []

    def make(values_files: Sequence[str] = (), extra_namespaces: int = 0) -> Cluster:
        if e2e_backend.name == "kind":
            c = Cluster(e2e_backend, _namespace_for(request.node))
            c.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": c.namespace}})
            e2e_backend.prepare_namespace(c.namespace)
            made.append(c)
            return c
        from e2e.backends.cluster import OwnReleaseBackend

        names = [_namespace_for(request.node) for _ in range(1 + extra_namespaces)]
        backend = OwnReleaseBackend(names, values_files)
        made.append(backend)
        backend.start()
        return Cluster(backend, names[0])

    try:
        yield make
    finally:
        for thing in reversed(made):
            if isinstance(thing, Cluster):
                _teardown(thing)
            else:
                rep = getattr(request.node, "e2e_rep_call", None)
                if rep is not None and rep.failed:
                    _collect(Cluster(thing, thing.operator_namespace), request.node,
                             Path(tempfile.mkdtemp(prefix="e2e-logs-")))  # fmt: skip
                try:  # the jobs go while their operator still runs (it owns their finalizers)
                    for ns in thing.namespaces:
                        _delete_jobs(Cluster(thing, ns))
                finally:
                    thing.stop()  # helm uninstall, then the namespaces


def _namespace_for(item: pytest.Item) -> str:
    # Short: names of per-namespace objects (a release, its ClusterRoles) embed it.
    base = re.sub(r"[^a-z0-9]+", "-", item.name.lower().removeprefix("test_")).strip("-")
    return f"{base[:10].strip('-')}-{uuid.uuid4().hex[:4]}"


@pytest.fixture
def cluster(e2e_backend: Backend, request: pytest.FixtureRequest,
            tmp_path: Path) -> Iterator[Cluster]:  # fmt: skip
    if request.node.get_closest_marker("e2e_no_operator") is None:
        missing = e2e_backend.operator_missing()
        if missing:
            pytest.skip(f"no operator: {missing}")
    namespace = _namespace_for(request.node)
    c = Cluster(e2e_backend, namespace)
    c.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    e2e_backend.prepare_namespace(namespace)
    try:
        yield c
    finally:
        rep = getattr(request.node, "e2e_rep_call", None)
        if rep is not None and rep.failed:
            _collect(c, request.node, tmp_path)
        _teardown(c)


def _collect(c: Cluster, item: pytest.Item, tmp_path: Path) -> None:
    root = os.environ.get("RPCJOB_E2E_LOGS")
    dest = Path(root) / re.sub(r"[^A-Za-z0-9_.-]+", "_", item.nodeid) if root else tmp_path / "logs"
    dest.mkdir(parents=True, exist_ok=True)
    try:
        pods = c.objects("pods")
        (dest / "pods.json").write_text(json.dumps(pods, indent=1))
        (dest / "rpcjobs.json").write_text(json.dumps(c.objects(contract.PLURAL), indent=1))
        for pod in pods:
            spec = pod["spec"]
            for ctr in [*(spec.get("initContainers") or []), *spec["containers"]]:
                name = f"{pod['metadata']['name']}.{ctr['name']}.log"
                (dest / name).write_text(c.logs(pod["metadata"]["name"], ctr["name"]))
        events = c.kubectl("get", "events", "-o", "wide", check=False)
        (dest / "events.txt").write_text(events.stdout + events.stderr)
        c.backend.collect_logs(dest, c.namespace)
        tail = c.backend.operator_logs()[-4000:]
    except Exception as exc:  # never hide the test's own failure
        tail = f"(collecting logs failed: {exc!r})"
    item.add_report_section("call", "e2e logs", f"logs under {dest}\noperator log tail:\n{tail}")


def _delete_jobs(c: Cluster) -> None:
    c.kubectl("delete", contract.PLURAL, "--all", "--wait=false", check=False)
    wait_for(lambda: not c.objects("pods", contract.LABEL_JOB_NAME), 120,
             f"the job pods in {c.namespace} to go")  # fmt: skip


def _teardown(c: Cluster) -> None:
    try:
        _delete_jobs(c)
    finally:
        c.kubectl("delete", "namespace", c.namespace, "--wait=false", check=False,
                  namespaced=False)  # fmt: skip
        c.backend.cleanup_namespace(c.namespace)
