"""``rpcjob run`` end to end: real etcd, real sidecar + worker processes, the examples' code."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
from etcd_waits import wait_until
from localrun import (
    LocalRun,
    base_env,
    processes_mentioning,
    processes_with_env,
    rpcjob,
    worker_pid,
)

from rpcjob import contract

pytestmark = pytest.mark.slow
PS = "examples/parameter_server/rpcjob.yaml"
AL = "examples/actor_learner/rpcjob.yaml"


def test_gpu_example_cpu_fallback(tmp_path: Path) -> None:
    """The GPU example's documented CPU fallback (examples/gpu_pipeline/README.md)."""
    run = LocalRun(
        "examples/gpu_pipeline/rpcjob.yaml",
        *("--set", "roles.driver.gpus=0", "--set", "roles.worker.gpus=0"),
        *("--set", "rpc.deviceMaps=off"),
        env=base_env(tmp_path, {"EXAMPLE_ROUNDS": "3", "EXAMPLE_MIB": "4"}),
    )
    try:
        assert run.wait(240) == 0, run.tail()
    finally:
        run.kill()
    assert any("3 rounds on cpu" in line for line in run.logs("driver_0")), run.tail()


def test_killed_worker_is_replaced_and_job_succeeds(tmp_path: Path) -> None:
    # Paced actors (the example's default rollout time): after the kill at version >= 50 the
    # learner needs 150 more updates, seconds in which the replacement must be created.
    run = LocalRun(AL, "--set", "roles.worker.replicas=2",
                   env=base_env(tmp_path, {"EXAMPLE_UPDATES": "200"}))  # fmt: skip
    try:
        job = run.wait_event(lambda e: e.get("type") == "job", 60, "the job line")
        run.wait_event(lambda e: e.get("reason") == "GroupFormed", 120, "the group to form")
        run.wait_event(lambda e: any(line.startswith("learner: version")
                                     for line in run.logs("learner_0")) or False,
                       120, "training to progress")  # fmt: skip
        mark = len(run.events)
        os.kill(worker_pid("actor-learner-worker-1", job["uid"]), signal.SIGKILL)
        run.wait_event(
            lambda e: e.get("type") == "pod" and e.get("pod") == "actor-learner-worker-1"
            and e.get("action") == "created" and bool(e.get("replacement")),
            60, "worker_1's replacement", since=mark,
        )  # fmt: skip
        assert run.wait(300) == 0, run.tail()
    finally:
        run.kill()
    assert [e["state"] for e in run.events if e.get("type") == "result"] == ["Succeeded"]
    restarts = [e["status"].get("restarts", 0) for e in run.events if e.get("type") == "status"]
    assert max(restarts) >= 1


RENAMED = """\
apiVersion: rpcjob.dev/v1alpha1
kind: RpcJob
metadata:
  name: renamed
spec:
  roles:
    worker:
      replicas: 1
      template:
        spec:
          containers:
            - name: trainer
              image: example
              command: ["sh", "-c", "echo trainer ran; exit 3"]
  runPolicy:
    backoffLimit: 0
"""


def test_a_worker_container_of_any_name_is_the_worker(tmp_path: Path) -> None:
    """A template's only container may have any name: its log is the slot's log, and its exit
    code is the one the failure records (not "no exit code")."""
    job = tmp_path / "renamed.yaml"
    job.write_text(RENAMED)
    run = LocalRun(str(job), env=base_env(tmp_path))
    try:
        assert run.wait(120) != 0, run.story()
    finally:
        run.kill()
    assert [e["state"] for e in run.events if e.get("type") == "result"] == ["Failed"]
    assert "trainer ran" in run.logs("worker_0"), run.story()
    failures = [f for e in run.events if e.get("type") == "status"
                for f in e["status"].get("failures") or []]  # fmt: skip
    assert failures and {f.get("exitCode") for f in failures} == {3}, failures
    warnings = [e.get("message", "") for e in run.events if e.get("type") == "event"]
    assert any("failed with exit code 3" in m for m in warnings), warnings


def _etcd_of(root: str) -> list[int]:
    """The embedded etcd of a run: its data dir lives below the run's root."""
    return processes_mentioning(f"--data-dir {root}/")


def test_sigkill_of_rpcjob_run_leaves_no_process(tmp_path: Path) -> None:
    """Ctrl-C drains; SIGKILL cannot, but the pods' processes and the embedded etcd still go
    (each is tied to the rpcjob process by the lifeline launcher)."""
    run = LocalRun(AL, "--set", "roles.worker.replicas=1",
                   env=base_env(tmp_path, {"EXAMPLE_UPDATES": "1000000"}))  # fmt: skip
    try:
        job = run.wait_event(lambda e: e.get("type") == "job", 60, "the job line")
        wait_until(lambda: run.members() == 2, 180, "learner + 1 actor joined")
        pids = processes_with_env(contract.ENV_JOB_UID, job["uid"])
        etcd = _etcd_of(job["root"])
        assert len(pids) >= 4 and len(etcd) == 1, (pids, etcd)  # 2 pods x (sidecar, worker)
        run.sigkill_and_wait_gone(job["uid"], lambda: _etcd_of(job["root"]), "the embedded etcd")
    finally:
        run.kill()


def test_malformed_yaml_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: rpcjob.dev/v1alpha1\nkind: RpcJob\nspec: [roles:\n")
    out = rpcjob("run", str(bad), env=base_env(tmp_path))
    assert out.returncode == 2
    assert f"{bad}: not valid YAML at line 4, column 1: expected the node content" in out.stderr


def test_invalid_spec_names_the_field(tmp_path: Path) -> None:
    out = rpcjob("run", PS, "--set", "roles.worker.replicas=40", env=base_env(tmp_path))
    assert out.returncode == 2
    assert "spec.roles.worker.replicas: Invalid value" in out.stderr
    assert "replicas must be <= maxReplicas" in out.stderr
    out = rpcjob("run", PS, "--set", "roles.worker.replicas", env=base_env(tmp_path))
    assert "expected PATH=VALUE, e.g. --set roles.worker.replicas=4" in out.stderr


def test_missing_etcd_binary_gives_an_install_hint(tmp_path: Path) -> None:
    env = base_env(tmp_path, {"PATH": str(Path(sys.executable).parent) + ":/nonexistent"})
    if os.path.exists(Path(sys.executable).parent / "etcd"):
        pytest.skip("etcd lives next to python here")
    out = rpcjob("run", PS, env=env)
    assert out.returncode == 3
    assert "the 'etcd' binary was not found on PATH" in out.stderr
    assert "apt-get install etcd-server" in out.stderr


def test_scale_and_status_errors(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    out = rpcjob("scale", "nope", "worker=2", env=env)
    assert out.returncode == 1
    assert "no local job named 'nope' is running (running: none)" in out.stderr
    out = rpcjob("scale", "nope", "worker", env=env)
    assert "'worker': expected ROLE=REPLICAS, e.g. worker=8" in out.stderr
    out = rpcjob("status", "nope", env=env)
    assert "no local job named 'nope' is running" in out.stderr


def test_validate_examples_and_a_bad_file(tmp_path: Path) -> None:
    examples = sorted(str(p) for p in Path("examples").glob("*/rpcjob.yaml"))
    out = rpcjob("validate", *examples)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count(": valid") == len(examples) >= 3
    bad = tmp_path / "bad.yaml"
    bad.write_text(Path(PS).read_text().replace("name: param-server", "name: Param_Server"))
    out = rpcjob("validate", str(bad))
    assert out.returncode == 1
    assert "metadata.name" in out.stderr or "job name" in out.stderr
