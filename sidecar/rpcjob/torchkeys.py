"""Pure decisions over torch's RPC keys in the c10d store (torch-free).

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
leaves ``names/<rank>`` and ``addrs/<name>`` behind. These functions decide the key edits; the
sidecar's executor (or a test) applies them with any store client. Keys returned here are
relative to the c10d store root (they include :data:`RPC_PREFIX`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from rpcjob.contract import TORCH_ALL_WORKER_INFOS, TORCH_RPC_PREFIX, TORCH_TOKEN_KEY

RPC_PREFIX = TORCH_RPC_PREFIX
TOKEN_KEY = RPC_PREFIX + TORCH_TOKEN_KEY
ALL_WORKER_INFOS_KEY = RPC_PREFIX + "names/" + TORCH_ALL_WORKER_INFOS
IS_STATIC_GROUP_KEY = RPC_PREFIX + "rpcIsStaticGroup"
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


class TokenAction(enum.Enum):
    TAKE_FREE = "take_free"  # compare_set(TOKEN_KEY, "", CLEANER_TOKEN)
    TAKE_OVER = "take_over"  # compare_set(TOKEN_KEY, <dead holder's value>, CLEANER_TOKEN)
    ALREADY_HELD = "already_held"  # we hold it (a retried cleanup)
    WAIT = "wait"  # a live worker holds it: wait on its waiter key, then decide again


@dataclass(frozen=True)
class TokenDecision:
    action: TokenAction
    expected: str  # the compare_set's expected value (TAKE_*), or the waiter key (WAIT)


def decide_token(token_value: str, dead_names: frozenset[str] | set[str]) -> TokenDecision:
    """How the cleaner gets the membership token, given its current value.

    A token held by a dead member (crashed, or died inside its critical section) is taken
    over; torch would otherwise wait for it forever. A token held by a live worker is waited
    for. Note a live worker whose join fails against a not-yet-evicted dead member holds the
    token until its init_rpc returns (rpcjob.worker bounds that; plain torch waits for the
    store timeout).
    """
    if token_value == "":
        return TokenDecision(TokenAction.TAKE_FREE, "")
    if token_value == CLEANER_TOKEN:
        return TokenDecision(TokenAction.ALREADY_HELD, CLEANER_TOKEN)
    holder = token_holder(token_value)
    if holder is None or holder[0] in dead_names:
        # An unknown value cannot belong to a live torch worker: take it over too.
        return TokenDecision(TokenAction.TAKE_OVER, token_value)
    return TokenDecision(TokenAction.WAIT, waiter_key(token_value))


@dataclass(frozen=True)
class KeyPlan:
    """Edits to apply while holding the token (``set`` first, then ``delete``)."""

    set: dict[str, str]
    delete: tuple[str, ...]


def plan_eviction(
    dead_name: str,
    dead_rank: int,
    all_worker_infos: str,
    name_of_rank: str | None,
) -> KeyPlan:
    """Remove a crashed (or failed-joining) incarnation ``(dead_name, dead_rank)``.

    ``name_of_rank`` is the current value of ``names/<dead_rank>`` (None when missing).
    ``addrs/<name>`` is kept when a newer incarnation with the same name is listed (a
    replacement joined before this cleanup ran); ``names/<rank>`` is kept when another name
    owns the rank.
    """
    infos = parse_worker_infos(all_worker_infos)
    kept = [(n, r) for n, r in infos if (n, r) != (dead_name, dead_rank)]
    sets: dict[str, str] = {}
    if kept != infos:
        sets[ALL_WORKER_INFOS_KEY] = format_worker_infos(kept)
    delete: list[str] = []
    if name_of_rank is None or name_of_rank == dead_name:
        delete.append(name_key(dead_rank))
    if not any(n == dead_name for n, _ in kept):
        delete.append(addr_key(dead_name))
    return KeyPlan(sets, tuple(delete))


def plan_after_leave(
    name: str, rank: int, all_worker_infos: str, name_of_rank: str | None
) -> KeyPlan:
    """Keys a graceful leave leaves behind (torch only rewrites ``_ALL_WORKER_INFOS``).

    Needed before the rank can be allocated again: a joiner compare_sets ``names/<rank>``
    from "" and fails when the old name is still there.
    """
    infos = parse_worker_infos(all_worker_infos)
    delete: list[str] = []
    if name_of_rank is not None and name_of_rank == name:
        delete.append(name_key(rank))
    if not any(n == name for n, _ in infos):
        delete.append(addr_key(name))
    return KeyPlan({}, tuple(delete))


def release_steps() -> list[tuple[str, str]]:
    """Release the cleaner's token exactly like torch does: token "" first, then the waiter key.

    Before taking the token again the cleaner should delete ``waiter_key(CLEANER_TOKEN)``
    (a stale "Done" makes waiters spin instead of block).
    """
    return [(TOKEN_KEY, ""), (waiter_key(CLEANER_TOKEN), DONE)]
