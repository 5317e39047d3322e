"""Run policies end to end with the real operator on the local cluster (trivial workloads):
success -> ttlSecondsAfterFinished deletes the job; failures -> backoffLimit -> Failed with the
exit codes recorded; suspend deletes the pods and resume recreates them."""

from __future__ import annotations

import sys

import pytest
from operator_kit import SLEEPER, OperatorEnv, job_manifest, running_operator, running_pods, unique

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]  # whole jobs under the operator
EXIT = [sys.executable, "-c", "import os, sys; sys.exit(int(os.environ['CODE']))"]


env = pytest.fixture(running_operator, name="env")


def test_success_then_ttl_deletes_the_job(env: OperatorEnv) -> None:
    name = unique("ok")
    m = job_manifest(name, replicas=2, command=EXIT, env={"CODE": "0"}, restart_policy="Never")
    m["spec"]["runPolicy"] = {"ttlSecondsAfterFinished": 2}
    env.apply(m)
    env.wait_for(lambda: env.status(name).get("state") == "Succeeded", 120, "Succeeded")
    assert (env.condition(name, "Succeeded") or {}).get("status") == "True"
    assert env.status(name).get("completionTime")
    env.wait_event(name, "Succeeded")
    env.wait_for(lambda: env.job(name) is None, 60, "the TTL deletion")
    assert env.pods(name) == []


def test_backoff_limit_fails_the_job_with_exit_codes(env: OperatorEnv) -> None:
    name = unique("fail")
    m = job_manifest(name, replicas=1, command=EXIT, env={"CODE": "3"})
    m["spec"]["runPolicy"] = {"backoffLimit": 1}
    env.apply(m)
    env.wait_for(lambda: env.status(name).get("state") == "Failed", 120, "Failed")
    st = env.status(name)
    cond = env.condition(name, "Failed") or {}
    assert cond["status"] == "True" and cond["reason"] == "BackoffLimitExceeded"
    assert st["failedPods"] == 2  # > backoffLimit 1
    # (status.restarts is 2 here: the planner counts the second failure's replacement before
    # deciding BackoffLimitExceeded — reported to the planner's owner.)
    assert [f["exitCode"] for f in st["failures"]] == [3, 3]
    env.wait_event(name, "BackoffLimitExceeded")
    # Failed pods stay for their logs (as a Job's do); nothing runs any more.
    env.wait_for(
        lambda: all(p["status"].get("phase") == "Failed" for p in env.pods(name)),
        60,
        "no pod left running",
    )


def test_suspend_and_resume(env: OperatorEnv) -> None:
    name = unique("sus")
    env.apply(job_manifest(name, replicas=2, command=SLEEPER))
    env.wait_for(lambda: len(running_pods(env, name)) == 2, 60, "2 pods")
    env.kubectl(
        "patch", "rpj", name, "--type=merge", "-p", '{"spec":{"runPolicy":{"suspend":true}}}'
    )
    env.wait_for(lambda: env.status(name).get("state") == "Suspended" and not env.pods(name), 60,
                 "suspended, pods gone")  # fmt: skip
    env.wait_event(name, "Suspended")
    env.kubectl(
        "patch", "rpj", name, "--type=merge", "-p", '{"spec":{"runPolicy":{"suspend":false}}}'
    )
    env.wait_for(lambda: len(running_pods(env, name)) == 2, 60, "pods recreated")
    env.wait_event(name, "Resumed")
    assert (env.condition(name, "Suspended") or {}).get("status") == "False"
    assert env.status(name)["restarts"] == 0
