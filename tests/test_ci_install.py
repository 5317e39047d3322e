"""Every program the suite runs is installed by .ci/install (the list lives in .ci/tools.py).

A green run on a machine where someone installed a tool by hand hides a missing install step;
these tests make the list complete (by scanning the test tree for the programs it starts) and
make the install fail when one of them is missing."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parent.parent
SCANNED = ("tests", "e2e", "bench", "operator/rpcjob_operator/localexec")
# subprocess / os functions whose first argument is an argv
RUNNERS = frozenset({"run", "Popen", "check_output", "check_call", "call", "execvp", "execvpe"})


def tools_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ci_tools", REPO / ".ci" / "tools.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["ci_tools"] = mod  # dataclasses look the module up while the class is built
    spec.loader.exec_module(mod)
    return mod


def _program(call: ast.Call) -> str | None:
    """The program a call starts when it is spelled as a literal: ``shutil.which("x")`` or
    ``subprocess.run(["x", ...])``."""
    f = call.func
    name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
    if not call.args:
        return None
    first = call.args[0]
    if name == "which" and isinstance(first, ast.Constant) and isinstance(first.value, str):
        return first.value
    if name in RUNNERS and isinstance(first, ast.List | ast.Tuple) and first.elts:
        head = first.elts[0]
        if isinstance(head, ast.Constant) and isinstance(head.value, str):
            return head.value
    return None


def programs_in_tree() -> dict[str, set[str]]:
    """program -> files that run it."""
    found: dict[str, set[str]] = {}
    for root in SCANNED:
        for path in (REPO / root).rglob("*.py"):
            if "_pb" in path.parts:
                continue
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and (prog := _program(node)):
                    found.setdefault(prog, set()).add(str(path.relative_to(REPO)))
    return found


def test_every_program_the_suite_runs_is_listed() -> None:
    listed = {t.name for t in tools_module().TOOLS}
    found = programs_in_tree()
    assert {"etcd", "kubectl", "git", "helm"} <= set(found)  # the scan sees the known ones
    unlisted = {p: sorted(f) for p, f in found.items() if p not in listed}
    assert unlisted == {}, (
        f"programs run by the suite but not provided by .ci/install: {unlisted}; install them "
        "in .ci/install and list them in .ci/tools.py"
    )


def test_every_required_program_is_installed_here() -> None:
    tools = tools_module()
    assert [t.name for t in tools.missing()] == []


def test_install_checks_the_list_and_ci_runs_the_readme_command() -> None:
    install = (REPO / ".ci" / "install").read_text()
    assert "python3 .ci/tools.py check" in install
    assert "python3 .ci/tools.py install-kubectl" in install
    assert "python3 -m pytest -n 2" in (REPO / ".ci" / "run").read_text()
    assert "python3 -m pytest -n 2" in (REPO / "README.md").read_text()


def test_check_names_the_missing_program_and_its_provider(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / ".ci" / "tools.py"), "check"],
        env={"PATH": str(tmp_path)}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 1
    assert (
        "tools: 'etcd' is missing; the tests run it. Provided by: apt-get install etcd-server"
        in out.stderr
    )
    assert "'nvidia-smi'" not in out.stderr  # hardware tools are optional


def test_etcdctl_is_not_needed() -> None:
    """Debian's etcd-server ships no etcdctl: tests use rpcjob.etcd or etcd's JSON gateway."""
    assert "etcdctl" not in programs_in_tree()


def test_install_provides_the_programs_the_e2e_clusters_kube_proxy_runs() -> None:
    """kube-proxy execs nft (and iptables, conntrack) itself: the scan cannot see those."""
    install = (REPO / ".ci" / "install").read_text()
    for program, package in (("nft", "nftables"), ("iptables", "iptables"),
                             ("conntrack", "conntrack")):  # fmt: skip
        assert f"command -v {program} >/dev/null 2>&1 || apt_missing+=({package})" in install
        assert program in {t.name for t in tools_module().TOOLS}
