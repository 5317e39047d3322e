"""The repository's habits stay wired: the pre-commit hooks and the CI workflow run the same lint
as tests/test_lint.py and the README's test command, the license matches pyproject.toml, the
changelog knows the current version, and comments point inside the repository."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

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
