"""The README's commands, run as written: the two fresh-machine commands must stay true."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from etcd_waits import wait_until
from localrun import REPO, LocalRun, base_env, processes_with_env, rpcjob

from rpcjob import contract
from rpcjob_operator.localexec import jobfile

README = (REPO / "README.md").read_text()


def _section(title: str) -> list[str]:
    """The indented command lines of one README section."""
    body = README.split(f"## {title}", 1)[1].split("\n## ", 1)[0]
    return [line.strip() for line in body.splitlines() if line.startswith("    ") and line.strip()]


FRESH = _section("Fresh machine (Debian/Ubuntu, Python 3.11)")
LOCAL = _section("Quickstart: on this machine")
CLUSTER = _section("Quickstart: on a cluster")


def test_exactly_two_fresh_machine_commands_and_ci_runs_the_test_one() -> None:
    assert len(FRESH) == 2, FRESH
    install_and_run, test_cmd = FRESH
    assert install_and_run.startswith("bash .ci/install && rpcjob run ")
    ci = (REPO / ".ci/run").read_text()
    assert "bash .ci/install" in ci
    # .ci/run ends by running exactly the README's test command.
    assert [ln for ln in ci.splitlines() if ln.strip() and not ln.startswith("#")][-1] == test_cmd
    install = (REPO / ".ci/install").read_text()
    for needed in ("etcd-server", "torch==2.13.0", "-e '.[dev]'", "install_helm.py"):
        assert needed in install


@pytest.mark.slow
def test_main_job_runs_in_a_fresh_checkout(tmp_path: Path) -> None:
    """The first command after the install step, in a clean clone of HEAD."""
    clone = tmp_path / "checkout"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    main_job = FRESH[0].split("&&", 1)[1].strip()
    argv = shlex.split(main_job)
    assert argv[0] == "rpcjob"
    out = subprocess.run(
        [sys.executable, "-m", "rpcjob_operator.cli", *argv[1:]],
        cwd=clone, env=base_env(tmp_path, {"EXAMPLE_STEPS": "150"}),
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "job param-server succeeded" in out.stderr


@pytest.mark.slow
def test_local_quickstart_as_written(tmp_path: Path) -> None:
    """The README's local quickstart, line by line (``--json`` and ``-v`` only add machine-
    readable output and the sidecars' logs). Every scale reaches its member count; a scale-down
    drains exactly the removed slots (ScaleDown) and nobody is ever restarted; status names
    every member; Ctrl-C exits 130 and leaves no process, temp dir, state file or traceback.
    (That an external etcd keeps none of the job's keys: tests/test_run_success.py.)"""
    run_line, *others = LOCAL
    env_part, _, cmd = run_line.partition(" rpcjob ")
    name, _, value = env_part.partition("=")
    argv = shlex.split(cmd)
    assert argv[0] == "run" and others, LOCAL
    sets = [argv[i + 1] for i, word in enumerate(argv) if word == "--set"]
    workers = int(jobfile.load(REPO / argv[1], sets)[0]["spec"]["roles"]["worker"]["replicas"])
    env = base_env(tmp_path, {name: value})
    run = LocalRun(argv[1], *argv[2:], "-v", env=env)
    victims: set[str] = set()
    try:
        job = run.wait_event(lambda e: e.get("type") == "job", 60, "the job line")
        wait_until(lambda: run.members() == workers + 1, 240, "every slot to join")
        for line in others:
            words = shlex.split(line)
            assert words[0] == "rpcjob", line
            out = rpcjob(*words[1:], env=env)
            assert out.returncode == 0, (line, out.stderr)
            if words[1] == "scale":
                wanted = int(words[3].partition("=")[2])
                victims |= {f"{job['name']}-worker-{i}" for i in range(wanted, workers)}
                workers = wanted
                wait_until(lambda n=workers + 1: run.members() == n, 240,
                           f"{workers + 1} members after {line}")  # fmt: skip
            else:  # status: the job and every member
                slots = ["learner_0", *(f"worker_{i}" for i in range(workers))]
                assert all(s in out.stdout for s in [job["name"], *slots]), out.stdout
        run.interrupt()
        assert run.wait(120) == 130, run.story()
    finally:
        run.kill()
    assert victims, "the quickstart scales down"
    deleted = [(e["pod"], e["reason"]) for e in run.events
               if e.get("type") == "pod" and e["action"] == "deleted"]  # fmt: skip
    replaced = [e["pod"] for e in run.events if e.get("type") == "pod" and e.get("replacement")]
    restarts = [e["status"].get("restarts", 0) for e in run.events if e.get("type") == "status"]
    if sorted(deleted) != sorted((v, "ScaleDown") for v in victims) or replaced or max(restarts):
        pytest.fail(f"deleted {deleted}, replaced {replaced}, restarts {max(restarts)}; "
                    f"only {sorted(victims)} should go (ScaleDown)\n{run.story()}",
                    pytrace=False)  # fmt: skip
    # Nothing left behind: processes, temp dirs, the state file; no worker or sidecar crashed.
    wait_until(lambda: not processes_with_env(contract.ENV_JOB_UID, job["uid"]), 30,
               "the job's processes to exit")  # fmt: skip
    assert not Path(job["root"]).exists()
    # (torch itself leaves a torchinductor cache dir in TMPDIR: not ours)
    assert list((tmp_path / "tmp").glob("rpj-*")) == []
    assert not (tmp_path / "state" / f"{job['name']}.json").exists()
    assert not any("Traceback" in line for line in run.raw), run.story()


def test_cluster_quickstart_names_real_files() -> None:
    for line in CLUSTER:
        words = shlex.split(line)
        if words[:2] == ["kubectl", "apply"]:
            assert (REPO / words[3]).is_file()
            out = rpcjob("validate", words[3])
            assert out.returncode == 0, out.stderr
        if words[:2] == ["helm", "install"]:
            assert (REPO / words[3] / "Chart.yaml").is_file()
    names = {m.group(1) for m in re.finditer(r"rpj/([a-z0-9-]+)", "\n".join(CLUSTER))}
    applied = [w for line in CLUSTER for w in shlex.split(line) if w.endswith(".yaml")]
    text = "".join((REPO / p).read_text() for p in applied)
    assert all(f"name: {n}" in text for n in names)
