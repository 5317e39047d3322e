"""Can the fork server (``zygote.py``) start this container's command, and how?

A pure decision, table-tested (tests/test_local_zygote.py): the caller resolves the command's
executable on the container's PATH and reads its ``#!`` line; this module says what the forked
child runs (a module, a script or ``-c`` code, with its ``sys.argv`` and the command line
``/proc/<pid>/cmdline`` shows) or why the command must start cold. The rules are those of a cold
start that the zygote can reproduce after ``fork()``: the same interpreter, no option that
changes how it starts (only ``-u``), and the same values of the variables read while Python and
torch start (docs/local.md, "Fork server").
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

# Variables read when the interpreter or torch's import start (search path, site, locale,
# hashing, allocator, thread pools): a child forked after the imports would not see a change.
SENSITIVE_PREFIXES = ("PYTHON", "LD_", "LC_", "OMP_", "MKL_", "OPENBLAS_", "GOTO_", "KMP_",
                      "TORCH_", "PYTORCH_", "MALLOC_")  # fmt: skip
SENSITIVE_NAMES = frozenset({"LANG", "LANGUAGE", "HOME", "GLIBC_TUNABLES"})
# ...except these, which the child applies itself.
CHILD_APPLIES = frozenset({"PYTHONUNBUFFERED"})


@dataclass(frozen=True)
class ZygoteInfo:
    executable: str  # the zygote's sys.executable
    env: Mapping[str, str]  # the environment it started with (without its own padding)
    argv_capacity: int = 1 << 14  # bytes of /proc/<pid>/cmdline the child can rewrite
    env_capacity: int = 1 << 16  # bytes of /proc/<pid>/environ


@dataclass(frozen=True)
class Program:
    """What the forked child runs."""

    kind: str  # "module", "script" or "code"
    target: str  # module name, script path or source code
    args: tuple[str, ...]  # sys.argv[1:]
    unbuffered: bool  # -u or PYTHONUNBUFFERED: stdout/stderr unbuffered
    cmdline: tuple[str, ...]  # the argv the kernel would have given a cold start
    comm: str  # /proc/<pid>/comm of a cold start (the executed file's name)


def sensitive(name: str) -> bool:
    if name in CHILD_APPLIES:
        return False
    return name in SENSITIVE_NAMES or name.startswith(SENSITIVE_PREFIXES)


def _python_argv(
    argv: Sequence[str],
    resolved: str | None,
    shebang: str | None,
    exe: str,
    which: Callable[[str], str | None],
) -> list[str] | str:
    """The interpreter's argv of a cold start (the kernel's, for a ``#!`` script), or why not."""
    if argv[0] == exe or (resolved is not None and os.path.abspath(resolved) == exe):
        return [exe, *argv[1:]]
    if resolved is None:
        return f"its command {argv[0]!r} is not on PATH"
    if shebang is None or not shebang.startswith("#!"):
        return f"its command {argv[0]!r} is not the fork server's Python ({exe})"
    words = shebang[2:].split()
    if len(words) == 1 and words[0] == exe:
        return [exe, resolved, *argv[1:]]
    if len(words) == 2 and os.path.basename(words[0]) == "env" and which(words[1]) == exe:
        return [words[1], resolved, *argv[1:]]
    interp = shebang[2:].strip()
    return f"its command {argv[0]!r} runs {interp!r}, not the fork server's Python ({exe})"


def _parse_options(pyargv: Sequence[str]) -> tuple[str, str, list[str], bool] | str:
    """(kind, target, args, -u given) from the interpreter's arguments, or why not."""
    unbuffered = False
    i = 1
    while i < len(pyargv):
        arg = pyargv[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        for j, flag in enumerate(arg[1:], start=1):
            if flag in "mc":
                kind = "module" if flag == "m" else "code"
                rest = arg[j + 1 :]
                if rest:
                    return kind, rest, list(pyargv[i + 1 :]), unbuffered
                if i + 1 >= len(pyargv):
                    return f"option -{flag} needs an argument"
                return kind, pyargv[i + 1], list(pyargv[i + 2 :]), unbuffered
            if flag != "u":
                return f"option {arg!r} changes how the interpreter starts (only -u is served)"
            unbuffered = True
        i += 1
    if i >= len(pyargv):
        return "it starts an interactive interpreter"
    if pyargv[i] == "-":
        return "it reads its program from stdin"
    return "script", pyargv[i], list(pyargv[i + 1 :]), unbuffered


def _env_bytes(env: Mapping[str, str]) -> int:
    return sum(len(k.encode()) + len(v.encode()) + 2 for k, v in env.items())


def plan(
    argv: Sequence[str],
    env: Mapping[str, str],
    zygote: ZygoteInfo,
    *,
    resolved: str | None,
    shebang: str | None,
    which: Callable[[str], str | None],
) -> Program | str:
    """The program the zygote's child runs for ``argv`` (a container's command, as
    ``process_spec`` built it) with ``env``, or the reason it must start cold.

    ``resolved``: ``argv[0]`` found on the container's PATH; ``shebang``: that file's first line
    when it is not the interpreter itself; ``which``: PATH look-up for ``#!/usr/bin/env NAME``.
    """
    if not argv:
        return "it has no command"
    pyargv = _python_argv(argv, resolved, shebang, zygote.executable, which)
    if isinstance(pyargv, str):
        return pyargv
    parsed = _parse_options(pyargv)
    if isinstance(parsed, str):
        return parsed
    kind, target, args, unbuffered = parsed
    for name in sorted(set(env) | set(zygote.env)):
        if sensitive(name) and env.get(name) != zygote.env.get(name):
            return (
                f"its environment sets {name} differently from the fork server's (read when "
                "Python or torch start)"
            )
    if sum(len(a.encode()) + 1 for a in pyargv) > zygote.argv_capacity:
        return "its command line is longer than the fork server can show"
    if _env_bytes(env) > zygote.env_capacity:
        return "its environment is larger than the fork server can show"
    unbuffered = unbuffered or bool(env.get("PYTHONUNBUFFERED"))
    comm = os.path.basename(resolved or argv[0])[:15]
    return Program(kind, target, tuple(args), unbuffered, tuple(pyargv), comm)
