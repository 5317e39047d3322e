"""Actor-learner loop: actors join and leave while the learner keeps going.

Roles: ``learner`` (one replica) owns the policy (a small linear layer); ``worker`` replicas
are actors. Each actor fetches the current policy, rolls out a batch of synthetic
"experience" with it and submits the batch asynchronously (``rpc_async``). The learner trains
on every batch it receives, bumps the policy version, and finishes after
``EXAMPLE_UPDATES`` updates; the job succeeds when the learner does. Actors can be
scaled up and down at any time (``rpcjob scale`` / ``kubectl scale``): a drained actor hands in
its last batch and leaves; a crashed one is evicted by rpcjob and the learner never notices.
A rollout takes ``EXAMPLE_ROLLOUT_MS`` (default 100), standing in for a simulator's steps;
0 makes the actors submit as fast as the learner takes batches (every core busy).
"""

from __future__ import annotations

import os
import threading
import time

import torch
import torch.distributed.rpc as rpc

import rpcjob

OBS, ACT = 8, 4
UPDATES = int(os.environ.get("EXAMPLE_UPDATES", "100"))
ROLLOUT_S = int(os.environ.get("EXAMPLE_ROLLOUT_MS", "100")) / 1000
LEARNER = "learner_0"


class Learner:
    def __init__(self) -> None:
        torch.manual_seed(0)
        self.policy = torch.nn.Linear(OBS, ACT)
        self.opt = torch.optim.SGD(self.policy.parameters(), lr=0.05)
        self.version = 0
        self.actors: set[str] = set()
        self.lock = threading.Lock()
        self.finished = threading.Event()

    def policy_state(self) -> tuple[int, dict[str, torch.Tensor]]:
        with self.lock:
            return self.version, {
                k: v.detach().clone() for k, v in self.policy.state_dict().items()
            }

    def submit(self, actor: str, obs: torch.Tensor, target: torch.Tensor) -> bool:
        with self.lock:
            if self.version < UPDATES:
                loss = torch.nn.functional.mse_loss(self.policy(obs), target)
                self.opt.zero_grad()
                loss.backward()
                self.opt.step()
                self.version += 1
                self.actors.add(actor)
                if self.version % 50 == 0:
                    print(f"learner: version {self.version}, loss {float(loss):.4f}", flush=True)
            if self.version >= UPDATES:
                self.finished.set()
            return self.finished.is_set()


# The learner's state: made at import, because it must exist before learner_0 joins (an actor
# may call it at once). The actors' processes never use theirs.
LEARNER_STATE = Learner()


def policy_state() -> tuple[int, dict[str, torch.Tensor]]:
    return LEARNER_STATE.policy_state()


def submit(actor: str, obs: torch.Tensor, target: torch.Tensor) -> bool:
    return LEARNER_STATE.submit(actor, obs, target)


def learn(_name: str) -> int:
    LEARNER_STATE.finished.wait()
    actors = sorted(LEARNER_STATE.actors)
    print(f"learner: done at version {LEARNER_STATE.version} with actors {actors}", flush=True)
    return 0


def act(name: str) -> int:
    rpcjob.wait_for_member("learner")
    policy = torch.nn.Linear(OBS, ACT)
    gen = torch.Generator().manual_seed(hash(name) % 2**31)
    inflight: list[torch.futures.Future[bool]] = []

    def hand_in() -> None:
        # Drained: wait for the batches already sent so the learner gets them.
        for fut in inflight:
            fut.wait()

    rpcjob.on_drain(hand_in)
    done = False
    try:
        while not done:
            _version, state = rpc.rpc_sync(LEARNER, policy_state)
            policy.load_state_dict(state)
            obs = torch.randn(64, OBS, generator=gen)
            with torch.no_grad():
                target = policy(obs) + 0.1 * obs[:, :ACT]  # a "better" action to imitate
            time.sleep(ROLLOUT_S)  # the environment's time (a real rollout steps a simulator)
            inflight.append(rpc.rpc_async(LEARNER, submit, args=(name, obs, target)))
            if len(inflight) >= 2:
                done = inflight.pop(0).wait()
    except RuntimeError:
        if rpcjob.members("learner"):
            raise  # the learner is still there: a real error
    print(f"{name}: learner finished; leaving", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(rpcjob.run_role({"learner": learn, "worker": act}))
