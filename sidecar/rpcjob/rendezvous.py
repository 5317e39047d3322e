"""The ``etcd3://`` rendezvous handler (torch ``init_method``) over :class:`EtcdStore`.

    etcd3://HOST:PORT[,HOST:PORT...]/PREFIX?timeout=SECONDS&ca=PATH&cert=PATH&key=PATH&user=NAME

The handler keeps torch's ``tcp://`` handler contract to the letter: torch appends ``rank`` and
``world_size`` to the query, and a missing port, rank or world size, a non-integer rank or world
size and a missing host raise the same exception types with the same messages (scheme name
aside), in the same order, before anything etcd-specific is checked (tests/test_rendezvous.py
runs both side by side). ``world_size=-1`` is dynamic RPC's "no fixed size".
The path is the key prefix of the store (``etcd3://10.0.0.5:2379/rpcjob/ns/job/uid/store/``
uses prefix ``/rpcjob/ns/job/uid/store/``). The password comes only from the environment
(``RPCJOB_ETCD_PASSWORD``): a URL ends up in logs and process listings. ``ca``/``cert``/``key``/
``user`` fall back to ``RPCJOB_ETCD_{CA,CERT,KEY,USER}``. Registered with torch by
``import rpcjob`` (see :mod:`rpcjob._torch_hook`). Every store handed to torch is kept alive
here: torch keeps only the C++ half of a Python store.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qsl, unquote, urlparse

from rpcjob.contract import (
    ENV_ETCD_CA,
    ENV_ETCD_CERT,
    ENV_ETCD_KEY,
    ENV_ETCD_PASSWORD,
    ENV_ETCD_USER,
)
from rpcjob.etcd.errors import SettingNames
from rpcjob.netaddr import IPV6_HINT, InvalidHostPort, parse_host_port

SCHEME = "etcd3"
# Where the handler takes each etcd setting from, for the fixes the client's errors suggest.
URL_NAMES = SettingNames(
    endpoints="the etcd3:// URL's HOST:PORT list",
    ca=f"ca= in the URL (or {ENV_ETCD_CA})",
    cert=f"cert= in the URL (or {ENV_ETCD_CERT})",
    key=f"key= in the URL (or {ENV_ETCD_KEY})",
    user=f"user= in the URL (or {ENV_ETCD_USER})",
    password=ENV_ETCD_PASSWORD,
)
FILE_KEYS = {"ca": ENV_ETCD_CA, "cert": ENV_ETCD_CERT, "key": ENV_ETCD_KEY}
ALLOWED_KEYS = ("timeout", "ca", "cert", "key", "user", "rank", "world_size")
EXAMPLE = "etcd3://127.0.0.1:2379/myjob/store/?timeout=60"


class Etcd3URLError(ValueError):
    """An ``etcd3://`` init_method that cannot be used; the message names the part and fix."""


@dataclass(frozen=True)
class Etcd3Target:
    """A parsed ``etcd3://`` URL (plus the password from the environment)."""

    endpoints: tuple[str, ...]
    prefix: str
    timeout: float | None
    rank: int
    world_size: int
    ca: str | None
    cert: str | None
    key: str | None
    user: str | None
    password: str | None = field(repr=False)  # never printed


def _error(msg: str) -> Etcd3URLError:
    return Etcd3URLError(f"etcd3:// init_method: {msg} (expected e.g. {EXAMPLE})")


def _query_to_dict(query: str) -> dict[str, str]:
    """torch's own query parsing for rank and world_size (no unquoting; "a" alone fails)."""
    return {
        pair[0]: pair[1] for pair in (pair.split("=") for pair in filter(None, query.split("&")))
    }


def _torch_checks(url: str) -> tuple[int, int]:
    """(rank, world_size) with the checks of torch's ``_tcp_rendezvous_handler``, in its order,
    raising its exception types and messages."""

    def error(msg: str) -> ValueError:
        return ValueError(
            f"Error initializing torch.distributed using {SCHEME}:// rendezvous: {msg}"
        )

    u = urlparse(url)
    single = "," not in u.netloc  # several endpoints have no single port to check
    if single and u.port is None:  # .port raises torch's ValueError for a port out of range
        raise error("port number missing")
    query = _query_to_dict(u.query)
    if "rank" not in query:
        raise error("rank parameter missing")
    if "world_size" not in query:
        raise error("world size parameter missing")
    rank, world_size = int(query["rank"]), int(query["world_size"])
    if single and u.hostname is None:
        raise AssertionError("hostname cannot be None")
    return rank, world_size


