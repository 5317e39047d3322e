"""Helpers for application code: ``rpcjob.members()``, ``rpcjob.wait_for_member()``,
``rpcjob.run_role()``.

In an elastic job members join and leave at any time and pods start in any order, so a worker
asks who is in the group now instead of assuming a fixed world, and waits for the peers it
needs. ``run_role`` is a worker's whole life in one call: join, run the function of its role,
leave gracefully.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from rpcjob import contract

WAIT_POLL_S = 0.1


def members(role: str | None = None) -> list[str]:
    """The worker names in this process's RPC group now, sorted; with ``role``, only that
    role's (names are ``<role>_<index>``). A snapshot: members come and go at any time."""
    from torch.distributed.rpc import api

    agent = api._get_current_rpc_agent()  # type: ignore[attr-defined]
    names = sorted(str(w.name) for w in agent.get_worker_infos())
    return [
        n for n in names if (role is None or contract.role_of(n) == role) and _present(agent, n)
    ]


def _present(agent: Any, name: str) -> bool:
    # An actor of the actor-learner example once saw the learner listed right after an RPC to it
    # failed ("could not find destination url"). torch answers both lookups from the same
    # table, so this second look only narrows a window; plain torch drops a member that left
    # gracefully from both (tests/test_worker_roles.py). The cause is not known.
    try:
        agent.get_worker_info(name)
    except RuntimeError:
        return False
    return True


def wait_for_member(role: str, timeout: float = 120.0) -> list[str]:
    """Block until ``role`` has a member in the group, and return its members; a worker that
    needs a peer waits for it this way (pods start in any order)."""
    deadline = time.monotonic() + timeout
    while not (found := members(role)):
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"no member of role {role!r} joined the RPC group within {timeout:g} s: check "
                f"that the job has that role and that its pods run (rpcjob status JOB)"
            )
        time.sleep(WAIT_POLL_S)
    return found


def run_role(roles: Mapping[str, Callable[[str], int | None]]) -> int:
    """Join the group, run this worker's role function, leave gracefully; the exit code.

    ``roles`` maps each role of the job to a function that takes this worker's name
    (``<role>_<index>``); this pod's role (``RPCJOB_ROLE``) picks one before joining, so a
    missing one fails at once. The code is what the function returns (None: 0). A drain
    (SIGTERM, scale-down) still ends the process at any point, after the ``on_drain``
    callbacks, with 0::

        raise SystemExit(rpcjob.run_role({"ps": serve, "worker": train}))
    """
    from rpcjob.worker import api

    role = os.environ.get(contract.ENV_ROLE, "")
    work = roles.get(role)
    if work is None:
        raise ValueError(
            f"{contract.ENV_ROLE}={role!r}: rpcjob.run_role() has no function for this role "
            f"(it has {sorted(roles)}); give one for every role of the job"
        )
    code = work(api.init_rpc().worker_name)
    api.shutdown()
    return code or 0
