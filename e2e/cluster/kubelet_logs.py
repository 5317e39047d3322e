"""Container logs of the process kubelet, one file per container incarnation.

A container's stdout and stderr go through a pipe to a ``LogWriter`` thread, which stamps each
line with the time it was read (RFC 3339, nanoseconds, as CRI log files do) and appends
``<timestamp> <line>`` to ``<pod dir>/logs/<container>/<incarnation>.log``. The kubelet API
(kubelet_api.py) serves them: the newest incarnation, or with ``previous`` the one before it;
``tailLines``, ``sinceSeconds``/``sinceTime``, ``timestamps``, ``limitBytes`` and ``follow``
behave as the kubelet's ``/containerLogs`` endpoint does.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import IO


def stamp(ns: int | None = None) -> str:
    ns = time.time_ns() if ns is None else ns
    secs, frac = divmod(ns, 1_000_000_000)
    base = dt.datetime.fromtimestamp(secs, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{frac:09d}Z"


def parse_stamp(text: str) -> float:
    """RFC 3339 (any fraction length, ``Z`` or offset) -> seconds since the epoch."""
    text = text.strip()
    frac = 0.0
    if "." in text:
        head, rest = text.split(".", 1)
        digits = "".join(ch for ch in rest if ch.isdigit())
        tz = rest[len(digits) :]
        frac = float("0." + digits) if digits else 0.0
        text = head + tz
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() + frac


class LogQueryError(ValueError):
    """A bad query parameter; the message names it and the accepted values."""


@dataclass(frozen=True)
class LogQuery:
    follow: bool = False
    previous: bool = False
    timestamps: bool = False
    tail_lines: int | None = None
    since: float | None = None  # epoch seconds
    limit_bytes: int | None = None

    @classmethod
    def parse(cls, q: Mapping[str, str], now: float | None = None) -> LogQuery:
        def flag(name: str) -> bool:
            v = q.get(name, "false").lower()
            if v not in ("true", "false", "1", "0", ""):
                raise LogQueryError(f"query parameter {name}={v!r}: use true or false")
            return v in ("true", "1")

        def count(name: str) -> int | None:
            if name not in q:
                return None
            try:
                n = int(q[name])
            except ValueError:
                raise LogQueryError(f"query parameter {name}={q[name]!r}: not an integer") from None
            if n < 0:
                raise LogQueryError(f"query parameter {name}={n}: must be >= 0")
            return n

        since: float | None = None
        secs = count("sinceSeconds")
        if secs is not None:
            since = (time.time() if now is None else now) - secs
        if "sinceTime" in q:
            try:
                since = parse_stamp(q["sinceTime"])
            except ValueError:
                raise LogQueryError(
                    f"query parameter sinceTime={q['sinceTime']!r}: use RFC 3339"
                ) from None
        return cls(
            follow=flag("follow"),
            previous=flag("previous"),
            timestamps=flag("timestamps"),
            tail_lines=count("tailLines"),
            since=since,
            limit_bytes=count("limitBytes"),
        )


def split_record(record: bytes) -> tuple[float, bytes, bytes]:
    """``<stamp> <line>`` -> (epoch seconds, stamp, line)."""
    ts, _, line = record.partition(b" ")
    try:
        return parse_stamp(ts.decode()), ts, line
    except ValueError:
        return 0.0, ts, line


def select(records: list[bytes], query: LogQuery) -> list[bytes]:
    """Filter and format the records of one incarnation (pure): since, then tail."""
    out = []
    for rec in records:
        when, ts, line = split_record(rec)
        if query.since is not None and when < query.since:
            continue
        out.append(ts + b" " + line if query.timestamps else line)
    if query.tail_lines is not None:
        out = out[len(out) - query.tail_lines :] if query.tail_lines else []
    return out


class ContainerLogs:
    """The log files of one pod's containers and which of them are still being written."""

    def __init__(self, pod_dir: str) -> None:
        self.root = os.path.join(pod_dir, "logs")
        self._open: set[str] = set()
        self._lock = threading.Lock()

    def incarnations(self, container: str) -> list[str]:
        d = os.path.join(self.root, container)
        try:
            names = [n for n in os.listdir(d) if n.endswith(".log")]
        except FileNotFoundError:
            return []
        return [os.path.join(d, n) for n in sorted(names, key=lambda n: int(n.split(".")[0]))]

    def attach(self, container: str, stream: IO[bytes]) -> LogWriter:
        """Start writing a new incarnation's log from ``stream`` (the container's stdout)."""
        with self._lock:
            path = os.path.join(self.root, container, f"{len(self.incarnations(container))}.log")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            open(path, "ab").close()
            self._open.add(path)
        writer = LogWriter(stream, path, lambda: self._closed(path))
        writer.start()
        return writer

    def _closed(self, path: str) -> None:
        with self._lock:
            self._open.discard(path)

    def writing(self, path: str) -> bool:
        with self._lock:
            return path in self._open

    def pick(self, container: str, previous: bool, waiting: bool = False) -> str | None:
        """The kubelet's choice: the current container is the running or terminated one, or,
        while the container waits to restart (CrashLoopBackOff), the last terminated one;
        ``previous`` is the one in lastState (the newest when waiting, else the one before)."""
        files = self.incarnations(container)
        want = 1 if waiting or not previous else 2
        return files[-want] if len(files) >= want else None

    def read(self, path: str, query: LogQuery, poll: float = 0.1) -> Iterator[bytes]:
        """The selected lines (with newline); with follow, then new ones until the
        incarnation ends. The caller stops iterating when its client goes away."""
        with open(path, "rb") as f:
            data = f.read()
            complete, _, rest = data.rpartition(b"\n")
            records = complete.split(b"\n") if data.count(b"\n") else []
            budget = query.limit_bytes
            for line in select(records, query):
                out = line + b"\n"
                if budget is not None:
                    out, budget = out[:budget], budget - len(out)
                if out:
                    yield out
                if budget is not None and budget <= 0:
                    return
            if not query.follow:
                return
            live = LogQuery(timestamps=query.timestamps)
            while True:
                done = not self.writing(path)  # read once more after the writer closed
                chunk = f.read()
                if chunk:
                    rest += chunk
                    *lines, rest = rest.split(b"\n")
                    for line in select(lines, live):
                        yield line + b"\n"
                elif done:
                    return
                else:
                    time.sleep(poll)  # a file has no change notification we can wait on


class LogWriter(threading.Thread):
    def __init__(self, stream: IO[bytes], path: str, on_close: object) -> None:
        super().__init__(name=f"log-{path}", daemon=True)
        self.stream = stream
        self.path = path
        self.on_close = on_close

    def run(self) -> None:
        try:
            with open(self.path, "ab", buffering=0) as out:
                for line in iter(self.stream.readline, b""):
                    if not line.endswith(b"\n"):
                        line += b"\n"  # a last line without newline still ends a record
                    out.write(stamp().encode() + b" " + line)
        finally:
            self.stream.close()
            if callable(self.on_close):
                self.on_close()
