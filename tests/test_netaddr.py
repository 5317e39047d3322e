"""rpcjob.netaddr: the one host:port parser (etcd endpoints, sidecar and operator addresses)."""

from __future__ import annotations

import pytest

from rpcjob.netaddr import HostPort, InvalidHostPort, parse_host_port
from rpcjob.sidecar.config import ConfigError
from rpcjob.sidecar.config import parse_host_port as sidecar_parse

GOOD = [
    # raw, options, host, port, str()
    ("127.0.0.1:2379", {}, "127.0.0.1", 2379, "127.0.0.1:2379"),
    ("etcd.default.svc:2379", {}, "etcd.default.svc", 2379, "etcd.default.svc:2379"),
    (" localhost:1 ", {}, "localhost", 1, "localhost:1"),
    ("[::1]:2379", {}, "::1", 2379, "[::1]:2379"),
    ("[fd00::5]:65535", {}, "fd00::5", 65535, "[fd00::5]:65535"),
    (":9465", {"host_optional": True}, "", 9465, ":9465"),
    ("0.0.0.0:0", {"port_zero": True}, "0.0.0.0", 0, "0.0.0.0:0"),
]


@pytest.mark.parametrize(("raw", "opts", "host", "port", "text"), GOOD)
def test_parse(raw: str, opts: dict[str, bool], host: str, port: int, text: str) -> None:
    hp = parse_host_port(raw, "X", **opts)
    assert hp == HostPort(host, port)
    assert str(hp) == text


BAD = [
    # raw, options, the reason in the message
    ("localhost", {}, "no ':PORT'"),
    (":2379", {}, "no host"),
    ("a:b", {}, "port 'b' is not a number"),
    ("a:", {}, "port '' is not a number"),
    ("a:0", {}, "port 0 is outside 1-65535"),
    ("a:65536", {}, "port 65536 is outside 1-65535"),
    ("a:70000", {"port_zero": True}, "port 70000 is outside 0-65535"),
    ("::1:2379", {}, "an IPv6 address without brackets"),
    ("[::1:2379", {}, "no ']' closes the IPv6 address"),
    ("[::1]2379", {}, "no ':PORT' after the bracketed address"),
    ("[::1]", {}, "no ':PORT' after the bracketed address"),
    ("[host]:1", {}, "only IPv6 addresses go in brackets"),
]


@pytest.mark.parametrize(("raw", "opts", "why"), BAD)
def test_rejects_naming_the_field(raw: str, opts: dict[str, bool], why: str) -> None:
    with pytest.raises(InvalidHostPort) as e:
        parse_host_port(raw, "RPCJOB_ETCD_ENDPOINTS", **opts)
    assert str(e.value) == (
        f"RPCJOB_ETCD_ENDPOINTS: {raw!r} is not host:port ({why}): use e.g. 127.0.0.1:2379; "
        "an IPv6 address goes in brackets, e.g. [::1]:2379"
    )


def test_sidecar_config_uses_it() -> None:
    assert sidecar_parse("[fd00::7]:9464", "RPCJOB_HTTP_ADDR") == ("fd00::7", 9464)
    with pytest.raises(ConfigError, match=r"^RPCJOB_HTTP_ADDR: '10.0.0.5' is not host:port"):
        sidecar_parse("10.0.0.5", "RPCJOB_HTTP_ADDR")


def test_operator_metrics_address_error_names_the_flag() -> None:
    from rpcjob_operator import metrics

    with pytest.raises(InvalidHostPort, match=r"^--metrics: '0.0.0.0' is not host:port"):
        metrics.serve("0.0.0.0")
    metrics.serve(":0")  # port 0: disabled, nothing to serve


def test_etcd3_url_endpoints_use_it() -> None:
    from rpcjob.rendezvous import Etcd3URLError, parse_url

    t = parse_url("etcd3://[::1]:2379,a:1/job/?rank=0&world_size=1", env={})
    assert t.endpoints == ("[::1]:2379", "a:1")
    with pytest.raises(Etcd3URLError, match=r"endpoint '::1:2379' is not HOST:PORT \(an IPv6"):
        parse_url("etcd3://::1:2379,a:1/job/?rank=0&world_size=1", env={})


def test_etcd_client_endpoints_use_it() -> None:
    from rpcjob.etcd._conn import parse_endpoints

    assert parse_endpoints("[fd00::1]:2379,a:1") == ["[fd00::1]:2379", "a:1"]
    with pytest.raises(ValueError, match=r"'::1:2379' is invalid .*\(an IPv6 address without"):
        parse_endpoints("::1:2379")
    with pytest.raises(ValueError, match=r"'a:0' is invalid .*\(port 0 is outside 1-65535;"):
        parse_endpoints("a:0")
