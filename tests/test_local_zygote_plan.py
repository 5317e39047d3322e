"""localexec.zygote_plan: which container commands the fork server serves, and how (pure)."""

from __future__ import annotations

import pytest

from rpcjob_operator.localexec.zygote_plan import Program, ZygoteInfo, plan

PY = "/opt/venv/bin/python3"
BASE = {"PATH": "/opt/venv/bin:/usr/bin", "PYTHONPATH": "/src", "HOME": "/root"}
ZYG = ZygoteInfo(executable=PY, env=BASE, argv_capacity=200, env_capacity=400)
WHICH = {"python3": PY, "python3.12": "/usr/bin/python3.12"}


def _plan(argv: list[str], env: dict[str, str] | None = None, resolved: str | None = PY,
          shebang: str | None = None) -> Program | str:  # fmt: skip
    return plan(argv, {**BASE, **(env or {})}, ZYG, resolved=resolved, shebang=shebang,
                which=WHICH.get)  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "resolved", "shebang", "kind", "target", "args", "cmdline", "comm"),
    [
        ([PY, "-m", "app", "--x", "1"], PY, None, "module", "app", ("--x", "1"),
         (PY, "-m", "app", "--x", "1"), "python3"),
        ([PY, "-mapp"], PY, None, "module", "app", (), (PY, "-mapp"), "python3"),
        ([PY, "train.py", "-m", "z"], PY, None, "script", "train.py", ("-m", "z"),
         (PY, "train.py", "-m", "z"), "python3"),
        ([PY, "--", "train.py"], PY, None, "script", "train.py", (), (PY, "--", "train.py"),
         "python3"),
        ([PY, "-c", "print(1)", "a"], PY, None, "code", "print(1)", ("a",),
         (PY, "-c", "print(1)", "a"), "python3"),
        # a console script (pip's entry points): the kernel runs its #! interpreter
        (["rpcjob-worker", "--", "x"], "/opt/venv/bin/rpcjob-worker", f"#!{PY}", "script",
         "/opt/venv/bin/rpcjob-worker", ("--", "x"), (PY, "/opt/venv/bin/rpcjob-worker", "--", "x"),
         "rpcjob-worker"),
        (["./run.py"], "/w/run.py", "#!/usr/bin/env python3", "script", "/w/run.py", (),
         ("python3", "/w/run.py"), "run.py"),
    ],
)  # fmt: skip
def test_served_commands(
    argv: list[str], resolved: str, shebang: str | None, kind: str, target: str,
    args: tuple[str, ...], cmdline: tuple[str, ...], comm: str,
) -> None:  # fmt: skip
    got = _plan(argv, resolved=resolved, shebang=shebang)
    assert isinstance(got, Program), got
    assert (got.kind, got.target, got.args, got.cmdline, got.comm) == (
        kind, target, args, cmdline, comm)  # fmt: skip
    assert got.unbuffered is False


def test_unbuffered_from_the_option_or_the_environment() -> None:
    got = _plan([PY, "-u", "-m", "app"])
    assert isinstance(got, Program) and got.unbuffered and got.kind == "module"
    got = _plan([PY, "-m", "app"], env={"PYTHONUNBUFFERED": "1"})
    assert isinstance(got, Program) and got.unbuffered


@pytest.mark.parametrize(
    ("argv", "env", "resolved", "shebang", "why"),
    [
        (["sh", "-c", "exit 0"], {}, "/usr/bin/sh", None,
         "its command 'sh' is not the fork server's Python (/opt/venv/bin/python3)"),
        (["/usr/bin/python3.12", "-m", "app"], {}, "/usr/bin/python3.12", None,
         "is not the fork server's Python"),
        (["tool"], {}, "/usr/bin/tool", "#!/usr/bin/python3.12",
         "runs '/usr/bin/python3.12', not the fork server's Python"),
        (["tool"], {}, "/usr/bin/tool", "#!/usr/bin/env python3.12", "not the fork server's"),
        (["missing"], {}, None, None, "its command 'missing' is not on PATH"),
        ([PY, "-O", "x.py"], {}, PY, None, "option '-O' changes how the interpreter starts"),
        ([PY, "-uX", "dev", "x.py"], {}, PY, None, "option '-uX' changes how"),
        ([PY, "-I", "-m", "app"], {}, PY, None, "option '-I'"),
        ([PY], {}, PY, None, "it starts an interactive interpreter"),
        ([PY, "-u"], {}, PY, None, "it starts an interactive interpreter"),
        ([PY, "-"], {}, PY, None, "it reads its program from stdin"),
        ([PY, "-m"], {}, PY, None, "option -m needs an argument"),
        ([PY, "-m", "app"], {"PYTHONPATH": "/other"}, PY, None,
         "its environment sets PYTHONPATH differently from the fork server's"),
        ([PY, "-m", "app"], {"OMP_NUM_THREADS": "4"}, PY, None, "sets OMP_NUM_THREADS"),
        ([PY, "-m", "app"], {"LD_PRELOAD": "x.so"}, PY, None, "sets LD_PRELOAD"),
        ([PY, "-m", "app"], {"TORCH_LOGS": "+dynamo"}, PY, None, "sets TORCH_LOGS"),
        ([PY, "-m", "app"], {"LANG": "C"}, PY, None, "sets LANG"),
        ([PY, "-m", "app", "x" * 200], {}, PY, None, "command line is longer than"),
        ([PY, "-m", "app"], {"BIG": "x" * 400}, PY, None, "environment is larger than"),
        ([], {}, None, None, "it has no command"),
    ],
)  # fmt: skip
def test_commands_that_start_cold_say_why(
    argv: list[str], env: dict[str, str], resolved: str | None, shebang: str | None, why: str
) -> None:
    got = _plan(argv, env=env, resolved=resolved, shebang=shebang)
    assert isinstance(got, str) and why in got, got


def test_a_variable_the_zygote_lacks_counts_as_a_difference() -> None:
    assert "sets PYTHONPATH" in str(
        plan([PY, "-m", "a"], {"PATH": "/usr/bin", "HOME": "/root"}, ZYG, resolved=PY, shebang=None,
             which=WHICH.get))  # fmt: skip


def test_per_pod_variables_do_not_matter() -> None:
    # GPUs, the pod's identity and rpcjob's own settings are read after start: served
    env = {"CUDA_VISIBLE_DEVICES": "1", "RPCJOB_POD_NAME": "p", "NCCL_DEBUG": "INFO", "A": "b"}
    assert isinstance(_plan([PY, "-m", "app"], env=env), Program)
