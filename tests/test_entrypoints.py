"""Every console script answers --help (what it does, the environment it reads) and --version
with exit 0 and no environment set: the installed scripts, as a user runs them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from rpcjob import contract, entrypoints
from rpcjob_operator import cli, main

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
# script -> (a phrase of its description, the environment it documents)
EXPECTED: dict[str, tuple[str, entrypoints.EnvHelp]] = {
    "rpcjob": ("run an RpcJob on this machine", cli.CLI_ENV),
    "rpcjob-operator": ("Run the rpcjob operator", main.OPERATOR_ENV),
    "rpcjob-sidecar": ("The rpcjob sidecar: runs next to the worker", entrypoints.SIDECAR_ENV),
    "rpcjob-worker": ("Run a workload (CMD) under the rpcjob runtime", entrypoints.WORKER_ENV),
}


def script(name: str) -> str:
    found = Path(sys.executable).parent / name
    if os.access(found, os.X_OK):
        return str(found)
    on_path = shutil.which(name)
    assert on_path, f"console script {name} is not installed: pip install -e '.[dev]'"
    return on_path


def run_bare(*argv: str) -> subprocess.CompletedProcess[str]:
    """No environment but a PATH without the interpreter's directory and an empty HOME."""
    env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}
    return subprocess.run(list(argv), env=env, capture_output=True, text=True, timeout=120)


def test_every_console_script_is_covered() -> None:
    assert set(SCRIPTS) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_help_says_what_it_does_and_lists_its_environment(name: str) -> None:
    phrase, env = EXPECTED[name]
    out = run_bare(script(name), "--help")
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())  # click rewraps descriptions
    assert phrase in text
    assert "Environment:" in out.stdout
    for var, _ in env:
        assert f"  {var}  " in out.stdout or f"  {var} " in out.stdout, var
    assert out.stderr == ""


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_version(name: str) -> None:
    out = run_bare(script(name), "--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{name} {metadata.version('rpcjob')}"


def test_the_sidecar_documents_every_variable_its_config_requires() -> None:
    documented = {var for var, _ in entrypoints.SIDECAR_ENV}
    required = {contract.ENV_NAMESPACE, contract.ENV_JOB_NAME, contract.ENV_JOB_UID,
                contract.ENV_ROLE, contract.ENV_INDEX, contract.ENV_POD_IP,
                contract.ENV_ETCD_ENDPOINTS}  # fmt: skip
    assert required <= documented


def test_an_unknown_option_is_a_usage_error() -> None:
    out = run_bare(script("rpcjob-sidecar"), "--bogus")
    assert out.returncode == 2
    assert "rpcjob-sidecar: error: unrecognized arguments: --bogus" in out.stderr
    out = run_bare(script("rpcjob-worker"), "--bogus")
    assert out.returncode == 1
    assert "rpcjob-worker: unknown option '--bogus'" in out.stderr
