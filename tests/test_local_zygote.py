"""``rpcjob run``'s fork server (localexec/zygote.py): a worker container forked from a process
that has imported torch is what a cold start would have been (argv, environment, working
directory, /proc, session, output, exit codes, signals); commands it cannot serve start cold and
say why; ``--no-fork-server`` turns it off; SIGKILL of ``rpcjob run`` still leaves no process."""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from etcd_waits import wait_until
from localrun import (
    LocalRun,
    base_env,
    processes_mentioning,
    processes_with_env,
    rpcjob,
)

from bench.scale_bench import JOB_HEAD
from rpcjob import contract
from rpcjob_operator.localexec.containers import LocalContainer, ProcessSpec, base_environment
from rpcjob_operator.localexec.zygote_client import ForkedProcess, ForkServer

pytestmark = pytest.mark.slow  # the fork server imports torch

PROBE = r"""
import json, os, sys, time
rec = {"preloaded": "torch" in sys.modules, "argv": sys.argv, "orig_argv": sys.orig_argv,
       "cwd": os.getcwd(), "path0": sys.path[0], "name": __name__, "file": __file__,
       "mark": os.environ.get("ZT_MARK"), "pad": [k for k in os.environ if "PAD" in k],
       "environ": f"ZT_MARK={os.environ['ZT_MARK']}".encode() in
                  open("/proc/self/environ", "rb").read().split(b"\0"),
       "cmdline": open("/proc/self/cmdline", "rb").read().rstrip(b"\0").decode().split("\0"),
       "comm": open("/proc/self/comm").read().strip(),
       "leader": os.getsid(0) == os.getpid() == os.getpgrp(),
       "stdout": [sys.stdout.line_buffering, sys.stdout.write_through, sys.stdout.name],
       "stderr": [sys.stderr.line_buffering, sys.stderr.write_through]}
print(json.dumps(rec), flush=True)
what = sys.argv[1]
if what == "exit":
    sys.exit(int(sys.argv[2]))
if what == "raise":
    raise ValueError("boom")
if what == "interrupt":
    raise KeyboardInterrupt
if what == "sleep":
    print("sleeping", flush=True)
    time.sleep(600)
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ForkServer, list[str]]]:
    warned: list[str] = []
    fs = ForkServer(str(tmp_path_factory.mktemp("fs")), warned.append)
    yield fs, warned
    fs.close()


def _spec(tmp: Path, argv: list[str], **env: str) -> ProcessSpec:
    (tmp / "probe.py").write_text(PROBE)
    full = {**base_environment(), "ZT_MARK": uuid.uuid4().hex, **env}
    return ProcessSpec(argv=argv, env=full, cwd=str(tmp), mounts={})


def _start(
    spec: ProcessSpec, log: Path, fs: ForkServer | None, forked: bool = True
) -> LocalContainer:
    c = LocalContainer("worker", spec, str(log), fs)
    c.start()
    assert isinstance(c.proc, ForkedProcess) == forked, (log.read_text(), c.proc)
    return c


def _first(log: Path) -> dict[str, object]:
    wait_until(lambda: log.exists() and b"\n" in log.read_bytes(), 120, "the probe's line")
    return dict(json.loads(log.read_text().splitlines()[0]))


@pytest.mark.parametrize("form", ["script", "module", "unbuffered"])
def test_a_forked_worker_is_what_a_cold_start_would_be(
    tmp_path: Path, server: tuple[ForkServer, list[str]], form: str
) -> None:
    fs, _ = server
    argv = {"script": [sys.executable, "probe.py", "exit", "0"],
            "module": [sys.executable, "-m", "probe", "exit", "0"],
            "unbuffered": [sys.executable, "-u", "probe.py", "exit", "0"]}[form]  # fmt: skip
    spec = _spec(tmp_path, argv)
    recs = []
    for forked, log in ((True, tmp_path / "fork.log"), (False, tmp_path / "cold.log")):
        c = _start(spec, log, fs if forked else None, forked)
        assert c.proc is not None and c.proc.wait(120) == 0, log.read_text()
        recs.append(_first(log))
    fork, cold = recs
    assert fork.pop("preloaded") is True and cold.pop("preloaded") is False
    assert fork == cold
    assert cold["environ"] and cold["leader"] and cold["pad"] == []


def test_exit_codes_tracebacks_and_signals(
    tmp_path: Path, server: tuple[ForkServer, list[str]]
) -> None:
    fs, _ = server
    for what, code in (("exit", 3), ("raise", 1), ("interrupt", 130)):
        log = tmp_path / f"{what}.log"
        c = _start(_spec(tmp_path, [sys.executable, "probe.py", what, "3"]), log, fs)
        assert c.proc is not None
        c.proc.wait(120)
        assert c.poll() == code, log.read_text()
    err = (tmp_path / "raise.log").read_text()
    assert f'File "{tmp_path}/probe.py", line' in err and "ValueError: boom" in err
    assert "zygote" not in err and "Traceback (most recent call last)" in err
    # SIGTERM reaches the process group (143); SIGKILL after the grace period (137)
    for trap, code in (("", 143), ("import signal; signal.signal(15, signal.SIG_IGN)\n", 137)):
        (tmp_path / "trap.py").write_text(trap + PROBE)
        log = tmp_path / f"sleep{code}.log"
        c = _start(_spec(tmp_path, [sys.executable, "trap.py", "sleep"]), log, fs)
        wait_until(lambda log=log: "sleeping" in log.read_text(), 120, "the child to sleep")
        assert c.stop(grace=0.5 if code == 137 else 30) == code


def test_commands_it_cannot_serve_start_cold_and_say_why_once(
    tmp_path: Path, server: tuple[ForkServer, list[str]]
) -> None:
    fs, warned = server
    spec = _spec(tmp_path, ["sh", "-c", "echo cold; exit 4"])
    for _ in range(2):
        c = _start(spec, tmp_path / "sh.log", fs, forked=False)
        assert c.proc is not None and c.proc.wait(60) == 4
    why = [w for w in warned if "'sh'" in w]
    assert why == ["worker containers start cold, not from the fork server: its command 'sh' is "
                   f"not the fork server's Python ({sys.executable}) (rpcjob run --no-fork-server "
                   "turns it off)"]  # fmt: skip
    spec = _spec(tmp_path, [sys.executable, "-c", "print('cold')"], OMP_NUM_THREADS="3")
    c = _start(spec, tmp_path / "omp.log", fs, forked=False)
    assert any("OMP_NUM_THREADS differently" in w for w in warned), warned


def test_a_server_that_cannot_start_falls_back(tmp_path: Path) -> None:
    broken = tmp_path / "site" / "torch"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('a broken torch for this test')\n")
    path = ":".join(filter(None, [str(broken.parent), os.environ.get("PYTHONPATH")]))
    env = {**base_environment(), "PYTHONPATH": path}
    warned: list[str] = []
    fs = ForkServer(str(tmp_path / "root"), warned.append, env=env)
    try:
        argv = [sys.executable, "probe.py", "exit", "0"]
        spec = _spec(tmp_path, argv, PYTHONPATH=env["PYTHONPATH"])
        c = _start(spec, tmp_path / "log", fs, forked=False)
        assert c.proc is not None and c.proc.wait(60) == 0
    finally:
        fs.close()
    assert len(warned) == 1 and "the fork server did not start" in warned[0], warned
    assert "ImportError: a broken torch for this test" in warned[0]


JOB = (
    JOB_HEAD
    + """\
              command:
                - python3
                - -c
                - >-
                  import sys, time;
                  print('preloaded', 'torch' in sys.modules, flush=True); time.sleep(600)
