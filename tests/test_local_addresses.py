"""Local pods: unix socket paths stay under the OS limit; loopback IPs never collide."""

from __future__ import annotations

import socket

from rpcjob import contract
from rpcjob_operator.localexec.loopback import LoopbackPool


def test_short_socket_paths_are_bound_as_is() -> None:
    assert (
        contract.socket_bind_path("/var/run/rpcjob/sidecar.sock") == "/var/run/rpcjob/sidecar.sock"
    )


def test_long_socket_paths_get_a_stable_short_bind_path() -> None:
    long = "/tmp/" + "x" * 150 + "/sidecar.sock"
    bind = contract.socket_bind_path(long)
    assert bind == contract.socket_bind_path(long)
    assert bind.startswith("/tmp/rpcjob-") and len(bind) <= contract.MAX_SOCKET_PATH
    assert bind != contract.socket_bind_path(long + "2")


def test_loopback_pool_skips_taken_addresses_and_never_repeats() -> None:
    probe = LoopbackPool(seed=7)
    first = probe.take()
    with socket.socket() as s:
        s.bind((first, contract.SIDECAR_HTTP_PORT))  # someone else holds the sidecar port
        pool = LoopbackPool(seed=7)
        ips = [pool.take() for _ in range(300)]
    assert first not in ips
    assert len(set(ips)) == 300
    assert all(ip.startswith("127.") and not ip.startswith("127.0.0.") for ip in ips)
    assert not any(ip.endswith((".0", ".255")) for ip in ips)
