"""Build the pinned Kubernetes binaries the e2e control plane runs, once per version.

``e2e/cluster/gomod/go.mod`` pins ``k8s.io/kubernetes`` (and maps its ``k8s.io/*`` staging
modules to their published releases); this script builds ``kube-apiserver``,
``kube-controller-manager``, ``kube-scheduler``, ``kube-proxy`` and ``kubectl`` from the Go
module proxy into ``~/.cache/rpcjob-k8s/<version>/bin`` (``RPCJOB_K8S_CACHE`` moves the root)
and prints that directory. A second run with the same go.mod/go.sum builds nothing. The build
runs at ``nice -n 19`` with two compile jobs: it is meant to share a small machine.

CoreDNS (the cluster DNS, e2e/cluster/network.py) is built the same way from its own module at
the pinned ``COREDNS_VERSION`` (``go install github.com/coredns/coredns@<version>``: its go.mod
and go.sum pin its dependencies) into ``~/.cache/rpcjob-k8s/coredns-<version>/bin``.

Usage: ``python3 -m e2e.cluster.build [--check] [--version]``
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

# Not "build/": the repository ignores directories of that name.
BUILD_DIR = Path(__file__).resolve().parent / "gomod"
KUBERNETES = "k8s.io/kubernetes"
COMPONENTS = (
    "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy", "kubectl"
)  # fmt: skip
# Both packages carry the version `kubectl version` and /version report.
VERSION_PACKAGES = ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
STAMP = ".build-stamp"
COREDNS = "github.com/coredns/coredns"
COREDNS_VERSION = "v1.15.0"
GO_HINT = (
    "the 'go' command (1.26 or newer) was not found on PATH; the e2e control plane is built "
    "from the Go module proxy: install Go from https://go.dev/dl and put it on PATH"
)


class BuildError(RuntimeError):
    """The binaries could not be built; the message says why and what to do."""


def pinned_version(go_mod: Path = BUILD_DIR / "go.mod") -> str:
    """The k8s.io/kubernetes version go.mod requires, e.g. ``v1.37.2``."""
    pattern = rf"^(?:require)?\s*{re.escape(KUBERNETES)} (v\d\S*)"
    match = re.search(pattern, go_mod.read_text(), re.M)
    if match is None:
        raise BuildError(f"{go_mod}: no 'require {KUBERNETES} vX.Y.Z' line")
    return match.group(1)


def cache_root() -> Path:
    return Path(os.environ.get("RPCJOB_K8S_CACHE") or Path.home() / ".cache" / "rpcjob-k8s")


def bin_dir(version: str | None = None) -> Path:
    return cache_root() / (version or pinned_version()) / "bin"


def ldflags(version: str) -> str:
    major, minor = version.lstrip("v").split(".")[:2]
    flags = ["-s", "-w"]
    for pkg in VERSION_PACKAGES:
        for key, value in (("gitVersion", version), ("gitMajor", major), ("gitMinor", minor),
                           ("gitTreeState", "clean")):  # fmt: skip
            flags.append(f"-X {pkg}.{key}={value}")
    return " ".join(flags)


def build_key(version: str) -> str:
    """What the binaries depend on: go.mod, go.sum, the flags and the component list."""
    h = hashlib.sha256()
    for name in ("go.mod", "go.sum"):
        h.update((BUILD_DIR / name).read_bytes())
    h.update(ldflags(version).encode())
    h.update(" ".join(COMPONENTS).encode())
    return h.hexdigest()


def coredns_dir() -> Path:
    return cache_root() / f"coredns-{COREDNS_VERSION}" / "bin"


def built(version: str | None = None) -> Path | None:
    """The bin directory when every binary of this exact build (and CoreDNS) is there, else
    None."""
    version = version or pinned_version()
    if not (coredns_dir() / "coredns").is_file():
        return None
    out = bin_dir(version)
    stamp = out / STAMP
    if not stamp.is_file() or stamp.read_text().strip() != build_key(version):
        return None
    if not all((out / c).is_file() for c in COMPONENTS):
        return None
    return out


def kubectl(
    kubeconfig: str | Path,
    *args: str,
    check: bool = True,
    stdin: str | None = None,
    timeout: float = 240,
) -> subprocess.CompletedProcess[str]:
    """The built kubectl against ``kubeconfig``; AssertionError with its stderr if ``check``."""
    cmd = [str(binary("kubectl")), "--kubeconfig", str(kubeconfig), *args]
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


def binary(name: str) -> Path:
    """The path of one built binary; BuildError naming the build command if it is missing."""
    out = built()
    if out is not None and name == "coredns":
        return coredns_dir() / name
    if out is None:
        raise BuildError(
            f"the pinned Kubernetes binaries are not built: run 'python3 -m e2e.cluster.build' "
            f"(builds {KUBERNETES} {pinned_version()} into {bin_dir()}; .ci/install runs it)"
        )
    return out / name


def build(log: Path | None = None) -> Path:
    """Build (unless already built) and return the bin directory. Safe to run concurrently:
    a lock file serialises builds of one version."""
    version = pinned_version()
    done = built(version)
    if done is not None:
        return done
    go = shutil.which("go")
    if go is None:
        raise BuildError(GO_HINT)
    build_coredns(go, log)
    out = bin_dir(version)
    if (out / STAMP).is_file() and (out / STAMP).read_text().strip() == build_key(version):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = built(version)  # another process may have built it while we waited
        if done is not None:
            return done
        tmp = out.parent / "bin.tmp"
        tmp.mkdir(exist_ok=True)
        _go_build(go, version, tmp, log)
        (tmp / STAMP).write_text(build_key(version) + "\n")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    return out


def build_coredns(go: str, log: Path | None = None) -> Path:
    """Build CoreDNS ``COREDNS_VERSION`` unless it is there; its bin directory."""
    out = coredns_dir()
    if (out / "coredns").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out / "coredns").is_file():
            return out
        tmp = out.parent / "bin.tmp"
        tmp.mkdir(exist_ok=True)
        cmd = [*_nice(), go, "install", "-p", "2", "-trimpath", "-ldflags", "-s -w",
               f"{COREDNS}@{COREDNS_VERSION}"]  # fmt: skip
        _run_go(cmd, {"GOBIN": str(tmp)}, out.parent, log, f"{COREDNS} {COREDNS_VERSION}")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    return out


def _nice() -> list[str]:
    return [shutil.which("nice") or "nice", "-n", "19"] if shutil.which("nice") else []


def _run_go(cmd: list[str], extra: dict[str, str], cwd: Path, log: Path | None, what: str) -> None:
    # Static binaries as the projects release them; two compile jobs leave the machine usable.
    env = dict(os.environ, CGO_ENABLED="0", GOMAXPROCS="2", **extra)
    start = time.monotonic()
    with open(log, "a") if log else open(os.devnull, "w") as sink:
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=sink, stderr=subprocess.PIPE,
                              text=True)  # fmt: skip
    if proc.returncode != 0:
        raise BuildError(f"go build of {what} failed:\n{proc.stderr[-4000:]}")
    print(f"built {what} in {time.monotonic() - start:.0f}s", file=sys.stderr)


def _go_build(go: str, version: str, dest: Path, log: Path | None) -> None:
    nice = _nice()
    cmd = [*nice, go, "build", "-p", "2", "-trimpath", "-ldflags", ldflags(version),
           "-o", f"{dest}/", *(f"{KUBERNETES}/cmd/{c}" for c in COMPONENTS)]  # fmt: skip
    flags = {"GOFLAGS": "-mod=readonly -buildvcs=false"}
    _run_go(cmd, flags, BUILD_DIR, log, f"{KUBERNETES} {version}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m e2e.cluster.build", description=__doc__)
    parser.add_argument("--check", action="store_true", help="only say whether it is built")
    parser.add_argument("--version", action="store_true", help="print the pinned version")
    args = parser.parse_args(argv)
    if args.version:
        print(pinned_version())
        return 0
    if args.check:
        out = built()
        print(out if out else f"not built: {bin_dir()}")
        return 0 if out else 1
    try:
        print(build())
    except BuildError as exc:
        raise SystemExit(f"error: {exc}") from None  # the message on stderr, exit status 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
