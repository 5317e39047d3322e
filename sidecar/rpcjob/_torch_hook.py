"""Registers the ``etcd3://`` rendezvous handler with torch without importing torch.

``import rpcjob`` must stay torch-free (the sidecar imports it), yet ``init_method="etcd3://…"``
must work whether torch was imported before or after rpcjob. If torch's rendezvous module is
already loaded, the handler is registered now; otherwise a meta-path finder wraps that module's
loader and registers right after the module has executed, then removes itself. The registered
function imports :mod:`rpcjob.rendezvous` (and torch) only when torch calls it.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import threading
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import Any

RENDEZVOUS_MODULE = "torch.distributed.rendezvous"
SCHEME = "etcd3"
_lock = threading.Lock()


def etcd3_handler(url: str, **kwargs: Any) -> Iterator[tuple[Any, int, int]]:
    from rpcjob.rendezvous import etcd3_rendezvous_handler

    return etcd3_rendezvous_handler(url, **kwargs)


def _register(module: ModuleType) -> None:
    handlers = getattr(module, "_rendezvous_handlers", {})
    if SCHEME not in handlers:
        module.register_rendezvous_handler(SCHEME, etcd3_handler)


class _Loader(importlib.abc.Loader):
    """Runs the real loader, then registers the handler; everything else is delegated."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._inner.create_module(spec)  # type: ignore[no-any-return]

    def exec_module(self, module: ModuleType) -> None:
        self._inner.exec_module(module)
        _register(module)

    def __getattr__(self, name: str) -> Any:  # get_source, get_code, … (inspect, pdb)
        return getattr(self._inner, name)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != RENDEZVOUS_MODULE:
            return None
        _remove_finder()
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _Loader(spec.loader)
                return spec  # type: ignore[no-any-return]
        return None


def _remove_finder() -> None:
    with _lock:
        sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _Finder)]


def install_rendezvous_hook() -> None:
    """Register ``etcd3://`` with torch now or when torch loads its rendezvous module.
    Idempotent; never imports torch."""
    module = sys.modules.get(RENDEZVOUS_MODULE)
    if module is not None and hasattr(module, "register_rendezvous_handler"):
        _register(module)
        return
    with _lock:
        if not any(isinstance(f, _Finder) for f in sys.meta_path):
            sys.meta_path.insert(0, _Finder())
