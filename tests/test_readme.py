"""The README's commands, run as written: the two fresh-machine commands must stay true."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from etcd_waits import wait_until
from localrun import REPO, LocalRun, base_env, rpcjob

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
    run_line, *others = LOCAL
    env_part, _, cmd = run_line.partition(" rpcjob ")
    name, _, value = env_part.partition("=")
    argv = shlex.split(cmd)
    assert argv[0] == "run"
    env = base_env(tmp_path, {name: value})
    run = LocalRun(argv[1], *argv[2:], env=env)
    try:
        run.wait_event(lambda e: e.get("reason") == "GroupFormed", 180, "the group to form")
        for line in others:
            words = shlex.split(line)
            assert words[0] == "rpcjob", line
            out = rpcjob(*words[1:], env=env)
            assert out.returncode == 0, (line, out.stderr)
            if words[1] == "scale":
                want = int(words[3].partition("=")[2]) + 1  # the learner is a member too
                wait_until(
                    lambda want=want: run.members() == want, 240, f"{want} members after {line}"
                )
            else:
                assert "actor-learner" in out.stdout
        run.interrupt()
        assert run.wait(120) == 130
    finally:
        run.kill()


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