def parse_url(url: str, env: dict[str, str] | None = None) -> Etcd3Target:
    """Parse an ``etcd3://`` URL as torch's rendezvous passes it (with ``rank`` and
    ``world_size`` in the query). Pure: the environment is passed in, default os.environ."""
    env = dict(os.environ) if env is None else env
    u = urlparse(url)
    if u.scheme != SCHEME:
        raise _error(f"scheme {u.scheme!r} is not {SCHEME!r}")
    rank, world_size = _torch_checks(url)
    if "@" in u.netloc:
        raise _error(
            "credentials in the URL are not allowed (they end up in logs): put the user in "
            f"user=NAME and the password in the environment variable {ENV_ETCD_PASSWORD}"
        )
    endpoints = tuple(e.strip() for e in u.netloc.split(",") if e.strip())
    if not endpoints:
        raise _error("no etcd endpoint: put HOST:PORT[,HOST:PORT...] after etcd3://")
    for ep in endpoints:
        try:
            parse_host_port(ep, "etcd3:// endpoint")
        except InvalidHostPort as e:
            raise _error(f"endpoint {ep!r} is not HOST:PORT ({e.reason}); {IPV6_HINT}") from None
    prefix = unquote(u.path)
    if prefix.strip("/") == "":
        raise _error(
            "the key prefix is missing: every job needs its own prefix, put it as the URL path "
            "(etcd3://HOST:PORT/PREFIX)"
        )
    if not prefix.endswith("/"):
        prefix += "/"
    pairs = parse_qsl(u.query, keep_blank_values=True)
    query: dict[str, str] = {}
    for k, v in pairs:
        if k == "password":
            raise _error(
                "password= is not allowed in the URL (URLs end up in logs and process lists): "
                f"set the environment variable {ENV_ETCD_PASSWORD} instead"
            )
        if k not in ALLOWED_KEYS:
            raise _error(f"unknown query key {k!r}: allowed are {', '.join(ALLOWED_KEYS)}")
        if k in query:
            raise _error(f"query key {k!r} is given twice")
        query[k] = v
    timeout: float | None = None
    if "timeout" in query:
        try:
            timeout = float(query["timeout"])
        except ValueError:
            raise _error(f"timeout={query['timeout']!r} is not a number of seconds") from None
        if timeout < 0:
            raise _error(f"timeout={query['timeout']} must be >= 0 seconds (0 = no timeout)")
    files: dict[str, str | None] = {}
    for name, env_name in FILE_KEYS.items():
        path = query.get(name) or env.get(env_name) or None
        if path is not None and not os.path.isfile(path):
            raise _error(f"{name}={path!r}: no such file (a PEM file path, see {env_name})")
        files[name] = path
    user = query.get("user") or env.get(ENV_ETCD_USER) or None
    password = env.get(ENV_ETCD_PASSWORD) or None
    if user and not password:
        raise _error(f"user {user!r} is set but {ENV_ETCD_PASSWORD} is empty: set the password")
    return Etcd3Target(
        endpoints=endpoints,
        prefix=prefix,
        timeout=timeout,
        rank=rank,
        world_size=world_size,
        ca=files["ca"],
        cert=files["cert"],
        key=files["key"],
        user=user,
        password=password,
    )


def etcd3_rendezvous_handler(
    url: str, timeout: timedelta | None = None, **_kwargs: Any
) -> Iterator[tuple[Any, int, int]]:
    """torch rendezvous handler: yields ``(store, rank, world_size)`` once, like torch's
    ``tcp://`` handler (``rank``/``world_size`` come from the query torch appends; a world
    size of -1 is dynamic RPC's)."""
    from rpcjob.store import EtcdStore, keep_alive

    t = parse_url(url)
    seconds = t.timeout
    if seconds is None:
        seconds = timeout.total_seconds() if timeout is not None else 300.0
    store = EtcdStore(
        list(t.endpoints),
        prefix=t.prefix,
        timeout=timedelta(seconds=seconds),
        ca=t.ca,
        cert=t.cert,
        key=t.key,
        user=t.user,
        password=t.password,
        names=URL_NAMES,
    )
    keep_alive(store)
    # Fail here, with the etcd error (endpoint, TLS, auth), rather than inside torch's join.
    store.num_keys()
    yield (store, t.rank, t.world_size)
    raise RuntimeError("Unable to perform re-rendezvous using etcd3:// method")
