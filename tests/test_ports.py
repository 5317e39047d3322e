"""localexec.ports: ports reserved across processes without races (parallel test workers,
concurrent ``rpcjob run`` jobs)."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from rpcjob_operator.localexec import ports

HOLDER = """
import sys, time
from rpcjob_operator.localexec import ports
got = [ports.reserve_port() for _ in range(int(sys.argv[1]))]
print(" ".join(map(str, got)), flush=True)
time.sleep(600)
"""


def holder(n: int) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(n)], stdout=subprocess.PIPE,
                            text=True)  # fmt: skip


def read_ports(p: subprocess.Popen[str]) -> list[int]:
    assert p.stdout is not None
    return [int(x) for x in p.stdout.readline().split()]


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for p in started:
        p.kill()
        p.wait(30)


def test_concurrent_processes_never_get_the_same_port(
    procs: list[subprocess.Popen[str]],
) -> None:
    procs += [holder(40) for _ in range(4)]
    got = [port for p in procs for port in read_ports(p)]
    assert len(got) == 160
    assert len(set(got)) == len(got)
    mine = ports.reserve_port()
    try:
        assert mine not in got
    finally:
        ports.release_port(mine)


def test_ports_are_below_the_kernels_ephemeral_range(tmp_path: object) -> None:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low = int(f.read().split()[0])
    p = ports.reserve_port()
    ports.release_port(p)
    assert p < low
    fake = f"{tmp_path}/range"
    with open(fake, "w") as f:
        f.write("1024\t65000\n")  # almost everything ephemeral: use what is above it
    assert ports.port_range(fake) == range(65001, 65536)


def test_a_claim_holds_until_its_process_dies_even_by_sigkill(
    procs: list[subprocess.Popen[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    procs.append(holder(1))
    (held,) = read_ports(procs[0])
    monkeypatch.setattr(ports, "port_range", lambda: range(held, held + 1))
    with pytest.raises(RuntimeError) as err:
        ports.reserve_port()
    assert f"no free TCP port in {held}-{held} on 127.0.0.1: every one is bound or claimed" in (
        str(err.value)
    )
    procs[0].send_signal(signal.SIGKILL)
    procs[0].wait(30)
    assert ports.reserve_port() == held  # the kernel dropped the dead holder's lock
    ports.release_port(held)


def test_a_port_someone_listens_on_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    port = ports.reserve_port()
    ports.release_port(port)
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        monkeypatch.setattr(ports, "port_range", lambda: range(port, port + 1))
        with pytest.raises(RuntimeError, match="every one is bound or claimed"):
            ports.reserve_port()


def _bind_zero_then_close(tree: object) -> list[int]:
    """Lines of ``with socket.socket() as s: s.bind((host, 0))``: a port read from a socket
    that is closed right after (the race this module replaces)."""
    import ast

    assert isinstance(tree, ast.AST)
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.With):
            continue
        if not any("socket" in ast.unparse(item.context_expr) for item in node.items):
            continue
        for inner in ast.walk(node):
            if (
                isinstance(inner, ast.Call)
                and isinstance(inner.func, ast.Attribute)
                and inner.func.attr == "bind"
                and inner.args
                and isinstance(inner.args[0], ast.Tuple)
                and len(inner.args[0].elts) == 2
                and isinstance(inner.args[0].elts[1], ast.Constant)
                and inner.args[0].elts[1].value == 0
            ):
                lines.append(inner.lineno)
    return lines


def test_no_port_is_picked_by_binding_port_0_and_closing() -> None:
    import ast
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    found = {}
    for root in ("tests", "e2e", "operator/rpcjob_operator/localexec"):
        for path in (repo / root).rglob("*.py"):
            lines = _bind_zero_then_close(ast.parse(path.read_text(), str(path)))
            if lines:
                found[str(path.relative_to(repo))] = lines
    assert found == {}, (
        f"ports picked by bind(0)-then-close (racy under parallel tests): {found}; use "
        "rpcjob_operator.localexec.ports.reserve_port() or let the server bind port 0"
    )
