"""What ``rpcjob run`` shows: a live table and slot-prefixed worker logs, or JSON lines."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

_COLOURS = ("cyan", "magenta", "green", "yellow", "blue", "bright_red", "bright_green")


@dataclass
class _Tail:
    prefix: str
    path: str
    offset: int = 0
    partial: bytes = b""


class Display:
    """Receives executor events (``emit``) and log lines; renders them for people or scripts."""

    def __init__(self, *, json_mode: bool, verbose: bool = False, console: Console | None = None):
        self.json_mode = json_mode
        self.verbose = verbose
        self.console = console or Console(stderr=False, highlight=False)
        self.status: dict[str, Any] = {}
        self.job = ""
        self.started = time.monotonic()
        self._tails: list[_Tail] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tail_loop, name="log-tail", daemon=True)
        self._live: Live | None = None
        # (slot, pod, phase) of every pod now; set by the caller (the executor knows them).
        self.rows: Callable[[], list[tuple[str, str, str]]] = lambda: []

    # --- events -----------------------------------------------------------------------------
    def emit(self, event: dict[str, Any]) -> None:
        with self._lock:
            self._on_event(event)

    def _on_event(self, ev: dict[str, Any]) -> None:
        kind = ev.get("type")
        if kind == "status":
            self.status = ev["status"]
        if kind == "pod" and ev.get("action") == "created":
            self._tails.append(_Tail(ev["slot"], ev["log"]))
            if self.verbose:
                self._tails.append(_Tail(ev["slot"] + "/sidecar", ev["sidecar_log"]))
        if self.json_mode:
            self._print_json(ev)
            return
        line = self._describe(ev)
        if line is not None:
            self.console.print(line)

    def _print_json(self, ev: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps({"time": round(time.time(), 3), **ev}, default=str) + "\n")
        sys.stdout.flush()

    def _describe(self, ev: dict[str, Any]) -> Text | None:
        kind = ev.get("type")
        if kind == "pod":
            verb = ev["action"]
            extra = f" ({ev['reason']})" if ev.get("reason") else ""
            extra += " as a replacement" if ev.get("replacement") else ""
            return Text(f"» pod {ev['pod']} {verb}{extra}", style="dim")
        if kind == "event":
            style = "yellow" if ev["event"] == "Warning" else "dim"
            return Text(f"» {ev['reason']}: {ev['message']}", style=style)
        if kind == "scale":
            return Text(f"» scale {ev['role']}: {ev['from']} -> {ev['to']}", style="bold")
        if kind == "warning":
            return Text(f"! {ev['message']}", style="yellow")
        return None

    # --- logs ---------------------------------------------------------------------------------
    def _colour(self, prefix: str) -> str:
        return _COLOURS[sum(map(ord, prefix.split("/")[0])) % len(_COLOURS)]

    def _line(self, prefix: str, line: str) -> None:
        if self.json_mode:
            self._print_json({"type": "log", "slot": prefix, "line": line})
        else:
            text = Text(f"[{prefix}] ", style=self._colour(prefix))
            text.append(line)
            self.console.print(text, soft_wrap=True)

    def _drain(self, tail: _Tail) -> None:
        try:
            size = os.path.getsize(tail.path)
        except OSError:
            return
        if size <= tail.offset:
            return
        with open(tail.path, "rb") as f:
            f.seek(tail.offset)
            data = tail.partial + f.read(size - tail.offset)
        tail.offset = size
        *lines, tail.partial = data.split(b"\n")
        for raw in lines:
            self._line(tail.prefix, raw.decode(errors="replace"))

    def _tail_loop(self) -> None:
        while not self._stop.wait(0.1):
            self.flush()

    def flush(self) -> None:
        with self._lock:
            for tail in list(self._tails):
                self._drain(tail)

    # --- the table --------------------------------------------------------------------------
    def table(self) -> Group:
        st = self.status
        elapsed = time.monotonic() - self.started
        head = Text.assemble(
            (f"{self.job}", "bold"),
            f"  state {st.get('state', 'Pending')}",
            f"  ready {st.get('ready', '-')}",
            f"  restarts {st.get('restarts', 0)}",
            f"  {elapsed:.0f}s",
        )
        t = Table(show_edge=False, pad_edge=False, box=None)
        for col in ("slot", "pod", "rank", "joined", "state"):
            t.add_column(col)
        members = {m["name"]: m for m in st.get("members") or []}
        for slot, pod, phase in self.rows():
            m = members.get(slot)
            joined = m is not None and m.get("pod") == pod
            t.add_row(
                slot, pod, str(m["rank"]) if joined and m else "-", "yes" if joined else "no", phase
            )
        return Group(head, t)

    # --- lifecycle --------------------------------------------------------------------------
    def __enter__(self) -> Display:
        self._thread.start()
        if not self.json_mode and self.console.is_terminal:
            self._live = Live(
                get_renderable=self.table,
                console=self.console,
                refresh_per_second=4,
                transient=True,
            )
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2.0)
        self.flush()
        if self._live is not None:
            self._live.__exit__(None, None, None)
            self._live = None
            self.console.print(self.table())
