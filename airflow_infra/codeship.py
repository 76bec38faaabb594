"""Shipping a task's function to where it runs, which has no Airflow and no DAG folder.

The function goes by value (cloudpickle), together with everything it uses from the DAG
file and from modules in the DAG's folder; installed packages go by reference and are
imported from the task's own environment. Bytecode is only valid on the Python minor
version that compiled it, which is why a task's environment must use the worker's Python.
"""

from __future__ import annotations

import functools
import io
import os
import pickle
import sys
from collections import ChainMap
from collections.abc import Callable, Iterable
from pathlib import Path
from types import CodeType, ModuleType
from typing import Any


def local_modules(fn: Callable, roots: Iterable[str]) -> list[ModuleType]:
    """The function's own module and every loaded module whose file lies under `roots`."""
    # Plain string prefixes (each root as given and resolved), checked by str.startswith
    # in C: resolving each of the thousands of loaded modules' paths would cost more than
    # the rest of a task's start.
    prefixes = tuple({form + os.sep for r in roots if r for form in (os.path.abspath(r), os.path.realpath(r))})
    installed = tuple(p + os.sep for p in sys.path if "site-packages" in p or "dist-packages" in p)
    found: dict[str, ModuleType] = {}
    own = sys.modules.get(getattr(fn, "__module__", "") or "")
    if own is not None and own.__name__ != "__main__":
        found[own.__name__] = own
    if not prefixes:
        return list(found.values())
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if file and file.startswith(prefixes) and not file.startswith(installed) and name != "__main__" and not name.startswith("airflow_infra"):
            found[name] = module
    return list(found.values())


def dumps_call(fn: Callable, args: list, kwargs: dict, *, roots: Iterable[str], **options: Any) -> bytes:
    """Pickle {fn, args, kwargs, **options} with the DAG's own modules shipped by value."""
    import cloudpickle

    modules = local_modules(fn, roots)
    options["sources"] = _sources(modules)
    registered = []
    try:
        for module in modules:
            try:
                cloudpickle.register_pickle_by_value(module)
                registered.append(module)
            except ValueError:
                continue  # already registered by someone else, or not importable by name
        payload = {"fn": fn, "args": list(args), "kwargs": dict(kwargs), **options}
        buffer = io.BytesIO()
        _pickler_class()(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(payload)
        return buffer.getvalue()
    finally:
        for module in registered:
            cloudpickle.unregister_pickle_by_value(module)


def _sources(modules: list[ModuleType]) -> dict[str, str]:
    """The source of each shipped module, so tracebacks show the user's lines where the files are absent."""
    out = {}
    for module in modules:
        file = getattr(module, "__file__", None)
        if file and file.endswith(".py"):
            try:
                out[file] = Path(file).read_text()
            except OSError:
                continue
    return out


@functools.cache
def _pickler_class() -> type:
    import cloudpickle
    from cloudpickle.cloudpickle import _code_reduce

    def code_reduce_keeping_filename(code: CodeType) -> Any:
        # cloudpickle blanks co_filename to "<dynamic-code>"; keep the real one so a user's
        # traceback names their file and shows its lines.
        constructor, args = _code_reduce(code)
        return constructor, tuple(code.co_filename if a == "<dynamic-code>" else a for a in args)

    class Pickler(cloudpickle.Pickler):
        dispatch_table = ChainMap({CodeType: code_reduce_keeping_filename}, cloudpickle.Pickler.dispatch_table)

    return Pickler


class _PlainUnpickler(pickle.Unpickler):
    """Loads only pickles of builtin containers and scalars: it refuses every global."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} in the worker")


def loads_plain(blob: bytes) -> Any:
    return _PlainUnpickler(io.BytesIO(blob)).load()
