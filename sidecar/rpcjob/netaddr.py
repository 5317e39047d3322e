"""The one parser of ``host:port`` (etcd endpoints, listen addresses), IPv6 in brackets."""

from __future__ import annotations

from dataclasses import dataclass

IPV6_HINT = "an IPv6 address goes in brackets, e.g. [::1]:2379"


class InvalidHostPort(ValueError):
    """``str(e)`` names the setting, the value and the fix; ``reason`` is what is wrong."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class HostPort:
    host: str  # without the IPv6 brackets; "" only where the caller allows it
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_host_port(
    raw: str,
    field: str,
    *,
    example: str = "127.0.0.1:2379",
    host_optional: bool = False,
    port_zero: bool = False,
) -> HostPort:
    """Split ``host:port``, ``[v6]:port`` (or ``:port`` when ``host_optional``).

    ``field`` names where the value came from (an environment variable, a URL part) so that
    the error says what to fix; the port must be 1-65535 (0 too when ``port_zero``)."""
    text = raw.strip()

    def bad(why: str) -> InvalidHostPort:
        return InvalidHostPort(
            f"{field}: {raw!r} is not host:port ({why}): use e.g. {example}; {IPV6_HINT}", why
        )

    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise bad("no ']' closes the IPv6 address")
        host, rest = text[1:end], text[end + 1 :]
        if not rest.startswith(":"):
            raise bad("no ':PORT' after the bracketed address")
        port = rest[1:]
        if ":" not in host:
            raise bad("only IPv6 addresses go in brackets")
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise bad("no ':PORT'")
        if ":" in host:
            raise bad("an IPv6 address without brackets")
    if not host and not host_optional:
        raise bad("no host")
    if not port.isdigit():
        raise bad(f"port {port!r} is not a number")
    low = 0 if port_zero else 1
    if not low <= int(port) <= 65535:
        raise bad(f"port {port} is outside {low}-65535")
    return HostPort(host, int(port))


__all__ = ["HostPort", "InvalidHostPort", "parse_host_port"]
