"""The worker kit's line protocol survives the child's C++ log lines on the same pipe.

A child's stderr shares the reply pipe; torch's C++ logging once wrote in the middle of a
reply line ("MEMBERS[W1206 ...] RPC agent ... EOF"), and the test reading it failed on a
garbled reply. Replies are one write behind a marker (tests/test_worker_kit.py).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from test_worker_kit import REPLY, Proc

pytestmark = pytest.mark.slow

# A log line cut in two writes, the reply written between them, then the rest of the log line.
CHILD = f"""
import os
os.write(2, b"[W1206 17:25:55.120 tensorpipe_agent.cpp:723] RPC agent for w_0 encountered")
os.write(1, {REPLY!r}.encode() + b'MEMBERS [["w_0", 0]]' + b"\\n")
os.write(2, b" error: EOF\\n")
os.write(1, {REPLY!r}.encode() + b"LEFT\\n")
"""


def test_a_reply_after_a_partial_log_line_is_read_whole() -> None:
    popen = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    proc = Proc(popen)
    try:
        assert proc.expect("MEMBERS", timeout=60) == 'MEMBERS [["w_0", 0]]'
        assert proc.expect("LEFT", timeout=60) == "LEFT"
        assert proc.expect("EOF", timeout=60) == "EOF"
        assert " error: EOF" in proc.all  # the log's rest is kept as a line of its own
    finally:
        proc.kill()
