"""The repository's habits stay wired: the pre-commit hooks and the CI workflow run the same lint
as tests/test_lint.py and the README's test command, the license matches pyproject.toml, the
changelog knows the current version, comments point inside the repository, and every test that
starts a torch process, an `rpcjob run` job or a control plane is in the slow tier."""

from __future__ import annotations

import ast
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _hooks() -> dict[str, dict[str, Any]]:
    config = yaml.safe_load((REPO / ".pre-commit-config.yaml").read_text())
    return {h["id"]: h | {"repo": r["repo"]} for r in config["repos"] for h in r["hooks"]}


def test_pre_commit_runs_the_lint_tests_checks_offline() -> None:
    hooks = _hooks()
    assert {h["entry"] for h in hooks.values()} == {
        "python3 -m ruff check --force-exclude",
        "python3 -m ruff format --force-exclude",
        "python3 -m mypy",
    }
    # Local hooks on the interpreter's pinned tools: nothing to download, no version drift.
    assert {(h["repo"], h["language"]) for h in hooks.values()} == {("local", "system")}
    assert hooks["mypy"]["pass_filenames"] is False  # packages come from pyproject.toml
    dev = PYPROJECT["project"]["optional-dependencies"]["dev"]
    assert any(r.startswith("pre-commit==") for r in dev), "pre-commit belongs in the dev extra"


