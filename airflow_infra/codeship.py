"""Shipping a task's function to where it runs, which has no Airflow and no DAG folder.

The function goes by value (cloudpickle), together with everything it uses from the DAG
file and from modules in the DAG's folder; installed packages go by reference and are
imported from the task's own environment. Bytecode is only valid on the Python minor
version that compiled it, which is why a task's environment must use the worker's Python.
"""

from __future__ import annotations

import os
import pickle
import sys
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any


def _is_under(path: str, roots: Iterable[str]) -> bool:
    return any(path == root or path.startswith(root + os.sep) for root in roots)


def local_modules(fn: Callable, roots: Iterable[str]) -> list[ModuleType]:
    """The function's own module and every loaded module whose file lies under `roots`."""
    roots = [os.path.realpath(r) for r in roots if r]
    site_dirs = [os.path.realpath(p) for p in sys.path if "site-packages" in p or "dist-packages" in p]
    found: dict[str, ModuleType] = {}
    own = sys.modules.get(getattr(fn, "__module__", "") or "")
    if own is not None and own.__name__ != "__main__":
        found[own.__name__] = own
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if not file or name == "__main__" or name.startswith("airflow_infra"):
            continue
        real = os.path.realpath(file)
        if _is_under(real, roots) and not _is_under(real, site_dirs):
            found[name] = module
    return list(found.values())


def dumps_call(fn: Callable, args: list, kwargs: dict, *, roots: Iterable[str], **options: Any) -> bytes:
    """Pickle {fn, args, kwargs, **options} with the DAG's own modules shipped by value."""
    import cloudpickle

    modules = local_modules(fn, roots)
    registered = []
    try:
        for module in modules:
            try:
                cloudpickle.register_pickle_by_value(module)
                registered.append(module)
            except ValueError:
                continue  # already registered by someone else, or not importable by name
        payload = {"fn": fn, "args": list(args), "kwargs": dict(kwargs), **options}
        return cloudpickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    finally:
        for module in registered:
            cloudpickle.unregister_pickle_by_value(module)


class _PlainUnpickler(pickle.Unpickler):
    """Loads only pickles of builtin containers and scalars: it refuses every global."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} in the worker")


def loads_plain(blob: bytes) -> Any:
    import io

    return _PlainUnpickler(io.BytesIO(blob)).load()
