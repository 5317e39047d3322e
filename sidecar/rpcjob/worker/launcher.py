"""``rpcjob-worker -- CMD…``: run a workload under the rpcjob runtime (what it adds over calling
``rpcjob.init_rpc()`` yourself: DESCRIPTION below). The child drains and leaves gracefully in
``rpcjob.init_rpc``'s SIGTERM handler; the launcher never joins the group itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence

from rpcjob import contract, entrypoints

USAGE = "usage: rpcjob-worker [--socket PATH] -- CMD [ARGS...]"
ENV_LAUNCHER = "RPCJOB_LAUNCHER"
DESCRIPTION = f"""\
Run a workload (CMD) under the rpcjob runtime, as the worker container of an RpcJob pod.
Before CMD starts it checks that the pod's sidecar answers on its socket (a clear error
otherwise); CMD gets {contract.ENV_SOCKET} and {ENV_LAUNCHER}=1, SIGTERM/SIGINT are forwarded to it,
and the exit code is CMD's (128 + N when it died of signal N). CMD still calls
rpcjob.init_rpc() itself to join the group.

options:
  -h, --help     show this help message and exit
  --version      show the version and exit
  --socket PATH  the sidecar's unix socket"""


def help_text() -> str:
    return f"{USAGE}\n\n{DESCRIPTION}\n\n{entrypoints.env_help(entrypoints.WORKER_ENV)}"


READY_TIMEOUT_S = 60.0


def parse_args(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    args = list(argv)
    socket: str | None = None
    while args and args[0] != "--":
        opt = args.pop(0)
        if opt == "--socket" and args:
            socket = args.pop(0)
        elif opt.startswith("--socket="):
            socket = opt.split("=", 1)[1]
        elif opt in ("-h", "--help"):
            print(help_text())
            raise SystemExit(0)
        elif opt == "--version":
            print(entrypoints.version_line("rpcjob-worker"))
            raise SystemExit(0)
        else:
            raise SystemExit(f"rpcjob-worker: unknown option {opt!r}\n{USAGE}")
    if len(args) < 2:
        raise SystemExit(f"rpcjob-worker: no command given after '--'\n{USAGE}")
    return socket, args[1:]


def main(argv: Sequence[str] | None = None) -> int:
    socket, cmd = parse_args(sys.argv[1:] if argv is None else argv)
    from rpcjob.worker.client import SidecarClient, SidecarNotFound

    try:
        client = SidecarClient(socket)
        try:
            client.wait_ready(READY_TIMEOUT_S)
        finally:
            client.close()
    except SidecarNotFound as err:
        print(f"rpcjob-worker: {err}", file=sys.stderr)
        return 2
    env = dict(os.environ)
    env[contract.ENV_SOCKET] = client.path
    env[ENV_LAUNCHER] = "1"
    try:
        child = subprocess.Popen(cmd, env=env)
    except OSError as err:
        print(f"rpcjob-worker: cannot start {cmd[0]!r}: {err}", file=sys.stderr)
        return 127

    def forward(signum: int, _frame: object) -> None:
        if child.poll() is None:
            child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    code = child.wait()
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main())
