"""Watch events and watchers: what the store pushes and how selectors filter it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .selectors import Predicate

Obj = dict[str, Any]


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Event:
    type: str  # ADDED / MODIFIED / DELETED / BOOKMARK
    storage: tuple[str, str]
    obj: Obj
    old: Obj | None
    rv: int


@dataclass
class Watcher:
    storage: tuple[str, str]
    namespace: str | None
    labels: Predicate
    fields: Predicate
    push: Callable[[Event], None]

    def matches(self, obj: Obj) -> bool:
        meta = obj.get("metadata", {})
        if self.namespace and meta.get("namespace") != self.namespace:
            return False
        return self.labels(meta.get("labels") or {}) and self.fields(obj)

    def deliver(self, ev: Event) -> None:
        if ev.storage != self.storage:
            return
        now, before = self.matches(ev.obj), ev.old is not None and self.matches(ev.old)
        if ev.type == "MODIFIED" and before and not now:
            self.push(Event("DELETED", ev.storage, ev.obj, ev.old, ev.rv))
        elif ev.type == "MODIFIED" and now and not before and ev.old is not None:
            self.push(Event("ADDED", ev.storage, ev.obj, ev.old, ev.rv))
        elif now:
            self.push(ev)