def test_ci_workflow_lints_and_runs_the_readme_test_command_on_every_push() -> None:
    wf = yaml.safe_load((REPO / ".github/workflows/ci.yml").read_text())
    on = wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on` key as true
    assert "push" in on and on["push"] is None, "every branch, every push"
    runs = {
        job: "\n".join(s.get("run", "") for s in spec["steps"]) for job, spec in wf["jobs"].items()
    }
    lint = runs["lint"]
    for check in ("ruff check .", "ruff format --check .", "mypy"):
        assert f"python3 -m {check}" in lint, check
    # .ci/run installs and ends with the README's test command (tests/test_readme.py).
    assert "bash .ci/run" in runs["test"]


def test_license_is_the_apache_2_text_pyproject_declares() -> None:
    assert PYPROJECT["project"]["license"] == {"text": "Apache-2.0"}
    text = (REPO / "LICENSE").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "END OF TERMS AND CONDITIONS" in text


def test_changelog_has_unreleased_and_the_current_version() -> None:
    text = (REPO / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in text
    version = PYPROJECT["project"]["version"]
    assert re.search(rf"^## \[{re.escape(version)}\] - \d{{4}}-\d{{2}}-\d{{2}}$", text, re.M)


def test_markers_named_in_contributing_are_registered() -> None:
    registered = {m.split(":")[0] for m in PYPROJECT["tool"]["pytest"]["ini_options"]["markers"]}
    text = (REPO / "CONTRIBUTING.md").read_text()
    for marker in ("slow", "gpu", "kind"):
        assert marker in registered and f"`{marker}`" in text


def test_no_comment_cites_the_design_notes_outside_the_repository() -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "*.py", "*.md", "*.yaml", "*.toml", "*.proto", "*Dockerfile"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    here = str(Path(__file__).relative_to(REPO))
    offenders = [
        f"{path}:{n}: {line.strip()}"
        for path in tracked
        if path != here and (REPO / path).is_file()
        for n, line in enumerate((REPO / path).read_text(errors="replace").splitlines(), 1)
        if re.search(r"\bDESIGN\b", line)
    ]
    assert not offenders, "point at docs/architecture.md instead:\n" + "\n".join(offenders)


# What starts a slow-tier thing (CONTRIBUTING.md, "Tests"): the kits' starters, the e2e fixtures,
# or a `sys.executable` child that imports torch or brings a cluster up. Checked per test, through
# the helpers and fixtures of its own module; a new kit that starts such things belongs here.
SLOW_STARTERS = {
    "test_membership_kit": {"start_pods", "start_worker"},  # sidecar + torch worker pods
    "test_worker_kit": {"Proc", "child_argv", "child_script"},  # a torch RPC worker process
    "rpc_procs": {"Group", "CTX"},  # torch workers joining through etcd3://
    "forked": {"ForkedPopen", "CTX"},  # torch workers forked from a torch-preloaded server
    "localrun": {"LocalRun"},  # an `rpcjob run` job
    "operator_kit": {"operator_env", "OperatorEnv", "ClusterView"},  # a control plane
    "e2e.backends": {"private", "shared"},  # a control plane
}
SLOW_FIXTURES = {"e2e_backend", "cluster", "own_operator"}  # e2e/tests/conftest.py
# Code a test runs with `sys.executable`: a torch import, a worker joining, `python -m e2e.cluster`.
SLOW_CODE = re.compile(r"\bimport torch\b|\bfrom torch\b|\binit_rpc\(|^e2e\.cluster$", re.M)


def _slow_mark(node: ast.AST) -> bool:
    return any(
        isinstance(n, ast.Attribute) and n.attr == "slow"
        and isinstance(n.value, ast.Attribute) and n.value.attr == "mark"
        for n in ast.walk(node)
    )  # fmt: skip


def _reach(fn: ast.FunctionDef, helpers: dict[str, ast.AST]) -> list[ast.AST]:
    """The test and the module's helpers and fixtures it uses, transitively."""
    seen, todo, nodes = {fn.name}, [fn], []
    while todo:
        node = todo.pop()
        nodes.append(node)
        used = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
        used |= {a.arg for a in node.args.args} if isinstance(node, ast.FunctionDef) else set()
        todo += [helpers[h] for h in sorted((used & helpers.keys()) - seen)]
        seen |= used
    return nodes


def _starts_slow_things(
    fn: ast.FunctionDef, helpers: dict[str, ast.AST], starters: set[str]
) -> bool:
    nodes = [n for top in _reach(fn, helpers) for n in ast.walk(top)]
    used = {n.id for n in nodes if isinstance(n, ast.Name)}
    fixtures = {a.arg for n in nodes if isinstance(n, ast.FunctionDef) for a in n.args.args}
    if used & starters or fixtures & SLOW_FIXTURES:
        return True
    code = "\n".join(
        n.value for n in nodes if isinstance(n, ast.Constant) and isinstance(n.value, str)
    )
    runs_python = any(isinstance(n, ast.Attribute) and n.attr == "executable" for n in nodes)
    return runs_python and SLOW_CODE.search(code) is not None


def _unmarked_slow_tests(source: str) -> list[str]:
    tree = ast.parse(source)
    starters = {
        alias.asname or alias.name
        for node in ast.walk(tree)  # also a test's own import
        if isinstance(node, ast.ImportFrom) and node.module in SLOW_STARTERS
        for alias in node.names
        if alias.name in SLOW_STARTERS[node.module]
    }
    module_slow = any(
        isinstance(n, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in n.targets)
        and _slow_mark(n.value)
        for n in tree.body
    )
    helpers: dict[str, ast.AST] = {
        n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))
    }
    helpers |= {  # module constants, e.g. code a test passes to a child
        t.id: n
        for n in tree.body
        if isinstance(n, ast.Assign)
        for t in n.targets
        if isinstance(t, ast.Name) and t.id != "pytestmark"
    }
    tests = [(n, []) for n in tree.body if isinstance(n, ast.FunctionDef)]
    tests += [
        (m, n.decorator_list)
        for n in tree.body
        if isinstance(n, ast.ClassDef)
        for m in n.body
        if isinstance(m, ast.FunctionDef)
    ]
    return [
        fn.name
        for fn, outer in tests
        if fn.name.startswith("test_")
        and not (module_slow or any(_slow_mark(d) for d in [*fn.decorator_list, *outer]))
        and _starts_slow_things(fn, helpers, starters)
    ]


def test_tests_that_start_torch_processes_jobs_or_clusters_are_slow() -> None:
    files = sorted([*(REPO / "tests").glob("*.py"), *(REPO / "e2e/tests").glob("*.py")])
    unmarked = [
        f"{path.relative_to(REPO)}::{name}"
        for path in files
        for name in _unmarked_slow_tests(path.read_text())
    ]
    assert not unmarked, (
        "these start a torch process, an `rpcjob run` job or a control plane: mark them "
        "`@pytest.mark.slow` (or the module `pytestmark = pytest.mark.slow`):\n"
        + "\n".join(unmarked)
    )


SLOW_CHECK_CASES = {
    "from localrun import LocalRun\ndef test_a(tmp_path):\n    LocalRun('j', env={})": ["test_a"],
    "def _go():\n    from e2e.backends import private\n    private.get()\n"
    "def test_a():\n    _go()": ["test_a"],
    "def test_a(cluster):\n    pass": ["test_a"],
    "import sys\nCODE = 'import torch'\n"
    "@pytest.mark.parametrize('c', [CODE])\ndef test_a(c):\n    run([sys.executable, c])": [
        "test_a"
    ],
    "import sys\ndef test_a():\n"
    "    run([sys.executable, '-c', 'import rpcjob; rpcjob.init_rpc()'])": ["test_a"],
    "import sys\ndef test_a():\n    run([sys.executable, '-m', 'e2e.cluster', 'up'])": ["test_a"],
    # marked: on the test, its class or the module
    "from localrun import LocalRun\n@pytest.mark.slow\ndef test_a():\n    LocalRun()": [],
    "from localrun import LocalRun\n@pytest.mark.slow\nclass T:\n    def test_a(self):\n"
    "        LocalRun()": [],
    "from localrun import LocalRun\npytestmark = [pytest.mark.slow]\n"
    "def test_a():\n    LocalRun()": [],
    # fast: no torch in the child, a torch-free name that looks alike, a kit's pure helpers
    "import sys\ndef test_a():\n    run([sys.executable, '-c', 'import rpcjob; assert 1'])": [],
    "def test_a():\n    'import torch'  # in-process, no child\n": [],
    "from rpcjob_operator.observe import cluster\ndef test_a():\n    cluster.api_error()": [],
    "from localrun import base_env\ndef test_a(tmp_path):\n    base_env(tmp_path)": [],
}


@pytest.mark.parametrize(
    ("source", "unmarked"),
    SLOW_CHECK_CASES.items(),
    ids=[f"case{i}" for i in range(len(SLOW_CHECK_CASES))],
)
def test_the_slow_check_finds_starters_through_helpers_and_sees_marks(
    source: str, unmarked: list[str]
) -> None:
    assert _unmarked_slow_tests(source) == unmarked
