"""Torch's RPC keys in the c10d store: their names and formats (torch-free).

See docs/architecture.md#membership for the protocol these keys belong to.

Torch 2.13's dynamic RPC group (``init_rpc(world_size=None)``) keeps its state under the store
prefix ``rpc_prefix_0/`` (measured on a live store, see docs/contract.md):

* ``RpcGroupManagementToken``  "" when free, else the holder's ``Token_for_<name>_<join|leave>``
* ``Token_for_<name>_<op>``    the holder's *waiter key*: waiters block on it; the holder sets
                               it to "Done" after setting the token back to ""
* ``names/_ALL_WORKER_INFOS``  ``"<name>-<rank>,"`` per member, in join order
* ``names/<rank>``             the name that owns a rank (a joiner compare_sets it from "")
* ``addrs/<name>``             the member's TensorPipe address
* ``rpcIsStaticGroup``         "false" once a dynamic member joined

Torch never removes a crashed member, and a graceful leave rewrites ``_ALL_WORKER_INFOS`` but
leaves ``names/<rank>`` and ``addrs/<name>`` behind. What to repair is decided in one place,
:mod:`rpcjob.sidecar.cleanup`. Keys here are relative to the c10d store root (they include
:data:`RPC_PREFIX`).
"""

from __future__ import annotations

RPC_PREFIX = "rpc_prefix_0/"  # torch.distributed.rpc wraps the store in this prefix
TOKEN_NAME = "RpcGroupManagementToken"
TOKEN_KEY = RPC_PREFIX + TOKEN_NAME
ALL_WORKER_INFOS_KEY = RPC_PREFIX + "names/_ALL_WORKER_INFOS"
TOKEN_PREFIX = "Token_for_"
# The token value the cleaner holds while it edits torch's keys. Torch parses no token value, it
# only waits on the key named by it; the name cannot collide with a worker's token because
# worker names never contain "__" followed by this marker (and if one did, only that worker's
# waiters would share the key).
CLEANER_TOKEN = TOKEN_PREFIX + "rpcjob__cleaner_evict"
DONE = "Done"


def name_key(rank: int) -> str:
    return f"{RPC_PREFIX}names/{rank}"


def addr_key(name: str) -> str:
    return f"{RPC_PREFIX}addrs/{name}"


def waiter_key(token_value: str) -> str:
    """The key that waiters on a token held with ``token_value`` block on."""
    return RPC_PREFIX + token_value


def worker_token(name: str, op: str) -> str:
    """The token value torch uses for ``name``'s join or leave (``op`` in join/leave)."""
    return f"{TOKEN_PREFIX}{name}_{op}"


class MalformedWorkerInfos(ValueError):
    """``_ALL_WORKER_INFOS`` is not a list of ``<name>-<rank>,`` entries."""


def parse_worker_infos(value: str) -> list[tuple[str, int]]:
    """``"a-0,b-3,"`` -> ``[("a", 0), ("b", 3)]`` (the format torch writes and parses)."""
    out: list[tuple[str, int]] = []
    for entry in value.split(","):
        if not entry:
            continue
        name, sep, rank = entry.rpartition("-")
        if not sep or not name or not rank.lstrip("-").isdigit():
            raise MalformedWorkerInfos(
                f"{ALL_WORKER_INFOS_KEY} entry {entry!r} is not '<name>-<rank>' "
                f"(whole value {value!r}); a worker name with '-' or ',' corrupts torch's list"
            )
        out.append((name, int(rank)))
    return out


def format_worker_infos(infos: list[tuple[str, int]]) -> str:
    return "".join(f"{name}-{rank}," for name, rank in infos)


def token_holder(token_value: str) -> tuple[str, str] | None:
    """``"Token_for_w_1_join"`` -> ``("w_1", "join")``; None when free or not a worker token."""
    if not token_value.startswith(TOKEN_PREFIX) or token_value == CLEANER_TOKEN:
        return None
    name, sep, op = token_value[len(TOKEN_PREFIX) :].rpartition("_")
    if not sep or not name or op not in ("join", "leave"):
        return None
    return name, op