"""
)


def _servers(root: str) -> list[int]:
    """The fork server of a run: its socket lives below the run's root."""
    return processes_mentioning(f"{root}/p/fs.sock")


def _job(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> LocalRun:
    job = tmp_path / "job.yaml"
    job.write_text(JOB.format(name=f"zygote-{uuid.uuid4().hex[:8]}"))
    return LocalRun(str(job), *args, env=base_env(tmp_path, env))


def _preloaded(run: LocalRun) -> list[str]:
    lines = [e for e in run.events if e.get("type") == "log" and "preloaded" in e["line"]]
    return [e["line"] for e in lines]


def test_sigkill_of_rpcjob_run_leaves_no_forked_process(tmp_path: Path) -> None:
    run = _job(tmp_path, "--fork-server")
    try:
        job = run.wait_event(lambda e: e.get("type") == "job", 60, "the job line")
        wait_until(lambda: len(_preloaded(run)) == 2, 240, "both workers to start")
        assert _preloaded(run) == ["preloaded True"] * 2, run.tail()
        pids = processes_with_env(contract.ENV_JOB_UID, job["uid"])  # /proc/<pid>/environ
        assert len(pids) == 4 and len(_servers(job["root"])) == 1, (pids, run.tail())
        run.sigkill_and_wait_gone(job["uid"], lambda: _servers(job["root"]), "the fork server")
    finally:
        run.kill()


def test_the_switch_turns_it_off(tmp_path: Path) -> None:
    text = " ".join(rpcjob("run", "--help").stdout.split())
    assert "--fork-server / --no-fork-server" in text and "env var: RPCJOB_FORK_SERVER" in text
    # the flag beats the variable (click); the variable alone turns it off:
    run = _job(tmp_path, env={contract.ENV_FORK_SERVER: "0"})
    try:
        job = run.wait_event(lambda e: e.get("type") == "job", 60, "the job line")
        wait_until(lambda: len(_preloaded(run)) == 2, 240, "both workers to start")
        assert _preloaded(run) == ["preloaded False"] * 2 and not _servers(job["root"])
        run.interrupt()
        assert run.wait(120) == 130, run.tail()
    finally:
        run.kill()
    said = [e for e in run.events if "fork server" in str(e.get("message"))]
    assert said == [], said
